//! Windows: where the agent listens and who is at either end of its named pipe.
//!
//! The agent listens on a named pipe of its user, `\\.\pipe\dpop-agent-<user SID>`
//! ([`default_pipe_name`]). The pipe namespace is shared by every user of the machine, so
//! both ends check each other here, as the Unix socket's peer credentials do:
//!
//! - the agent creates the pipe with a security descriptor that lets its user alone in
//!   ([`OwnerOnly`]), refuses to start when the name is taken already (another process, maybe
//!   another user's, created it first), and learns the connected client's process
//!   ([`client_pid`]) to check its user and name its executable ([`process_image`]);
//! - a client asks who created the pipe ([`server_pid`], [`ProcessUser`]) and sends nothing
//!   to a process of another user.

use std::ffi::OsString;
use std::io;
use std::os::windows::ffi::{OsStrExt, OsStringExt};
use std::os::windows::io::{AsHandle, AsRawHandle};
use std::path::PathBuf;
use std::sync::OnceLock;

use windows_sys::Win32::Foundation::{CloseHandle, HANDLE, LocalFree};
use windows_sys::Win32::Security::Authorization::{
    ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
};
use windows_sys::Win32::Security::{
    GetLengthSid, GetTokenInformation, IsWellKnownSid, SECURITY_ATTRIBUTES, TOKEN_QUERY,
    TOKEN_USER, TokenUser, WinLocalSystemSid,
};
use windows_sys::Win32::System::Pipes::{GetNamedPipeClientProcessId, GetNamedPipeServerProcessId};
use windows_sys::Win32::System::Threading::{
    GetCurrentProcess, OpenProcess, OpenProcessToken, PROCESS_NAME_WIN32,
    PROCESS_QUERY_LIMITED_INFORMATION, QueryFullProcessImageNameW,
};

/// The pipe this user's agent listens on when none is configured:
/// `\\.\pipe\dpop-agent-<SID>`, one per user, so clients find it without `DPOP_AUTH_SOCK`.
pub fn default_pipe_name() -> io::Result<String> {
    Ok(format!(
        r"\\.\pipe\dpop-agent-{}",
        ProcessUser::current()?.sid_string()?
    ))
}

/// A handle closed on drop.
struct Owned(HANDLE);

impl Drop for Owned {
    fn drop(&mut self) {
        // SAFETY: the handle was opened by us and is closed once.
        unsafe { CloseHandle(self.0) };
    }
}

/// The user a process runs as: the SID of its token's user, in binary form (which is
/// canonical, so two SIDs are equal exactly when their bytes are).
#[derive(Clone, PartialEq, Eq)]
pub struct ProcessUser(Vec<u8>);

impl ProcessUser {
    /// The user this process runs as, looked up once (it cannot change while the process
    /// runs), so checking each connection costs no token query of our own.
    pub fn current() -> io::Result<&'static ProcessUser> {
        static CURRENT: OnceLock<ProcessUser> = OnceLock::new();
        if let Some(user) = CURRENT.get() {
            return Ok(user);
        }
        // SAFETY: the pseudo-handle of the current process needs no closing.
        let user = ProcessUser::of_process_handle(unsafe { GetCurrentProcess() })?;
        Ok(CURRENT.get_or_init(|| user))
    }

    /// The user process `pid` runs as.
    pub fn of_process(pid: u32) -> io::Result<ProcessUser> {
        let process = open_process(pid)?;
        ProcessUser::of_process_handle(process.0)
    }

    fn of_process_handle(process: HANDLE) -> io::Result<ProcessUser> {
        let mut token: HANDLE = std::ptr::null_mut();
        // SAFETY: `process` is a valid process handle; the token handle is written on success.
        if unsafe { OpenProcessToken(process, TOKEN_QUERY, &mut token) } == 0 {
            return Err(io::Error::last_os_error());
        }
        let token = Owned(token);
        let mut needed = 0u32;
        // SAFETY: a size query: no buffer, the needed length is written to `needed`.
        unsafe { GetTokenInformation(token.0, TokenUser, std::ptr::null_mut(), 0, &mut needed) };
        if needed == 0 {
            return Err(io::Error::last_os_error());
        }
        // u64 elements keep the TOKEN_USER at the start aligned.
        let mut buf = vec![0u64; (needed as usize).div_ceil(8)];
        // SAFETY: the buffer holds at least `needed` bytes.
        if unsafe {
            GetTokenInformation(
                token.0,
                TokenUser,
                buf.as_mut_ptr().cast(),
                needed,
                &mut needed,
            )
        } == 0
        {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: GetTokenInformation filled the buffer with a TOKEN_USER whose SID pointer
        // points into the same buffer, which is still alive.
        let sid = unsafe { (*buf.as_ptr().cast::<TOKEN_USER>()).User.Sid };
        // SAFETY: `sid` is a valid SID (above).
        let len = unsafe { GetLengthSid(sid) } as usize;
        // SAFETY: a valid SID is GetLengthSid bytes long.
        let bytes = unsafe { std::slice::from_raw_parts(sid.cast::<u8>(), len) };
        Ok(ProcessUser(bytes.to_vec()))
    }

    /// Whether this is LocalSystem, the account services run as (it can read any process's
    /// memory anyway, as root can on Unix).
    pub fn is_local_system(&self) -> bool {
        // SAFETY: self.0 holds a whole SID.
        unsafe { IsWellKnownSid(self.0.as_ptr().cast_mut().cast(), WinLocalSystemSid) != 0 }
    }

    /// The SID in its string form (`S-1-5-21-...`).
    pub fn sid_string(&self) -> io::Result<String> {
        let mut wide: *mut u16 = std::ptr::null_mut();
        // SAFETY: self.0 holds a whole SID; the string is allocated by the call and freed
        // below with LocalFree.
        if unsafe { ConvertSidToStringSidW(self.0.as_ptr().cast_mut().cast(), &mut wide) } == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `wide` is a NUL-terminated UTF-16 string from the call above.
        let text = unsafe {
            let len = (0..).take_while(|&i| *wide.add(i) != 0).count();
            let text = OsString::from_wide(std::slice::from_raw_parts(wide, len));
            LocalFree(wide.cast());
            text
        };
        Ok(text.to_string_lossy().into_owned())
    }
}

impl std::fmt::Debug for ProcessUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.sid_string() {
            Ok(sid) => write!(f, "ProcessUser({sid})"),
            Err(_) => write!(f, "ProcessUser({} bytes)", self.0.len()),
        }
    }
}

fn open_process(pid: u32) -> io::Result<Owned> {
    // SAFETY: OpenProcess has no memory-safety preconditions; a null handle is an error.
    let process = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
    if process.is_null() {
        return Err(io::Error::last_os_error());
    }
    Ok(Owned(process))
}

/// The process that created the server end of a connected pipe (a client's check).
pub fn server_pid(pipe: &impl AsHandle) -> io::Result<u32> {
    let mut pid = 0u32;
    // SAFETY: the handle is open for the borrow; the call writes one u32.
    if unsafe { GetNamedPipeServerProcessId(pipe.as_handle().as_raw_handle(), &mut pid) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pid)
}

/// The process at the client end of a connected pipe (the agent's check).
pub fn client_pid(pipe: &impl AsHandle) -> io::Result<u32> {
    let mut pid = 0u32;
    // SAFETY: the handle is open for the borrow; the call writes one u32.
    if unsafe { GetNamedPipeClientProcessId(pipe.as_handle().as_raw_handle(), &mut pid) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pid)
}

/// The executable process `pid` runs (its full Win32 path).
pub fn process_image(pid: u32) -> io::Result<PathBuf> {
    let process = open_process(pid)?;
    let mut buf = vec![0u16; 32 * 1024];
    let mut len = buf.len() as u32;
    // SAFETY: the buffer holds `len` UTF-16 units; the call writes at most that many.
    if unsafe {
        QueryFullProcessImageNameW(process.0, PROCESS_NAME_WIN32, buf.as_mut_ptr(), &mut len)
    } == 0
    {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(len as usize);
    Ok(PathBuf::from(OsString::from_wide(&buf)))
}

/// Security attributes that let the current user alone open the pipe: a protected DACL with
/// one entry, full access for the user's SID (no Administrators, no Everyone, nothing
/// inherited).
pub struct OwnerOnly {
    attributes: Box<SECURITY_ATTRIBUTES>,
}

// SAFETY: the descriptor is owned by this value, immutable after creation, and freed once.
unsafe impl Send for OwnerOnly {}
// SAFETY: as above; shared access only reads it.
unsafe impl Sync for OwnerOnly {}

impl OwnerOnly {
    /// The attributes for the current user.
    pub fn for_current_user() -> io::Result<OwnerOnly> {
        let sid = ProcessUser::current()?.sid_string()?;
        let sddl: Vec<u16> = std::ffi::OsStr::new(&format!("D:P(A;;GA;;;{sid})"))
            .encode_wide()
            .chain(Some(0))
            .collect();
        let mut descriptor = std::ptr::null_mut();
        // SAFETY: `sddl` is NUL-terminated; the descriptor is allocated by the call and
        // freed in Drop with LocalFree.
        if unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                sddl.as_ptr(),
                SDDL_REVISION_1,
                &mut descriptor,
                std::ptr::null_mut(),
            )
        } == 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnerOnly {
            attributes: Box::new(SECURITY_ATTRIBUTES {
                nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
                lpSecurityDescriptor: descriptor,
                bInheritHandle: 0,
            }),
        })
    }

    /// A `SECURITY_ATTRIBUTES` pointer for `CreateNamedPipeW` (tokio's
    /// `ServerOptions::create_with_security_attributes_raw`), valid while `self` lives.
    pub fn as_raw(&self) -> *mut std::ffi::c_void {
        (&raw const *self.attributes).cast_mut().cast()
    }
}

impl Drop for OwnerOnly {
    fn drop(&mut self) {
        // SAFETY: the descriptor came from ConvertStringSecurityDescriptorToSecurityDescriptorW
        // and is freed once.
        unsafe { LocalFree(self.attributes.lpSecurityDescriptor) };
    }
}
