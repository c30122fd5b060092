//! The process's allocator: glibc's, except for the large, page-aligned
//! blocks glommio reserves as each executor's I/O memory (the arena its
//! `DmaBuffer`s come from, registered with io_uring), which it backs with
//! 2 MiB transparent huge pages.
//!
//! Why: the virtio disk of these machines takes at most 254 segments per
//! request and merges only physically contiguous memory. A 1 MiB O_DIRECT
//! write from 4 KiB pages fills the ring, so the device takes one such write
//! at a time and the shards' log writes and zero fills queue behind one
//! another. From huge pages the same write is one segment: a C program's
//! 1.5 MB O_DSYNC writes went from 2.5-2.7 to 3.3-3.5 GB/s alone and from
//! 2.0-2.9 to 3.8-4.2 GB/s two at a time (docs/PERFORMANCE.md, "The log's
//! writes from huge pages").
//!
//! glommio allocates that arena with `alloc::alloc` (4 KiB alignment), so the
//! global allocator is the one place that can choose its pages.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;

/// The size of a transparent huge page on x86-64 and arm64 (4 KiB pages).
const HUGE_PAGE_BYTES: usize = 2 * 1024 * 1024;

/// Each shard's I/O memory (`LocalExecutorBuilder::io_memory`, glommio's
/// default is 10 MiB): room for the log's largest group-commit round (a
/// buffer of `GROUP_COMMIT_BUFFER_BYTES_DEFAULT`), a zero-fill chunk and
/// reads at once, so that they come from the registered, huge-page arena
/// rather than from glommio's fallback allocations.
pub const IO_MEMORY_BYTES: usize = 32 * 1024 * 1024;
const _: () = assert!(IO_MEMORY_BYTES >= 2 * crate::constants::GROUP_COMMIT_BUFFER_BYTES_DEFAULT);

/// Page-aligned blocks of at least `IO_MEMORY_BYTES` are I/O memory: the
/// arenas of the executors built with `IO_MEMORY_BYTES` (the shards', the
/// raw disk probe's), and fallback buffers that large. Nothing else in the
/// process asks for page-aligned blocks this large; smaller ones (glommio's
/// fallbacks, executors with the default arena) stay with glibc, which
/// reuses them without a page fault each time.
const IO_MEMORY_MIN_ALIGN: usize = 4096;

/// glibc's allocator, with huge-page-backed I/O memory.
pub struct IoMemoryAllocator;

/// Whether a block is mapped here rather than by glibc. A mapping is aligned
/// to a huge page, which satisfies any alignment up to that.
fn is_io_memory(layout: Layout) -> bool {
    layout.size() >= IO_MEMORY_BYTES && layout.align() >= IO_MEMORY_MIN_ALIGN && layout.align() <= HUGE_PAGE_BYTES
}

/// Maps `size` bytes aligned to a huge page and asks for huge pages there.
/// Null if the kernel refuses the mapping.
fn map_huge(size: usize) -> *mut u8 {
    let padded = size + HUGE_PAGE_BYTES;
    // SAFETY: an anonymous private mapping of `padded` bytes at an address the
    // kernel chooses touches no existing memory.
    let base = unsafe {
        libc::mmap(
            ptr::null_mut(),
            padded,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return ptr::null_mut();
    }
    let base = base as usize;
    let start = (base + HUGE_PAGE_BYTES - 1) & !(HUGE_PAGE_BYTES - 1);
    let end = start + size.next_multiple_of(4096);
    // SAFETY: [base, start) and [end, base + padded) lie inside the mapping
    // made above and hold nothing yet; unmapping them keeps [start, end),
    // which is page-aligned since `start` and `size`'s round-up are.
    unsafe {
        if start > base {
            libc::munmap(base as *mut libc::c_void, start - base);
        }
        if base + padded > end {
            libc::munmap(end as *mut libc::c_void, base + padded - end);
        }
        // Advice only: without it (THP off) the memory is ordinary pages.
        libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
    }
    start as *mut u8
}

// SAFETY: every block comes either from `System` (and goes back to it) or
// from `map_huge` (and goes back to munmap): `is_io_memory` depends only on
// the layout, which `dealloc` receives unchanged. Mapped memory is zeroed
// and aligned to 2 MiB, which satisfies the alignments `is_io_memory` takes.
unsafe impl GlobalAlloc for IoMemoryAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_io_memory(layout) {
            map_huge(layout.size())
        } else {
            // SAFETY: the caller's contract for `layout` is passed on.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_io_memory(layout) {
            map_huge(layout.size())
        } else {
            // SAFETY: as in `alloc`.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        if is_io_memory(layout) {
            // SAFETY: `block` came from `map_huge(layout.size())`, which left
            // exactly [block, block + size rounded to pages) mapped.
            unsafe { libc::munmap(block.cast(), layout.size().next_multiple_of(4096)) };
        } else {
            // SAFETY: `block` came from `System` with this layout.
            unsafe { System.dealloc(block, layout) }
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` with `layout.align()` is a
        // valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !is_io_memory(layout) && !is_io_memory(new_layout) {
            // SAFETY: `block` came from `System` with `layout`, and the new
            // layout stays with `System`.
            return unsafe { System.realloc(block, layout, new_size) };
        }
        // SAFETY: the caller's contract; a new block, a copy of the part both
        // hold, and the old block freed, each through this allocator.
        unsafe {
            let moved = self.alloc(new_layout);
            if !moved.is_null() {
                ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                self.dealloc(block, layout);
            }
            moved
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_memory_is_aligned_to_a_huge_page_zeroed_and_writable() {
        let layout = Layout::from_size_align(IO_MEMORY_BYTES, 4096).expect("a layout");
        let allocator = IoMemoryAllocator;
        // SAFETY: a non-zero layout; the block is freed with the same layout.
        unsafe {
            let block = allocator.alloc(layout);
            assert!(!block.is_null());
            assert_eq!(block as usize % HUGE_PAGE_BYTES, 0);
            let bytes = std::slice::from_raw_parts_mut(block, IO_MEMORY_BYTES);
            assert!(bytes.iter().all(|&byte| byte == 0));
            bytes.fill(7);
            allocator.dealloc(block, layout);
        }
    }

    #[test]
    fn small_and_unaligned_blocks_stay_with_glibc() {
        assert!(!is_io_memory(Layout::from_size_align(IO_MEMORY_BYTES, 8).expect("a layout")));
        assert!(!is_io_memory(Layout::from_size_align(10 * 1024 * 1024, 4096).expect("a layout")));
        assert!(is_io_memory(Layout::from_size_align(IO_MEMORY_BYTES, 4096).expect("a layout")));
        assert!(!is_io_memory(Layout::from_size_align(IO_MEMORY_BYTES, 2 * HUGE_PAGE_BYTES).expect("a layout")));
    }

    #[test]
    fn a_block_grown_past_the_threshold_keeps_its_bytes() {
        let allocator = IoMemoryAllocator;
        let small = Layout::from_size_align(4096, 4096).expect("a layout");
        // SAFETY: each block is used within its size and freed with its layout.
        unsafe {
            let block = allocator.alloc(small);
            assert!(!block.is_null());
            std::slice::from_raw_parts_mut(block, 4096).fill(9);
            let grown = allocator.realloc(block, small, IO_MEMORY_BYTES);
            assert!(!grown.is_null());
            assert!(std::slice::from_raw_parts(grown, 4096).iter().all(|&byte| byte == 9));
            let shrunk =
                allocator.realloc(grown, Layout::from_size_align(IO_MEMORY_BYTES, 4096).expect("a layout"), 4096);
            assert!(!shrunk.is_null());
            assert!(std::slice::from_raw_parts(shrunk, 4096).iter().all(|&byte| byte == 9));
            allocator.dealloc(shrunk, small);
        }
    }
}
