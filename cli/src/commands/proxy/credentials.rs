//! What the proxy adds to a request: proofs from a small pool of agent connections per key
//! (one connection answers one request at a time, so concurrent requests would queue behind
//! a single one), and each route's access token: a file read once, or a saved token kept in
//! memory and refreshed through [`TokenCache::fresh_token`] (under the token's lock, as `dpop
//! request --token` does) shortly before it expires.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};
use dpop_client::http::{CachedToken, DpopClient, TokenCache, reqwest};
use zeroize::Zeroizing;

use super::routes::TokenFrom;
use crate::commands::connect_async;
use crate::input::read_token_file;

/// Agent connections per key. Signing is the agent's work; several connections let it sign
/// for several requests at once (the agent serves each connection in its own task).
pub(crate) const AGENT_CONNECTIONS: usize = 4;

/// One key's clients, used in turn.
pub(crate) struct Signer {
    clients: Vec<DpopClient>,
    next: AtomicUsize,
}

impl Signer {
    /// `connections` clients of key `label`, over one shared reqwest client.
    pub(crate) async fn connect(
        socket: Option<&Path>,
        http: &reqwest::Client,
        label: &str,
        connections: usize,
    ) -> Result<Signer> {
        let mut clients = Vec::with_capacity(connections);
        for _ in 0..connections.max(1) {
            let agent = connect_async(socket).await?;
            clients.push(DpopClient::with_reqwest(http.clone(), agent, label));
        }
        Ok(Signer {
            clients,
            next: AtomicUsize::new(0),
        })
    }

    /// The next client.
    pub(crate) fn client(&self) -> &DpopClient {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        &self.clients[i]
    }
}

/// A route's access token.
pub(crate) enum Credential {
    /// Read from a file at start.
    Fixed(Arc<Zeroizing<String>>),
    /// A saved token, refreshed when it is about to expire.
    Saved(Saved),
}

/// A saved token in memory.
pub(crate) struct Saved {
    name: String,
    cache: TokenCache,
    current: RwLock<Arc<CachedToken>>,
    /// One refresh at a time in this process (the token's lock file serialises processes).
    refreshing: tokio::sync::Mutex<()>,
}

/// The token to send: shared, never copied into a log.
pub(crate) enum AccessToken {
    /// From a file.
    Fixed(Arc<Zeroizing<String>>),
    /// A saved one.
    Saved(Arc<CachedToken>),
}

impl AccessToken {
    /// The token.
    pub(crate) fn as_str(&self) -> &str {
        match self {
            AccessToken::Fixed(token) => token.as_str(),
            AccessToken::Saved(token) => token.access_token(),
        }
    }
}

impl Credential {
    /// The route's credential, checked: a saved token is loaded (refreshed if due) with
    /// `signer`'s key.
    pub(crate) async fn load(from: &TokenFrom, signer: &Signer) -> Result<Credential> {
        Ok(match from {
            TokenFrom::File(path) => {
                Credential::Fixed(Arc::new(read_token_file(path, "access token")?))
            }
            TokenFrom::Saved(name) => {
                let cache = TokenCache::default_location()?;
                let token = cache.fresh_token(name, signer.client()).await?;
                Credential::Saved(Saved {
                    name: name.clone(),
                    cache,
                    current: RwLock::new(Arc::new(token)),
                    refreshing: tokio::sync::Mutex::new(()),
                })
            }
        })
    }

    /// The token to send now, refreshed first when it expires within 30 seconds.
    pub(crate) async fn token(&self, signer: &Signer) -> Result<AccessToken> {
        let saved = match self {
            Credential::Fixed(token) => return Ok(AccessToken::Fixed(token.clone())),
            Credential::Saved(saved) => saved,
        };
        let now = unix_now();
        let current = saved.current();
        if !current.is_expired(now) {
            return Ok(AccessToken::Saved(current));
        }
        let _one = saved.refreshing.lock().await;
        // Another request may have refreshed it while this one waited.
        let current = saved.current();
        if !current.is_expired(unix_now()) {
            return Ok(AccessToken::Saved(current));
        }
        let token = match saved.cache.fresh_token(&saved.name, signer.client()).await {
            Ok(token) => {
                log!("dpop proxy: saved token {:?} refreshed", saved.name);
                token
            }
            Err(e) => match e.unsaved_token() {
                // Refreshed but not saved: good for now; the next run will say more.
                Some(token) => {
                    log!("dpop proxy: {e}");
                    token.clone()
                }
                None => {
                    return Err(e).with_context(|| format!("saved token {:?}", saved.name));
                }
            },
        };
        let token = Arc::new(token);
        *saved.current.write().unwrap_or_else(|e| e.into_inner()) = token.clone();
        Ok(AccessToken::Saved(token))
    }
}

impl Saved {
    fn current(&self) -> Arc<CachedToken> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
