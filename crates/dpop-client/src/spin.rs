//! Polling for a reply before sleeping in `read`, for callers that opt in.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// Waits for the reply by polling the socket for up to `spin` before the caller blocks.
///
/// An agent answers a software-key proof in about 15 us, but waking a thread that sleeps in
/// `read` costs 20 to 40 us on virtual machines, more than the work itself. A short bounded
/// poll (`MSG_PEEK | MSG_DONTWAIT`, nothing is consumed) avoids that sleep. It burns CPU for a
/// slow token (a YubiKey takes milliseconds), so both clients leave it off unless asked.
pub(crate) fn spin_until_readable(fd: RawFd, spin: Duration) {
    if spin.is_zero() {
        return;
    }
    let deadline = Instant::now() + spin;
    let mut byte = 0u8;
    loop {
        // SAFETY: peeking one byte into a valid local buffer on a socket we own.
        let n = unsafe {
            libc::recv(
                fd,
                (&raw mut byte).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock {
            return; // data, end of stream or an error: the real read reports it
        }
        if Instant::now() >= deadline {
            return;
        }
        std::hint::spin_loop();
    }
}
