//! The parts of the `dpop-agent` daemon, one concern per module (the binary, `main.rs`, only
//! wires them). A library so that the fuzz targets can drive request parsing and dispatch
//! without a socket; it is not a stable API for other programs (they talk to the agent over
//! its socket, with `dpop-client`).
//!
//! - [`config`]: the flags and the TOML file, merged into [`config::Settings`];
//!   [`options`]: how a setting is declared once (flag and key), `~/` in paths;
//! - [`backends`]: one file per key backend (its settings, secret, opening, `--check-config`
//!   line), opened into one keyring; [`secrets`]: where PINs and passphrases come from, and
//!   how the background start hands them to its child;
//! - [`transport`]: where clients connect: the Unix socket (bound safely, socket activation)
//!   or the Windows named pipe; [`signals`]: the shutdown signals;
//! - [`server`]: accept loop, limits, shutdown, one task per connection; [`peer`]: who the
//!   client is; [`connection`]: JSON Lines framing;
//! - [`dispatch`]: one function per op, over the shared [`state`]; [`policy`]: per-key
//!   policies, enforced before signing; [`lock`]: lock and unlock; [`nonces`]: servers'
//!   `DPoP-Nonce` values, per key and origin; [`wire_error`]: backend errors as wire codes;
//! - [`background`]: `eval "$(dpop-agent)"`, `--reuse`; [`shell`]: its sh and csh lines;
//!   [`stop`]: `-k` (these three on Unix: on Windows the agent runs in the foreground);
//! - [`wipe_alloc`]: the global allocator, which wipes every heap block it frees;
//!   [`locked`]: secret bytes on locked, undumpable pages.
//!
//! Imports run one way, with no circle: `server` uses `connection`, `dispatch`, `peer`,
//! `state` and `transport`; `dispatch` uses `state`, `policy` and `peer`; `config` uses
//! `backends` and `options`.

pub mod backends;
#[cfg(unix)]
pub mod background;
pub mod config;
pub mod connection;
pub mod dispatch;
pub mod lock;
pub mod locked;
pub mod nonces;
pub mod options;
pub mod peer;
pub mod policy;
pub mod secrets;
pub mod server;
pub mod shell;
pub mod signals;
pub mod state;
#[cfg(unix)]
pub mod stop;
pub mod transport;
pub mod wipe_alloc;
pub mod wire_error;
