//! The software backend: aws-lc-rs keys in the agent's memory.
//!
//! With a passphrase each key lives in `<dir>/<label>.json`: its label, algorithm and its
//! PKCS#8 sealed with AES-256-GCM under the store key (`store_key`: one scrypt derivation per
//! start, not one per key). Files are written 0600 to a temporary name and linked or renamed
//! into place, so a failure never leaves half a key. Key files of the first format (version
//! 1: a PBES2 `ENCRYPTED PRIVATE KEY`, scrypt per file) still load, and are rewritten in the
//! new format on the first start that loads them. Without a passphrase keys are kept in
//! memory only.
//!
//! One file per concern:
//! - `backend`: [`SoftwareBackend`], persistent or memory-only;
//! - `store`: the key files, the store key that opens them, the first format's migration;
//! - `key`: one aws-lc-rs key pair (make, read, PKCS#8, JWK, sign);
//! - `signer`: [`SoftwareSigner`], and the sealed stand-in of a locked agent.

mod backend;
mod key;
mod signer;
mod store;

pub use backend::SoftwareBackend;
pub use signer::SoftwareSigner;
