//! Secret bytes on pages of their own, kept out of swap (`mlock`; `VirtualLock` on Windows)
//! and out of core dumps (`MADV_DONTDUMP`, Linux) where the platform allows, and wiped before
//! they are unmapped.
//!
//! For buffers that hold a secret for longer than a request's parsing: the PEM text of an
//! `import_key` while the backend imports it (scrypt for a software key file, a token round
//! trip for PKCS#11). Heap buffers cannot be locked one by one (a page is shared with other
//! allocations, and `munlock` would unlock it for all of them), hence a mapping per buffer.
//! Locking is best effort: without room under `RLIMIT_MEMLOCK` (the working-set minimum on
//! Windows) the bytes are still wiped and kept out of dumps.

use std::io;
use std::ptr::NonNull;

use tracing::debug;

/// A copy of secret bytes in a private anonymous mapping; wiped and unmapped on drop.
pub struct LockedBytes {
    ptr: NonNull<u8>,
    len: usize,
    map_len: usize,
    locked: bool,
}

// SAFETY: LockedBytes owns its mapping exclusively, like a Box<[u8]>.
unsafe impl Send for LockedBytes {}
// SAFETY: shared access is read-only.
unsafe impl Sync for LockedBytes {}

impl LockedBytes {
    /// Copies `data` into a new locked, undumpable mapping.
    pub fn copy_from(data: &[u8]) -> io::Result<LockedBytes> {
        let page = sys::page_size();
        let map_len = data.len().max(1).div_ceil(page) * page;
        let ptr = sys::map(map_len)?;
        let locked = sys::lock(ptr, map_len);
        if !locked {
            debug!(
                "locking {map_len} bytes in memory failed ({}); the secret may be swapped",
                io::Error::last_os_error()
            );
        }
        // SAFETY: the mapping is map_len >= data.len() bytes, writable, and not data's memory.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), ptr.as_ptr(), data.len()) };
        Ok(LockedBytes {
            ptr,
            len: data.len(),
            map_len,
            locked,
        })
    }

    /// Whether the pages are locked in memory (false when `RLIMIT_MEMLOCK` had no room).
    pub fn is_locked(&self) -> bool {
        self.locked
    }
}

impl std::ops::Deref for LockedBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: the first len bytes of the mapping were initialised by copy_from.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::fmt::Debug for LockedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LockedBytes({} bytes, redacted)", self.len)
    }
}

impl Drop for LockedBytes {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours and map_len bytes long; after the wipe nobody uses it.
        unsafe {
            zeroize::Zeroize::zeroize(std::slice::from_raw_parts_mut(
                self.ptr.as_ptr(),
                self.map_len,
            ));
            sys::unmap(self.ptr, self.map_len, self.locked);
        }
    }
}

#[cfg(unix)]
mod sys {
    use std::io;
    use std::ptr::NonNull;

    use tracing::debug;

    pub fn page_size() -> usize {
        // SAFETY: sysconf has no preconditions.
        usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .ok()
            .filter(|p| *p > 0)
            .unwrap_or(4096)
    }

    /// A new private anonymous mapping of `len` bytes, kept out of core dumps (Linux).
    pub fn map(len: usize) -> io::Result<NonNull<u8>> {
        // SAFETY: a new private anonymous mapping; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        #[cfg(target_os = "linux")]
        // SAFETY: the range is the mapping just made.
        if unsafe { libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_DONTDUMP) } != 0 {
            debug!("MADV_DONTDUMP failed: {}", io::Error::last_os_error());
        }
        Ok(ptr)
    }

    pub fn lock(ptr: NonNull<u8>, len: usize) -> bool {
        // SAFETY: the range is a mapping made by `map`.
        unsafe { libc::mlock(ptr.as_ptr().cast(), len) == 0 }
    }

    /// # Safety
    /// `ptr` and `len` are a mapping made by `map`, not used afterwards.
    pub unsafe fn unmap(ptr: NonNull<u8>, len: usize, locked: bool) {
        // SAFETY: per the caller.
        unsafe {
            if locked {
                libc::munlock(ptr.as_ptr().cast(), len);
            }
            libc::munmap(ptr.as_ptr().cast(), len);
        }
    }
}

#[cfg(windows)]
mod sys {
    use std::io;
    use std::ptr::NonNull;

    use windows_sys::Win32::System::Memory::{
        MEM_COMMIT, MEM_RELEASE, MEM_RESERVE, PAGE_READWRITE, VirtualAlloc, VirtualFree,
        VirtualLock, VirtualUnlock,
    };
    use windows_sys::Win32::System::SystemInformation::{GetSystemInfo, SYSTEM_INFO};

    pub fn page_size() -> usize {
        // SAFETY: GetSystemInfo fills the struct we pass.
        let info = unsafe {
            let mut info: SYSTEM_INFO = std::mem::zeroed();
            GetSystemInfo(&mut info);
            info
        };
        usize::try_from(info.dwPageSize)
            .ok()
            .filter(|p| *p > 0)
            .unwrap_or(4096)
    }

    /// New committed private pages (Windows writes no process memory into crash dumps
    /// unless a debugger or WER asks for a full dump).
    pub fn map(len: usize) -> io::Result<NonNull<u8>> {
        // SAFETY: a new allocation; no existing memory is touched.
        let ptr = unsafe {
            VirtualAlloc(
                std::ptr::null(),
                len,
                MEM_COMMIT | MEM_RESERVE,
                PAGE_READWRITE,
            )
        };
        NonNull::new(ptr.cast::<u8>()).ok_or_else(io::Error::last_os_error)
    }

    pub fn lock(ptr: NonNull<u8>, len: usize) -> bool {
        // SAFETY: the range is an allocation made by `map`.
        unsafe { VirtualLock(ptr.as_ptr().cast(), len) != 0 }
    }

    /// # Safety
    /// `ptr` and `len` are an allocation made by `map`, not used afterwards.
    pub unsafe fn unmap(ptr: NonNull<u8>, len: usize, locked: bool) {
        // SAFETY: per the caller; MEM_RELEASE takes size 0 and the allocation's base.
        unsafe {
            if locked {
                VirtualUnlock(ptr.as_ptr().cast(), len);
            }
            VirtualFree(ptr.as_ptr().cast(), 0, MEM_RELEASE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `VmFlags` line of the mapping that starts at `addr`, from /proc/self/smaps.
    #[cfg(target_os = "linux")]
    fn vm_flags(addr: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("reading smaps");
        let start = format!("{addr:x}-");
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&start));
        assert!(lines.next().is_some(), "no mapping at {start}");
        lines
            .find_map(|l| l.strip_prefix("VmFlags:"))
            .expect("a VmFlags line")
            .to_owned()
    }

    #[test]
    fn holds_the_bytes_on_locked_undumpable_pages() {
        let secret = b"-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMG\n".repeat(200);
        let locked = LockedBytes::copy_from(&secret).expect("mapping");
        assert_eq!(&*locked, &secret[..]);
        assert!(!format!("{locked:?}").contains("BEGIN"));
        #[cfg(target_os = "linux")]
        {
            let flags = vm_flags(locked.ptr.as_ptr() as usize);
            assert!(flags.split_whitespace().any(|f| f == "dd"), "{flags}");
            if locked.is_locked() {
                assert!(flags.split_whitespace().any(|f| f == "lo"), "{flags}");
            }
        }
        let empty = LockedBytes::copy_from(b"").expect("mapping");
        assert!(empty.is_empty());
    }
}
