//! The largest single allocation a piece of code makes, per thread: what
//! "no allocation past the limits" is checked against. Only a binary can
//! install a global allocator, so the fuzz targets and the replay test each
//! declare `#[global_allocator] static A: LargestAllocation = LargestAllocation;`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, noting the largest size asked for on each thread.
pub struct LargestAllocation;

thread_local! {
    // Const-initialised and without a destructor: reading it never
    // allocates, so the allocator may use it.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // A thread being torn down has no slot left: not measured.
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
}

// SAFETY: every call goes to `System` with the caller's own arguments; the
// only addition is a thread-local counter that never allocates.
unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller upholds `alloc`'s contract, passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: `ptr` came from `System` through this allocator; the
        // caller upholds `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `run` and returns the largest allocation it made on this thread
/// (0 when `LargestAllocation` is not the global allocator).
pub fn largest_allocation_during<R>(run: impl FnOnce() -> R) -> (R, usize) {
    let outer = LARGEST.with(|largest| largest.replace(0));
    let result = run();
    let measured = LARGEST.with(|largest| largest.replace(outer.max(largest.get())));
    (result, measured)
}

/// Whether allocations are measured: `LargestAllocation` is installed.
pub fn measuring() -> bool {
    let (_, largest) = largest_allocation_during(|| std::hint::black_box(Vec::<u8>::with_capacity(4096)));
    largest >= 4096
}
