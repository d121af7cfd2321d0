//! The end-to-end tests of dpop-agent, one test binary of modules (one link instead of one per
//! file): `cargo test -p dpop-tests --test e2e` runs them all, `cargo test -p dpop-tests --test
//! e2e pkcs11_keys::` one module. The TPM modules need this package's feature `tpm`
//! (`--features tpm`, or `--all-features`).
//!
//! Every module runs in this one process, so no test changes what the others share: no
//! `std::env::set_var` or current directory (child processes get their environment per
//! command), no signal handlers. The one process-wide change is `overload`'s open-file limit,
//! raised from the soft to the hard limit and never lowered. The helpers live in the
//! `dpop-tests` library (`dpop_tests::pkcs11`, `dpop_tests::tpm`).

mod agent_habits;
mod audit;
mod cli;
mod http;
mod http_hardening;
mod interop;
mod keys;
mod lock;
mod mcp_auth;
mod mcp_bridge;
mod mcp_conformance;
mod mcp_server;
mod nonces;
mod oidc_provider;
mod overload;
mod pkcs11_hardening;
mod pkcs11_keys;
mod pkcs11_pin;
mod pkcs11_recipes;
mod pkcs11_restart;
mod pkcs11_shim;
mod pkcs11_tpm2;
mod policy;
mod policy_guard;
mod process;
mod protocol;
mod protocol_examples;
mod saved_tokens;
mod secret_memory;
mod server_fleet;
mod server_http;
mod server_proxy;
mod server_redis_fleet;
#[cfg(feature = "tpm")]
mod tpm_faults;
#[cfg(feature = "tpm")]
mod tpm_keys;
mod trust;
mod windows;
