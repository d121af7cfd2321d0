//! A token and its pool of logged-in sessions.
//!
//! Sessions are opened on demand up to a limit and handed back after each use; one login covers
//! every session of the token (PKCS#11 keeps the login state per application and token). When
//! the token goes away, every session of its generation is dropped and the next request looks
//! it up again ([`super::module::discover`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cryptoki::context::{Function, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::ObjectHandle;
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use secrecy::SecretString;

use super::TokenSelector;
use super::error::{Fail, ck_error, gone, pin_locked, pin_refused, rv, rv_name, token_gone};
use super::module::{ModuleUse, SlotToken, TokenIdentity, discover};
use crate::{BackendKind, Error};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The token as found in its current slot, with the sessions open on it.
struct Present {
    slot: Slot,
    identity: TokenIdentity,
    mechanisms: Vec<MechanismType>,
    idle: Vec<Session>,
    /// Sessions of this generation, idle or in use.
    open: usize,
}

struct PoolState {
    current: Option<Present>,
    /// Bumped every time the token is found again; sessions and object handles of an older
    /// generation are stale.
    generation: u64,
}

const PIN_OK: u8 = 0;
const PIN_REFUSED: u8 = 1;
const PIN_LOCKED: u8 = 2;

/// One token in one module, with its PIN and session pool.
pub(crate) struct Token {
    ctx: Pkcs11,
    module: ModuleUse,
    /// Whether the module may be re-initialised to look for a missing token, and when it last
    /// was.
    reinitialize: bool,
    last_reinit: Mutex<Option<Instant>>,
    /// Sessions handed out and not yet returned or closed. Re-initialising the module while
    /// one is out would let its later `C_CloseSession` hit a new session with a reused handle.
    checked_out: AtomicUsize,
    module_path: PathBuf,
    selector: TokenSelector,
    pin: SecretString,
    /// Set once the token refused `pin`; never cleared (a new backend must be opened), so a
    /// wrong PIN is tried exactly once and the token's retry counter is not burnt down.
    pin_state: AtomicU8,
    login_lock: Mutex<()>,
    state: Mutex<PoolState>,
    returned: Condvar,
    max_sessions: usize,
    /// Mechanisms of the last token found, for `algorithms()` while the token is away.
    last_mechanisms: Mutex<Vec<MechanismType>>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("module", &self.module_path)
            .field("selector", &self.selector)
            .finish_non_exhaustive()
    }
}

impl Token {
    pub(crate) fn new(
        ctx: Pkcs11,
        module: ModuleUse,
        module_path: PathBuf,
        selector: TokenSelector,
        pin: SecretString,
        max_sessions: usize,
        reinitialize: bool,
    ) -> Token {
        Token {
            ctx,
            module,
            reinitialize,
            last_reinit: Mutex::new(None),
            checked_out: AtomicUsize::new(0),
            module_path,
            selector,
            pin,
            pin_state: AtomicU8::new(PIN_OK),
            login_lock: Mutex::new(()),
            state: Mutex::new(PoolState {
                current: None,
                generation: 0,
            }),
            returned: Condvar::new(),
            max_sessions: max_sessions.max(1),
            last_mechanisms: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn module_path(&self) -> &Path {
        &self.module_path
    }

    pub(crate) fn context(&self) -> &Pkcs11 {
        &self.ctx
    }

    fn not_present(&self, what: &str) -> Error {
        Error::DeviceUnavailable {
            backend: BackendKind::Pkcs11,
            detail: format!("{} in {} {what}", self.selector, self.module_path.display()),
        }
    }

    /// Looks the token up by label or serial among the slots that hold one. When it is not
    /// there, re-initialises the module (at most every few seconds, and only if no other token
    /// uses it) and looks again: some modules, SoftHSM2 among them, build their slot list once
    /// in `C_Initialize` and would never see the token come back otherwise.
    fn find(&self) -> Result<Present, Error> {
        match self.find_once() {
            Err(Error::DeviceUnavailable { .. }) if self.may_reinitialize() => {
                tracing::info!(token = %self.selector, "token not found; re-initialising the PKCS#11 module to look again");
                let _ = self.ctx.clone().finalize();
                self.module.raw.initialize().map_err(ck_error)?;
                self.find_once()
            }
            other => other,
        }
    }

    fn may_reinitialize(&self) -> bool {
        const EVERY: Duration = Duration::from_secs(2);
        if !self.reinitialize
            || !self.module.sole_user()
            || self.checked_out.load(Ordering::SeqCst) != 0
        {
            return false;
        }
        let mut last = lock(&self.last_reinit);
        match *last {
            Some(at) if at.elapsed() < EVERY => false,
            _ => {
                *last = Some(Instant::now());
                true
            }
        }
    }

    fn find_once(&self) -> Result<Present, Error> {
        let found = discover(&self.ctx, &self.module.raw, &self.selector)?
            .map_err(|others| self.not_present(&others.to_string()))?;
        *lock(&self.last_mechanisms) = found.mechanisms.clone();
        Ok(Present {
            slot: found.slot,
            identity: found.identity,
            mechanisms: found.mechanisms,
            idle: Vec::new(),
            open: 0,
        })
    }

    /// The token's identity, finding it if needed.
    pub(crate) fn identity(&self) -> Result<TokenIdentity, Error> {
        let mut st = lock(&self.state);
        self.ensure_present(&mut st)?;
        Ok(st.current.as_ref().expect("present").identity.clone())
    }

    /// The token's mechanisms: current if it is present, else those last seen.
    pub(crate) fn mechanisms(&self) -> Vec<MechanismType> {
        let mut st = lock(&self.state);
        if self.ensure_present(&mut st).is_ok() {
            return st.current.as_ref().expect("present").mechanisms.clone();
        }
        lock(&self.last_mechanisms).clone()
    }

    fn ensure_present(&self, st: &mut PoolState) -> Result<(), Error> {
        if st.current.is_none() {
            let present = self.find()?;
            st.generation += 1;
            st.current = Some(present);
        }
        Ok(())
    }

    /// Logs the application in on `session`'s token unless it is already.
    fn login(&self, session: &Session) -> Result<(), Fail> {
        let _one_at_a_time = lock(&self.login_lock);
        self.pin_still_good()?;
        let state = session.get_session_info()?.session_state();
        if matches!(state, SessionState::RwUser | SessionState::RoUser) {
            return Ok(());
        }
        match session.login(UserType::User, Some(&self.pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
            Err(e) => Err(self.pin_failure(e)),
        }
    }

    /// Signs `data` on `session` with one `C_SignInit` and one `C_Sign` (cryptoki's
    /// `Session::sign` first asks for the length: a second trip into the module). A key with
    /// `CKA_ALWAYS_AUTHENTICATE` gets the PIN again (`CKU_CONTEXT_SPECIFIC`) between the two.
    pub(crate) fn sign(
        &self,
        session: &Session,
        mechanism: &Mechanism<'_>,
        key: ObjectHandle,
        data: &[u8],
        expected_len: usize,
        always_authenticate: bool,
    ) -> Result<Vec<u8>, Fail> {
        session.sign_init(mechanism, key)?;
        if always_authenticate {
            self.pin_still_good()?;
            session
                .login(UserType::ContextSpecific, Some(&self.pin))
                .map_err(|e| self.pin_failure(e))?;
        }
        Ok(self.module.raw.sign(session, data, expected_len)?)
    }

    /// Refuses to use a PIN the token has refused before.
    fn pin_still_good(&self) -> Result<(), Fail> {
        match self.pin_state.load(Ordering::SeqCst) {
            PIN_REFUSED => Err(pin_refused().into()),
            PIN_LOCKED => Err(pin_locked().into()),
            _ => Ok(()),
        }
    }

    /// A failed `C_Login`: remembers a refused or locked PIN so it is never tried again.
    fn pin_failure(&self, e: CkError) -> Fail {
        match e {
            CkError::Pkcs11(
                RvError::PinIncorrect | RvError::PinLenRange | RvError::PinInvalid,
                _,
            ) => {
                self.pin_state.store(PIN_REFUSED, Ordering::SeqCst);
                tracing::warn!(token = %self.selector, "the PKCS#11 token refused the PIN; \
                    not trying it again until the backend is reopened");
                pin_refused().into()
            }
            CkError::Pkcs11(RvError::PinLocked, _) => {
                self.pin_state.store(PIN_LOCKED, Ordering::SeqCst);
                pin_locked().into()
            }
            e => e.into(),
        }
    }

    /// Called when a private key cannot be found: fails if the real reason is that the token
    /// went away or the session is no longer logged in. Some modules (SoftHSM2 among them)
    /// report both only as missing objects (private objects are invisible when logged out).
    pub(crate) fn explain_missing(&self, session: &Session, generation: u64) -> Result<(), Fail> {
        self.check_still_present(generation)?;
        let state = session.get_session_info()?.session_state();
        if !matches!(state, SessionState::RwUser | SessionState::RoUser) {
            return Err(Fail::Ck(CkError::Pkcs11(
                RvError::UserNotLoggedIn,
                Function::FindObjects,
            )));
        }
        Ok(())
    }

    /// Checks that the token found in `generation` is still in its slot, with the same label
    /// and serial.
    fn check_still_present(&self, generation: u64) -> Result<(), Fail> {
        let (slot, identity) = {
            let st = lock(&self.state);
            match st.current.as_ref() {
                Some(p) if st.generation == generation => (p.slot, p.identity.clone()),
                // Already forgotten: the caller's session is stale.
                _ => return Err(gone(Function::GetTokenInfo)),
            }
        };
        // Read raw, as discover() does: a token whose other fields do not parse is still there.
        match SlotToken::read(&self.module.raw, slot) {
            Ok(token) if token.label == identity.label && token.serial == identity.serial => Ok(()),
            _ => Err(gone(Function::GetTokenInfo)),
        }
    }

    /// Takes a logged-in session from the pool, opening one if fewer than the limit are open,
    /// else waiting for one to come back.
    pub(crate) fn session(&self) -> Result<PooledSession<'_>, Error> {
        let mut st = lock(&self.state);
        loop {
            self.ensure_present(&mut st)?;
            let generation = st.generation;
            let present = st.current.as_mut().expect("present");
            if let Some(session) = present.idle.pop() {
                self.checked_out.fetch_add(1, Ordering::SeqCst);
                return Ok(PooledSession {
                    token: self,
                    session: Some(session),
                    generation,
                    broken: false,
                });
            }
            if present.open < self.max_sessions {
                present.open += 1;
                let slot = present.slot;
                self.checked_out.fetch_add(1, Ordering::SeqCst);
                drop(st);
                let mut pooled = PooledSession {
                    token: self,
                    session: None,
                    generation,
                    broken: true,
                };
                let opened = self
                    .ctx
                    .open_rw_session(slot)
                    .map_err(Fail::from)
                    .and_then(|s| {
                        let result = self.login(&s);
                        pooled.session = Some(s);
                        result
                    });
                return match opened {
                    Ok(()) => {
                        pooled.broken = false;
                        Ok(pooled)
                    }
                    Err(fail) => Err(self.settle(fail, generation)),
                };
            }
            st = self.returned.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Turns a failure into the error to report; when the token is gone, drops every session
    /// of this generation so that the next request looks the token up again.
    fn settle(&self, fail: Fail, generation: u64) -> Error {
        match fail {
            Fail::Other(e) => e,
            Fail::Ck(e) => {
                if rv(&e).is_some_and(token_gone) {
                    self.forget(generation);
                    let detail = rv(&e).map(rv_name).unwrap_or_default();
                    self.not_present(&format!("went away ({detail})"))
                } else {
                    ck_error(e)
                }
            }
        }
    }

    /// Drops the pooled sessions of `generation` (closing them) and forgets the slot.
    fn forget(&self, generation: u64) {
        let stale = {
            let mut st = lock(&self.state);
            if st.generation != generation {
                return;
            }
            st.current.take()
        };
        drop(stale);
        self.returned.notify_all();
    }

    /// Runs `f` with a logged-in session. On `CKR_USER_NOT_LOGGED_IN` logs in again and retries
    /// once; when the token is gone, returns [`Error::DeviceUnavailable`] and starts over with
    /// the next call. `f` gets the session and its generation (for caching object handles).
    pub(crate) fn run<T>(
        &self,
        mut f: impl FnMut(&Session, u64) -> Result<T, Fail>,
    ) -> Result<T, Error> {
        let mut logged_in_again = false;
        loop {
            let mut pooled = self.session()?;
            let generation = pooled.generation;
            let result = f(pooled.session(), generation);
            match result {
                Ok(v) => return Ok(v),
                Err(Fail::Ck(e))
                    if !logged_in_again && matches!(rv(&e), Some(RvError::UserNotLoggedIn)) =>
                {
                    logged_in_again = true;
                    tracing::info!(token = %self.selector, "PKCS#11 session was logged out; logging in again");
                    if let Err(fail) = self.login(pooled.session()) {
                        pooled.broken = true;
                        drop(pooled);
                        return Err(self.settle(fail, generation));
                    }
                }
                Err(fail) => {
                    // A failure may leave an operation active in the session (a signature
                    // begun and not finished); a fresh session is cheaper than finding out.
                    pooled.broken = true;
                    drop(pooled);
                    return Err(self.settle(fail, generation));
                }
            }
        }
    }
}

/// A session borrowed from the pool; it goes back on drop unless it broke or the token was
/// found again since.
pub(crate) struct PooledSession<'a> {
    token: &'a Token,
    session: Option<Session>,
    generation: u64,
    broken: bool,
}

impl PooledSession<'_> {
    fn session(&self) -> &Session {
        self.session.as_ref().expect("session is set until drop")
    }
}

impl Drop for PooledSession<'_> {
    fn drop(&mut self) {
        let mut session = self.session.take();
        let mut st = lock(&self.token.state);
        if st.generation == self.generation
            && let Some(present) = st.current.as_mut()
        {
            match session.take() {
                Some(s) if !self.broken => present.idle.push(s),
                other => {
                    session = other;
                    present.open = present.open.saturating_sub(1);
                }
            }
        }
        drop(st);
        drop(session);
        self.token.checked_out.fetch_sub(1, Ordering::SeqCst);
        self.token.returned.notify_one();
    }
}
