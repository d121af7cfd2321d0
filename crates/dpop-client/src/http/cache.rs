//! Saved tokens: one JSON file per token, 0600, in a 0700 directory (by default
//! `$XDG_STATE_HOME/dpop/tokens`; on Windows `%LOCALAPPDATA%\dpop\tokens`, private through
//! the profile's ACL), each bound to the label and thumbprint of its key.
//! Files, not the agent: tokens then outlive agent restarts, and the agent keeps holding
//! nothing but keys and nonces.
//!
//! Refreshing is done under an advisory lock on `NAME.lock` beside the token: several
//! processes refreshing the same token at once would each spend the same refresh token, and a
//! server that rotates refresh tokens and detects reuse then revokes the grant. The holder
//! reloads the file first (another process may have refreshed it meanwhile), marks it
//! (`refresh_started_at`) before spending the refresh token, and saves the result
//! atomically; a result that cannot be saved is handed back in
//! [`Error::RefreshNotSaved`], and the mark stays in the file to say what happened.
//!
//! Over 600 lines with its tests (about 160): the file format, the directory checks, the lock
//! and the refresh under it are one concern (what may happen to a saved token) and read best
//! together; the platform lock calls are the only part that could stand apart.

use std::fs;
use std::io::Write;
#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use super::token::{ClientAuth, OAuthClient, Token, TokenParams};
use super::{DpopClient, Error, unix_now};
use dpop_protocol::KeyDescription;

/// A token is refreshed this many seconds before it expires, so it does not expire in flight.
const EXPIRY_MARGIN: i64 = 30;

/// How long a process waits for another one's refresh of the same token (a refresh is one
/// HTTP request, or two with a nonce challenge).
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// How often a waiting process tries the lock again.
const LOCK_POLL: Duration = Duration::from_millis(50);

/// The pauses between attempts to save a refreshed token whose first save failed.
const SAVE_RETRIES: [Duration; 3] = [
    Duration::from_millis(100),
    Duration::from_millis(300),
    Duration::from_millis(900),
];

/// Where the client secret for refreshing comes from (never the secret itself).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientSecretSource {
    /// An environment variable.
    Env(String),
    /// A file.
    File(PathBuf),
}

impl ClientSecretSource {
    /// Reads the secret (trailing newline dropped).
    pub fn read(&self) -> Result<Zeroizing<String>, Error> {
        let mut secret = match self {
            ClientSecretSource::Env(name) => Zeroizing::new(std::env::var(name).map_err(|_| {
                Error::Config(format!(
                    "the client secret variable {name} is not set (or not UTF-8)"
                ))
            })?),
            ClientSecretSource::File(path) => {
                Zeroizing::new(fs::read_to_string(path).map_err(|source| Error::Cache {
                    path: path.clone(),
                    source,
                })?)
            }
        };
        let len = secret.trim_end_matches(['\r', '\n']).len();
        secret.truncate(len);
        if secret.is_empty() {
            return Err(Error::Config("the client secret is empty".into()));
        }
        Ok(secret)
    }
}

/// A saved token with what refreshing it needs. `Debug` never shows the tokens.
#[derive(Clone, Serialize, Deserialize)]
pub struct CachedToken {
    /// The name it is saved under.
    pub name: String,
    access_token: String,
    /// `token_type` as issued.
    pub token_type: String,
    /// Expiry, seconds since the epoch, when the server gave a lifetime.
    pub expires_at: Option<i64>,
    refresh_token: Option<String>,
    /// Granted scope.
    pub scope: Option<String>,
    /// The label of the key the token is bound to.
    pub key: String,
    /// That key's RFC 7638 thumbprint when the token was issued.
    pub jkt: String,
    /// The token endpoint (for refreshing).
    pub token_url: String,
    /// The client id.
    pub client_id: String,
    /// `none`, `client_secret_basic` or `client_secret_post`.
    pub client_auth: String,
    /// Where the client secret is read from when refreshing.
    pub client_secret: Option<ClientSecretSource>,
    /// Scopes asked for (sent again on refresh).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Resource indicators asked for.
    #[serde(default)]
    pub resources: Vec<String>,
    /// Audience asked for.
    pub audience: Option<String>,
    /// Whether a bearer token was accepted.
    #[serde(default)]
    pub allow_bearer: bool,
    /// Set (seconds since the epoch) just before the refresh token is sent to be exchanged,
    /// cleared when the result is saved: while it is set, the saved refresh token may
    /// already be spent (a refresh whose result was lost, or that was interrupted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_started_at: Option<i64>,
}

impl Drop for CachedToken {
    fn drop(&mut self) {
        self.access_token.zeroize();
        self.refresh_token.zeroize();
    }
}

impl std::fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedToken")
            .field("name", &self.name)
            .field("token_type", &self.token_type)
            .field("expires_at", &self.expires_at)
            .field("key", &self.key)
            .field("jkt", &self.jkt)
            .field("token_url", &self.token_url)
            .finish_non_exhaustive()
    }
}

impl CachedToken {
    /// A record of `token`, issued through `client` to the key `key`.
    pub fn new(
        name: &str,
        token: &Token,
        key: &KeyDescription,
        client: &OAuthClient,
        client_secret: Option<ClientSecretSource>,
        params: &TokenParams,
    ) -> Result<CachedToken, Error> {
        check_name(name)?;
        Ok(CachedToken {
            name: name.to_owned(),
            access_token: token.access_token().to_owned(),
            token_type: token.token_type.clone(),
            expires_at: token.expires_in.map(|d| expires_at(unix_now(), d)),
            refresh_token: token.refresh_token().map(str::to_owned),
            scope: token.scope.clone(),
            key: key.label.clone(),
            jkt: key.jkt.clone(),
            token_url: client.token_url().to_string(),
            client_id: client.client_id().to_owned(),
            client_auth: client.auth().method().to_owned(),
            client_secret,
            scopes: params.scopes.clone(),
            resources: params.resources.clone(),
            audience: params.audience.clone(),
            allow_bearer: params.allow_bearer,
            refresh_started_at: None,
        })
    }

    /// The access token.
    pub fn access_token(&self) -> &str {
        &self.access_token
    }

    /// Whether a refresh token is saved.
    pub fn has_refresh_token(&self) -> bool {
        self.refresh_token.is_some()
    }

    /// Whether the token expired (or expires within 30 seconds).
    pub fn is_expired(&self, now: i64) -> bool {
        self.expires_at
            .is_some_and(|at| at <= now.saturating_add(EXPIRY_MARGIN))
    }

    /// Refuses the token when its key is gone from `keys` or its label names another key.
    pub fn check_key(&self, keys: &[KeyDescription]) -> Result<(), Error> {
        match keys.iter().find(|k| k.label == self.key) {
            None => Err(Error::KeyGone {
                name: self.name.clone(),
                key: self.key.clone(),
            }),
            Some(k) if k.jkt != self.jkt => Err(Error::KeyReplaced {
                name: self.name.clone(),
                key: self.key.clone(),
                saved: self.jkt.clone(),
                now: k.jkt.clone(),
            }),
            Some(_) => Ok(()),
        }
    }

    fn params(&self) -> TokenParams {
        TokenParams {
            scopes: self.scopes.clone(),
            resources: self.resources.clone(),
            audience: self.audience.clone(),
            allow_bearer: self.allow_bearer,
        }
    }

    fn oauth_client(&self) -> Result<OAuthClient, Error> {
        let secret = || -> Result<Zeroizing<String>, Error> {
            self.client_secret
                .as_ref()
                .ok_or_else(|| {
                    Error::Config(format!(
                        "saved token {:?} names no client secret",
                        self.name
                    ))
                })?
                .read()
        };
        let auth = match self.client_auth.as_str() {
            "none" => ClientAuth::None,
            "client_secret_basic" => ClientAuth::SecretBasic(secret()?),
            "client_secret_post" => ClientAuth::SecretPost(secret()?),
            other => {
                return Err(Error::Config(format!(
                    "saved token {:?} has unknown client authentication {other:?}",
                    self.name
                )));
            }
        };
        Ok(OAuthClient::new(
            self.token_url.parse()?,
            &self.client_id,
            auth,
        ))
    }
}

/// A directory of saved tokens.
#[derive(Clone, Debug)]
pub struct TokenCache {
    dir: PathBuf,
    lock_wait: Duration,
}

/// The lock of one saved token (see [`TokenCache::lock`]), released when dropped.
#[derive(Debug)]
pub struct TokenLock {
    _file: fs::File,
    path: PathBuf,
}

impl TokenLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl TokenCache {
    /// The cache in `dir` (created 0700 on first save).
    pub fn new(dir: impl Into<PathBuf>) -> TokenCache {
        TokenCache {
            dir: dir.into(),
            lock_wait: LOCK_WAIT,
        }
    }

    /// How long [`lock`](Self::lock) waits for another process (default 30 seconds).
    pub fn lock_wait(mut self, wait: Duration) -> TokenCache {
        self.lock_wait = wait;
        self
    }

    /// `$XDG_STATE_HOME/dpop/tokens`, or `~/.local/state/dpop/tokens`.
    #[cfg(not(windows))]
    pub fn default_location() -> Result<TokenCache, Error> {
        let state = std::env::var_os("XDG_STATE_HOME")
            .filter(|d| !d.is_empty() && Path::new(d).is_absolute())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|d| !d.is_empty())
                    .map(|home| Path::new(&home).join(".local/state"))
            })
            .ok_or_else(|| {
                Error::Config("neither XDG_STATE_HOME nor HOME is set: no place for tokens".into())
            })?;
        Ok(TokenCache::new(state.join("dpop").join("tokens")))
    }

    /// `%LOCALAPPDATA%\dpop\tokens`: the user's profile, which other users cannot read.
    #[cfg(windows)]
    pub fn default_location() -> Result<TokenCache, Error> {
        let local = std::env::var_os("LOCALAPPDATA")
            .filter(|d| !d.is_empty())
            .ok_or_else(|| Error::Config("LOCALAPPDATA is not set: no place for tokens".into()))?;
        Ok(TokenCache::new(
            Path::new(&local).join("dpop").join("tokens"),
        ))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> Result<PathBuf, Error> {
        check_name(name)?;
        Ok(self.dir.join(format!("{name}.json")))
    }

    /// Creates the directory (0700) when missing, then checks that it is private.
    fn ensure_dir(&self) -> Result<(), Error> {
        let mut dir = fs::DirBuilder::new();
        dir.recursive(true);
        #[cfg(unix)]
        dir.mode(0o700);
        dir.create(&self.dir).map_err(|source| Error::Cache {
            path: self.dir.clone(),
            source,
        })?;
        self.check_dir()
    }

    /// Takes the lock of the token `name` (the file `NAME.lock` beside it, created 0600 and
    /// left in place), waiting at most the [`lock_wait`](Self::lock_wait) for another process
    /// to release it. Advisory: it keeps out other users of this lock (every `dpop` and
    /// [`fresh_token`](Self::fresh_token)), nothing else.
    pub async fn lock(&self, name: &str) -> Result<TokenLock, Error> {
        check_name(name)?;
        let path = self.dir.join(format!("{name}.lock"));
        self.ensure_dir()?;
        let io = |source| Error::Cache {
            path: path.clone(),
            source,
        };
        let mut options = fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
        let file = options.open(&path).map_err(io)?;
        let deadline = Instant::now() + self.lock_wait;
        loop {
            if try_lock(&file).map_err(io)? {
                return Ok(TokenLock { _file: file, path });
            }
            if Instant::now() >= deadline {
                return Err(Error::LockTimeout {
                    path,
                    waited: self.lock_wait,
                });
            }
            tokio::time::sleep(LOCK_POLL).await;
        }
    }

    /// Refuses a directory that another user owns or that group or others can write: they
    /// could plant a token file (sending our proofs with their token) or swap ours. A
    /// directory that does not exist yet is fine (save creates it 0700).
    #[cfg(unix)]
    fn check_dir(&self) -> Result<(), Error> {
        let meta = match fs::metadata(&self.dir) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(Error::Cache {
                    path: self.dir.clone(),
                    source,
                });
            }
        };
        let unsafe_dir = |reason: String| Error::CacheDirUnsafe {
            path: self.dir.clone(),
            reason,
        };
        if !meta.is_dir() {
            return Err(unsafe_dir("not a directory".into()));
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me {
            return Err(unsafe_dir(format!(
                "owned by uid {}, not by this user (uid {me})",
                meta.uid()
            )));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(unsafe_dir(format!(
                "writable by other users (mode {mode:04o})"
            )));
        }
        Ok(())
    }

    /// On Windows the directory is under the user's profile, which other users cannot write.
    #[cfg(not(unix))]
    fn check_dir(&self) -> Result<(), Error> {
        Ok(())
    }

    /// Saves `token` under its name, replacing the old file atomically (a new 0600 file
    /// renamed over it), so a reader sees the old token or the new one, never half.
    pub fn save(&self, token: &CachedToken) -> Result<PathBuf, Error> {
        let path = self.path(&token.name)?;
        let io = |source| Error::Cache {
            path: self.dir.clone(),
            source,
        };
        self.ensure_dir()?;
        // tempfile creates it 0600.
        let mut file = tempfile::NamedTempFile::new_in(&self.dir).map_err(io)?;
        #[cfg(unix)]
        file.as_file()
            .set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io)?;
        let json =
            Zeroizing::new(serde_json::to_vec_pretty(token).expect("token record serializes"));
        file.write_all(&json).map_err(io)?;
        file.as_file().sync_all().map_err(io)?;
        file.persist(&path).map_err(|e| io(e.error))?;
        Ok(path)
    }

    /// Loads the token saved as `name`.
    pub fn load(&self, name: &str) -> Result<CachedToken, Error> {
        let path = self.path(name)?;
        self.check_dir()?;
        let bytes = match fs::read(&path) {
            Ok(bytes) => Zeroizing::new(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NoSuchToken(name.to_owned()));
            }
            Err(source) => return Err(Error::Cache { path, source }),
        };
        serde_json::from_slice(&bytes).map_err(|e| Error::CacheFormat {
            path,
            reason: e.to_string(),
        })
    }

    /// Every saved token, by name (damaged files are skipped).
    pub fn list(&self) -> Result<Vec<CachedToken>, Error> {
        self.check_dir()?;
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(Error::Cache {
                    path: self.dir.clone(),
                    source,
                });
            }
        };
        let mut tokens: Vec<CachedToken> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_str()?.strip_suffix(".json")?.to_owned();
                self.load(&name).ok()
            })
            .collect();
        tokens.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(tokens)
    }

    /// Deletes the token saved as `name`. Its `NAME.lock` stays: removing a lock file that
    /// another process holds would let a third one lock a new file beside it.
    pub fn delete(&self, name: &str) -> Result<(), Error> {
        let path = self.path(name)?;
        self.check_dir()?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::NoSuchToken(name.to_owned()))
            }
            Err(source) => Err(Error::Cache { path, source }),
        }
    }

    /// The token saved as `name`, ready to send with `http` (whose key must be the token's):
    /// refused when its key is gone or replaced, refreshed and saved again when expired.
    ///
    /// The refresh runs under the token's [`lock`](Self::lock): a process that finds it taken
    /// waits, then reloads the file and uses the token another process saved instead of
    /// refreshing again. Before the refresh token is sent, the file is marked
    /// (`refresh_started_at`), which also proves it can be written; after, the result is
    /// saved, with a few retries. When that fails, [`Error::RefreshNotSaved`] carries the
    /// refreshed token (still usable, and the only copy of a rotated refresh token), and the
    /// file keeps the mark.
    pub async fn fresh_token(&self, name: &str, http: &DpopClient) -> Result<CachedToken, Error> {
        let token = self.load(name)?;
        check_label(&token, http)?;
        let keys = http
            .with_agent(async |agent| agent.list_keys().await)
            .await?;
        token.check_key(&keys)?;
        if !token.is_expired(unix_now()) {
            return Ok(token);
        }
        drop(token);
        let _lock = self.lock(name).await?;
        // Reloaded under the lock: another process may have refreshed (or replaced) it.
        let mut token = self.load(name)?;
        check_label(&token, http)?;
        token.check_key(&keys)?;
        if !token.is_expired(unix_now()) {
            return Ok(token);
        }
        let Some(refresh_token) = token.refresh_token.clone().map(Zeroizing::new) else {
            return Err(Error::Expired(name.to_owned()));
        };
        let params = token.params();
        let oauth = token.oauth_client()?;
        let earlier = token.refresh_started_at;
        // Saved before the refresh token is spent: a failure here costs nothing yet.
        token.refresh_started_at = Some(unix_now());
        self.save(&token)?;
        let fresh = match oauth.refresh(http, &refresh_token, &params).await {
            Ok(fresh) => fresh,
            Err(e) => {
                if !matches!(e, Error::OAuth(_)) {
                    // The server may or may not have seen it: the mark stays.
                    return Err(e);
                }
                // The server answered: it issued nothing, and the refresh token is as it was.
                token.refresh_started_at = earlier;
                let _ = self.save(&token);
                return Err(match earlier {
                    Some(since) => Error::EarlierRefreshUnsaved {
                        name: name.to_owned(),
                        since,
                        cause: Box::new(e),
                    },
                    None => e,
                });
            }
        };
        let rotated = fresh.refresh_token() != Some(refresh_token.as_str());
        token.access_token = fresh.access_token().to_owned();
        token.token_type = fresh.token_type.clone();
        token.expires_at = fresh.expires_in.map(|d| expires_at(unix_now(), d));
        // The new refresh token, or the old one when the server does not rotate them.
        token.refresh_token = fresh.refresh_token().map(str::to_owned);
        if fresh.scope.is_some() {
            token.scope = fresh.scope.clone();
        }
        token.refresh_started_at = None;
        let mut saved = self.save(&token);
        for pause in SAVE_RETRIES {
            if saved.is_ok() {
                break;
            }
            tokio::time::sleep(pause).await;
            saved = self.save(&token);
        }
        match saved {
            Ok(_) => Ok(token),
            Err(e) => Err(Error::RefreshNotSaved {
                path: self.path(name)?,
                rotated,
                cause: Box::new(e),
                token: Box::new(token),
            }),
        }
    }
}

/// Refuses `token` for a client of another key.
fn check_label(token: &CachedToken, http: &DpopClient) -> Result<(), Error> {
    if http.key() == token.key {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "saved token {:?} is bound to key {:?}, not {:?}",
            token.name,
            token.key,
            http.key()
        )))
    }
}

/// Takes an exclusive lock on `file` if no one holds one: `flock`, so it is per open file
/// and two opens in one process exclude each other too; released when the file is closed.
#[cfg(unix)]
fn try_lock(file: &fs::File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor this File owns and keeps open.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EWOULDBLOCK) | Some(libc::EINTR) => Ok(false),
        _ => Err(e),
    }
}

/// `LockFileEx` of the whole file, exclusive, not waiting; released when the handle is closed.
#[cfg(windows)]
fn try_lock(file: &fs::File) -> std::io::Result<bool> {
    use std::os::windows::io::AsRawHandle;
    use windows_sys::Win32::Foundation::ERROR_LOCK_VIOLATION;
    use windows_sys::Win32::Storage::FileSystem::{
        LOCKFILE_EXCLUSIVE_LOCK, LOCKFILE_FAIL_IMMEDIATELY, LockFileEx,
    };
    use windows_sys::Win32::System::IO::OVERLAPPED;
    // SAFETY: OVERLAPPED is plain data; all zero means offset 0 and no event.
    let mut overlapped: OVERLAPPED = unsafe { std::mem::zeroed() };
    // SAFETY: a handle this File owns and keeps open, and an OVERLAPPED that outlives the
    // call (a synchronous handle: the call completes before returning).
    let ok = unsafe {
        LockFileEx(
            file.as_raw_handle(),
            LOCKFILE_EXCLUSIVE_LOCK | LOCKFILE_FAIL_IMMEDIATELY,
            0,
            u32::MAX,
            u32::MAX,
            &mut overlapped,
        )
    };
    if ok != 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(ERROR_LOCK_VIOLATION as i32) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// `now` plus `lifetime`, saturating (a `u64` of seconds cast to `i64` would wrap negative).
fn expires_at(now: i64, lifetime: std::time::Duration) -> i64 {
    i64::try_from(lifetime.as_secs()).map_or(i64::MAX, |secs| now.saturating_add(secs))
}

fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::BadTokenName(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> CachedToken {
        CachedToken {
            name: name.into(),
            access_token: "at-secret".into(),
            token_type: "DPoP".into(),
            expires_at: Some(100),
            refresh_token: Some("rt-secret".into()),
            scope: None,
            key: "k".into(),
            jkt: "jkt".into(),
            token_url: "https://as.example/token".into(),
            client_id: "c".into(),
            client_auth: "none".into(),
            client_secret: None,
            scopes: Vec::new(),
            resources: Vec::new(),
            audience: None,
            allow_bearer: false,
            refresh_started_at: None,
        }
    }

    #[test]
    fn saves_private_files_atomically_and_lists_and_deletes_them() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TokenCache::new(dir.path().join("tokens"));
        assert!(cache.list().unwrap().is_empty());
        let path = cache.save(&record("one")).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(cache.dir()), 0o700);
        let mut two = record("two");
        two.expires_at = None;
        cache.save(&two).unwrap();
        // Saving again replaces; no temporary file is left behind.
        cache.save(&record("one")).unwrap();
        assert_eq!(fs::read_dir(cache.dir()).unwrap().count(), 2);
        let names: Vec<_> = cache
            .list()
            .unwrap()
            .into_iter()
            .map(|t| t.name.clone())
            .collect();
        assert_eq!(names, ["one", "two"]);
        let one = cache.load("one").unwrap();
        assert_eq!(one.access_token(), "at-secret");
        assert!(one.is_expired(100 - EXPIRY_MARGIN) && !one.is_expired(0));
        assert!(!cache.load("two").unwrap().is_expired(i64::MAX - 1));
        let debug = format!("{one:?}");
        assert!(!debug.contains("secret"), "{debug}");
        cache.delete("one").unwrap();
        assert!(matches!(cache.load("one"), Err(Error::NoSuchToken(_))));
        assert!(matches!(cache.delete("one"), Err(Error::NoSuchToken(_))));
        fs::write(cache.dir().join("bad.json"), b"{").unwrap();
        assert!(matches!(cache.load("bad"), Err(Error::CacheFormat { .. })));
    }

    #[test]
    fn the_key_check_tells_gone_from_replaced() {
        let token = record("t");
        let key = |label: &str, jkt: &str| -> KeyDescription {
            serde_json::from_value(serde_json::json!({
                "label": label, "alg": "ES256", "backend": "software",
                "jwk": {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"},
                "jkt": jkt, "persistent": false,
            }))
            .unwrap()
        };
        token.check_key(&[key("k", "jkt")]).unwrap();
        assert!(matches!(
            token.check_key(&[key("other", "jkt")]),
            Err(Error::KeyGone { .. })
        ));
        assert!(matches!(
            token.check_key(&[key("k", "new")]),
            Err(Error::KeyReplaced { .. })
        ));
    }

    #[test]
    fn a_huge_lifetime_saturates_instead_of_wrapping() {
        let forever = std::time::Duration::from_secs(u64::MAX);
        assert_eq!(expires_at(1_000, forever), i64::MAX);
        assert_eq!(expires_at(1_000, std::time::Duration::from_secs(60)), 1_060);
        let bounded = super::super::bounded(forever);
        assert_eq!(bounded, super::super::MAX_LIFETIME);
        assert!(expires_at(1_000, bounded) > 1_000);
    }

    #[cfg(unix)]
    #[test]
    fn a_directory_others_can_write_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tokens");
        let cache = TokenCache::new(&dir);
        cache.save(&record("a")).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        for e in [
            cache.list().unwrap_err(),
            cache.load("a").unwrap_err(),
            cache.save(&record("b")).unwrap_err(),
            cache.delete("a").unwrap_err(),
        ] {
            let text = e.to_string();
            assert!(
                text.contains("writable by other users") && text.contains("tokens"),
                "{text}"
            );
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o750)).unwrap();
        assert_eq!(cache.list().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_held_lock_makes_others_wait_a_bounded_time() {
        let tmp = tempfile::tempdir().unwrap();
        let cache =
            TokenCache::new(tmp.path().join("tokens")).lock_wait(Duration::from_millis(200));
        let held = cache.lock("api").await.unwrap();
        assert_eq!(held.path(), cache.dir().join("api.lock"));
        // Another open of the same lock file (as another process would) waits, then fails
        // naming the lock file.
        let started = Instant::now();
        let e = cache.lock("api").await.unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(200));
        let text = e.to_string();
        assert!(
            text.contains("api.lock") && text.contains("still held"),
            "{text}"
        );
        // Other tokens have locks of their own.
        drop(cache.lock("other").await.unwrap());
        drop(held);
        drop(cache.lock("api").await.unwrap());
        #[cfg(unix)]
        assert_eq!(
            fs::metadata(cache.dir().join("api.lock"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }

    #[test]
    fn names_are_file_names_only() {
        for good in ["api", "a.b_c-1"] {
            check_name(good).unwrap();
        }
        for bad in ["", "../x", "a/b", ".hidden", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
