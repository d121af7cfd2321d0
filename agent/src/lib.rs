//! The parts of the `dpop-agent` daemon, one concern per module (the binary, `main.rs`, only
//! wires them). A library so that the fuzz targets can drive request parsing and dispatch
//! without a socket; it is not a stable API for other programs (they talk to the agent over
//! its socket, with `dpop-client`).
//!
//! - [`config`]: flags and the TOML file, merged into [`config::Settings`];
//! - [`backends`]: opens the key backends into one keyring, adopts configured keys;
//! - [`socket`]: where the socket lives, how it is bound safely, socket activation (Unix);
//!   [`pipe`]: the named pipe for the agent's user alone (Windows);
//! - [`server`]: accept loop, peer check ([`peer`]: who the client is), limits, shutdown;
//!   [`connection`]: JSON Lines framing;
//! - [`dispatch`]: one function per op; [`policy`]: per-key policies, enforced before
//!   signing; [`lock`]: lock and unlock; [`nonces`]: servers' `DPoP-Nonce` values, per key and
//!   origin; [`wire_error`]: backend errors as wire codes;
//! - [`background`]: `eval "$(dpop-agent)"`, `--reuse`; [`shell`]: its sh and csh lines;
//!   [`stop`]: `-k` (these three on Unix: on Windows the agent runs in the foreground);
//!   [`pin`]: the PIN prompt and the secrets the background start hands to its child;
//! - [`wipe_alloc`]: the global allocator, which wipes every heap block it frees;
//!   [`locked`]: secret bytes on locked, undumpable pages.

pub mod backends;
#[cfg(unix)]
pub mod background;
pub mod config;
pub mod connection;
pub mod dispatch;
pub mod lock;
pub mod locked;
pub mod nonces;
pub mod peer;
pub mod pin;
#[cfg(windows)]
pub mod pipe;
pub mod policy;
pub mod server;
pub mod shell;
#[cfg(unix)]
pub mod socket;
#[cfg(unix)]
pub mod stop;
pub mod wipe_alloc;
pub mod wire_error;
