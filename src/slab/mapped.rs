//! The memory of a region (a segment or a large record): an anonymous
//! mapping of its own, unmapped when the region goes.
//!
//! With the global allocator, the regions freed by eviction left holes in
//! the heap that the process kept: a 64 MiB server switching from 100-byte
//! to 300 KiB values reached 116 MiB of RSS, over the 112 MiB bound. A
//! mapping goes back to the kernel when it is dropped, so RSS follows what
//! the allocator counts. Eviction maps and unmaps about once per segment
//! of writes, never per small request.

use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Granule of a mapping: its length is rounded up to this.
pub const MAP_GRANULE: usize = 4096;

/// Bytes a mapping of `len` bytes takes.
#[inline]
pub const fn mapped_len(len: usize) -> usize {
    len.div_ceil(MAP_GRANULE) * MAP_GRANULE
}

/// Zero-filled memory of one region, owned like a `Box<[u8]>`.
pub struct Mapped {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a Mapped owns its mapping exclusively, as a Box<[u8]> owns its
// allocation; nothing else refers to the memory.
unsafe impl Send for Mapped {}
// SAFETY: shared references only read the bytes (no interior mutability).
unsafe impl Sync for Mapped {}

impl Mapped {
    /// A new zero-filled mapping of `len` (> 0) bytes.
    pub fn zeroed(len: usize) -> Mapped {
        assert!(len > 0);
        // SAFETY: an anonymous private mapping without an address hint
        // overlaps no existing memory; failure is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped_len(len),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        match NonNull::new(ptr.cast::<u8>()) {
            Some(ptr) if ptr.as_ptr().cast() != libc::MAP_FAILED => Mapped { ptr, len },
            _ => std::alloc::handle_alloc_error(
                std::alloc::Layout::from_size_align(mapped_len(len), MAP_GRANULE).expect("layout"),
            ),
        }
    }
}

impl Deref for Mapped {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` is a live, readable mapping of at least `len`
        // bytes, zero-filled by the kernel and owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for Mapped {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes this the only
        // reference to the bytes.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this value owns; no borrow of
        // it outlives `self`.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), mapped_len(self.len));
        }
    }
}

/// Requests at least this large get their own mapping from the C
/// allocator, fixed rather than raised as blocks are freed.
const MMAP_THRESHOLD: usize = 128 << 10;

/// Makes the C allocator map blocks of [`MMAP_THRESHOLD`] and more and
/// unmap them when freed. By default glibc raises its threshold to the
/// largest block freed, so after a few 300 KiB requests their buffers come
/// from the heap, which keeps them: a 64 MiB server written 300 KiB values
/// reached 116 MiB of RSS with its items at 64 MiB; 96 MiB with this
/// (`perf/memory-shift`). Called once per process, by [`super::Slab::new`].
pub fn return_large_blocks_to_the_kernel() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only sets a tunable of glibc's allocator and is
        // safe to call from any thread.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapping_is_zeroed_writable_and_rounded_to_pages() {
        let mut m = Mapped::zeroed(10_000);
        assert_eq!(m.len(), 10_000);
        assert!(m.iter().all(|&b| b == 0));
        m[9_999] = 7;
        assert_eq!(m[9_999], 7);
        assert_eq!(mapped_len(10_000), 12_288);
    }
}
