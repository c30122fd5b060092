//! A zeroed, block-aligned byte buffer: what O_DIRECT needs to write from.

use crate::constants::BLOCK_SIZE_BYTES;
use std::ptr::NonNull;

/// Anonymous memory of a fixed capacity, page-aligned (so block-aligned) and
/// zeroed. It is mapped directly rather than taken from the allocator so that
/// a fresh buffer is always zero pages (no memset of megabytes per flush) and
/// bytes never touched cost no resident memory.
pub struct AlignedBuf {
    pointer: NonNull<u8>,
    capacity_bytes: usize,
}

impl AlignedBuf {
    pub fn zeroed(capacity_bytes: usize) -> Self {
        assert!(capacity_bytes > 0 && capacity_bytes % BLOCK_SIZE_BYTES == 0);
        // SAFETY: an anonymous private mapping of a non-zero length with no
        // address hint has no preconditions; the result is checked below.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                capacity_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            panic!("mmap of a {capacity_bytes}-byte buffer failed: {}", std::io::Error::last_os_error());
        }
        let Some(pointer) = NonNull::new(raw.cast::<u8>()) else {
            panic!("mmap returned a null buffer");
        };
        Self { pointer, capacity_bytes }
    }

    pub fn capacity(&self) -> usize {
        self.capacity_bytes
    }

    /// Zeroes the first `length` bytes so the buffer can be used again.
    pub fn clear(&mut self, length: usize) {
        self.as_mut_slice()[..length].fill(0);
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `pointer` maps `capacity_bytes` initialised (zeroed) bytes for
        // the life of `self`, and `&self` forbids concurrent mutation.
        unsafe { std::slice::from_raw_parts(self.pointer.as_ptr(), self.capacity_bytes) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.pointer.as_ptr(), self.capacity_bytes) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: `pointer` and `capacity_bytes` are exactly what mmap returned
        // and was asked for; the mapping is unmapped once, here, and no slice
        // borrowed from it can outlive `self`.
        unsafe {
            libc::munmap(self.pointer.as_ptr().cast(), self.capacity_bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_is_aligned_and_zeroed() {
        let mut buffer = AlignedBuf::zeroed(3 * BLOCK_SIZE_BYTES);
        assert_eq!(buffer.as_slice().as_ptr() as usize % BLOCK_SIZE_BYTES, 0);
        assert!(buffer.as_slice().iter().all(|byte| *byte == 0));
        buffer.as_mut_slice()[5] = 1;
        assert_eq!(buffer.as_slice()[5], 1);
    }
}
