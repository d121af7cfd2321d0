//! The agent's global allocator: the system allocator, except that every heap block is wiped
//! before it goes back (freed, or left behind by a reallocation).
//!
//! Secrets pass through buffers the agent does not own: serde_json unescapes an `import_key`
//! PEM (whose `\n` escapes force the slow path) into a scratch `Vec` of its deserializer, and
//! serde's buffering for the flattened, internally tagged request type copies every string once
//! more. Those copies were freed unwiped and stayed in the heap for hundreds of requests (issue
//! 12, finding 8). Wiping on free covers them, and every copy a later change might add, at the
//! price of one `memset` per freed block: far below the cost of a signature.
//!
//! Live secrets are the owners' business (`Zeroizing` key bytes, the connection's wiped line
//! buffer); this only guarantees that nothing freed keeps its contents. Core dumps are off
//! because the agent is non-dumpable (`PR_SET_DUMPABLE` 0, set first thing in `main`).

use std::alloc::{GlobalAlloc, Layout, System};

/// [`System`], wiping each block before it is freed.
pub struct WipingAllocator;

#[global_allocator]
static GLOBAL: WipingAllocator = WipingAllocator;

/// Overwrites `len` bytes at `ptr` with zeros, in a way the compiler may not drop as a dead
/// store before `free`.
///
/// # Safety
/// `ptr` must be valid for writes of `len` bytes.
unsafe fn wipe(ptr: *mut u8, len: usize) {
    if len == 0 {
        return;
    }
    #[cfg(all(target_os = "linux", any(target_env = "gnu", target_env = "musl")))]
    // SAFETY: the caller guarantees that ptr is valid for len bytes.
    unsafe {
        libc::explicit_bzero(ptr.cast(), len)
    };
    #[cfg(not(all(target_os = "linux", any(target_env = "gnu", target_env = "musl"))))]
    // SAFETY: the caller guarantees that ptr is valid for len bytes.
    zeroize::Zeroize::zeroize(unsafe { std::slice::from_raw_parts_mut(ptr, len) });
}

// SAFETY: every block comes from System with the caller's layout and goes back to System with
// that layout; wiping writes only inside the block.
unsafe impl GlobalAlloc for WipingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: ptr is a live block of layout.size() bytes, about to be freed.
        unsafe {
            wipe(ptr, layout.size());
            System.dealloc(ptr, layout);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Always move: the system's realloc may move the block and free the old one unwiped,
        // or shrink it in place and leave the cut-off tail in the heap.
        // SAFETY: the caller guarantees that new_size, rounded up to layout.align(), does not
        // overflow isize, which makes this a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: new_size is non-zero (the caller's guarantee).
        let new = unsafe { System.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are live, distinct, and at least this long.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_through_realloc() {
        // Growth and shrinking keep the contents (the allocator is this test binary's too).
        let mut v: Vec<u8> = (0..=255).collect();
        v.reserve(1 << 16);
        assert_eq!(v[..256], (0..=255).collect::<Vec<u8>>()[..]);
        v.truncate(10);
        v.shrink_to_fit();
        assert_eq!(v, (0..10).collect::<Vec<u8>>());
    }

    #[test]
    fn wipe_zeroes_the_block() {
        let mut block = vec![0xa5u8; 100];
        // SAFETY: the block is 100 bytes long.
        unsafe { wipe(block.as_mut_ptr(), block.len()) };
        assert!(block.iter().all(|&b| b == 0));
    }
}
