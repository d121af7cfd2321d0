//! The dpop-agent wire protocol, shared by the agent and its clients.
//!
//! JSON Lines over a Unix socket (a named pipe on Windows, see `pipe`): one UTF-8 JSON object
//! per line, at most [`MAX_LINE`] bytes including the newline. Each [`Request`] has an `id` (echoed) and an `op`; a reply is
//! `{"id":..,"ok":true,...}` or `{"id":..,"ok":false,"error":{"code":"..","message":".."}}`.
//! Clients may pipeline; replies come back in request order and carry the id.
//! `docs/protocol.md` is the reference for other languages.
//!
//! ```
//! use dpop_protocol::{Op, Request, parse_request};
//!
//! let line = br#"{"id":7,"op":"sign_proof","key":"k","htm":"GET","htu":"https://api.example.com/x"}"#;
//! let request = parse_request(line).unwrap();
//! assert!(matches!(request.op, Op::SignProof(_)));
//!
//! let err = parse_request(br#"{"id":8,"op":"fly"}"#).unwrap_err();
//! assert_eq!(err.error.code, dpop_protocol::ErrorCode::UnknownOp);
//! ```

mod codes;
mod lifetime;
mod messages;
#[cfg(windows)]
pub mod pipe;
#[cfg(unix)]
pub mod socket_dir;
mod text;

pub use codes::{ErrorCode, WireError};
pub use lifetime::parse_lifetime;
pub use messages::*;
pub use text::printable;

/// The agent's default socket, `$XDG_RUNTIME_DIR/dpop-agent/agent.sock`, where the agent binds
/// without `-a` and where clients look without `DPOP_AUTH_SOCK`; `None` without a runtime
/// directory (each agent then has a private socket of its own).
#[cfg(unix)]
pub fn default_socket_path() -> Option<std::path::PathBuf> {
    std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(|runtime| std::path::PathBuf::from(runtime).join("dpop-agent/agent.sock"))
}

/// Protocol version spoken by this crate, reported by `hello`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest line either side may send, newline included.
pub const MAX_LINE: usize = 64 * 1024;
