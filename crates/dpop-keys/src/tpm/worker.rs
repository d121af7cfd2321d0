//! The one owner of the TPM: a thread that holds the tss-esapi [`Context`] (which may not
//! move between threads) and runs jobs sent over a channel, one at a time. Signers send jobs
//! and wait for the answer on a reply channel; the agent calls them off its async runtime.
//!
//! The thread keeps every key loaded once it was used. When the link breaks (TPM restarted,
//! resource manager gone) or the TPM lost our objects (reset, object memory full), it drops
//! the context, connects again, makes the SRK again (same template, same key), reloads the
//! blob and retries the command once; a second failure is reported as a coded error and the
//! next request tries again.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::mpsc;

use tss_esapi::Context;
use tss_esapi::constants::CapabilityType;
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK, TPM2_TRANSIENT_FIRST};
use tss_esapi::handles::{KeyHandle, ObjectHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Auth, CapabilityData, Digest, EncryptedSecret, HashcheckTicket, Private, Public, Signature,
    SignatureScheme, SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;

use super::error::{Fault, TpmError, failed};
use super::templates;
use crate::{BackendKind, Error};

/// A key the worker knows, by a number the backend hands out.
pub(super) type KeyId = u64;

/// Where a key comes from when it must be (re)loaded.
#[derive(Clone)]
pub(super) enum KeySource {
    /// Public area and wrapped private blob, loaded under the SRK.
    Blob { public: Public, private: Private },
    /// A persistent object at this handle (`0x81......`).
    Persistent(u32),
}

struct Slot {
    label: String,
    source: KeySource,
    auth: Option<Auth>,
    /// The agent is locked: `auth` was taken away (the backend holds it sealed) and the key
    /// signs nothing until [`Tpm::unseal`] gives it back.
    sealed: bool,
    /// The TPM refused `auth` once: it is never sent again, so that the dictionary attack
    /// counter does not run into lockout.
    refused: bool,
}

/// An open context and what is loaded in it.
struct Conn {
    ctx: Context,
    srk: Option<KeyHandle>,
    /// Loaded keys, with when each was last used (a counter), to unload the least recently
    /// used one when the TPM runs out of object slots (swtpm and TPMs without a resource
    /// manager have three).
    loaded: HashMap<KeyId, Loaded>,
    uses: u64,
}

/// A key in the context.
struct Loaded {
    handle: KeyHandle,
    /// The use counter when it was last used.
    used: u64,
    /// Loaded from a blob (occupies an object slot until flushed); false for a persistent
    /// key, which the TPM keeps itself.
    transient: bool,
}

impl Conn {
    fn srk(&mut self) -> Result<KeyHandle, TpmError> {
        if let Some(srk) = self.srk {
            return Ok(srk);
        }
        let template = templates::srk().map_err(|e| TpmError {
            command: "TPM2_CreatePrimary",
            fault: Fault::Other,
            reason: e.to_string(),
        })?;
        let created = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.create_primary(Hierarchy::Owner, template, None, None, None, None)
            })
            .map_err(|e| TpmError::new("TPM2_CreatePrimary (SRK)", e))?;
        self.srk = Some(created.key_handle);
        Ok(created.key_handle)
    }

    /// Unloads the least recently used key (not the SRK); false when none is loaded.
    fn unload_one(&mut self) -> bool {
        let Some((&id, _)) = self
            .loaded
            .iter()
            .filter(|(_, l)| l.transient)
            .min_by_key(|(_, l)| l.used)
        else {
            return false;
        };
        let loaded = self.loaded.remove(&id).expect("found above");
        if let Err(e) = self.ctx.flush_context(loaded.handle.into()) {
            tracing::debug!(error = %e, "unloading a TPM key to make room");
        }
        true
    }

    /// Loads a blob under the SRK, unloading other keys while the TPM has no room.
    fn load_blob(&mut self, public: &Public, private: &Private) -> Result<KeyHandle, TpmError> {
        loop {
            let srk = self.srk()?;
            let (private, public) = (private.clone(), public.clone());
            match self
                .ctx
                .execute_with_session(Some(AuthSession::Password), |c| {
                    c.load(srk, private, public)
                })
                .map_err(|e| TpmError::new("TPM2_Load", e))
            {
                Err(e) if e.fault == Fault::ObjectMemory && self.unload_one() => continue,
                other => return other,
            }
        }
    }

    /// The key's handle, loading it first if needed.
    fn handle(&mut self, id: KeyId, slot: &Slot) -> Result<KeyHandle, TpmError> {
        self.uses += 1;
        if let Some(loaded) = self.loaded.get_mut(&id) {
            loaded.used = self.uses;
            return Ok(loaded.handle);
        }
        let handle = match &slot.source {
            KeySource::Blob { public, private } => self.load_blob(public, private)?,
            KeySource::Persistent(handle) => {
                let tpm_handle = PersistentTpmHandle::new(*handle)
                    .map(TpmHandle::Persistent)
                    .map_err(|e| TpmError::new("naming the persistent handle", e))?;
                let object = self
                    .ctx
                    .execute_without_session(|c| c.tr_from_tpm_public(tpm_handle))
                    .map_err(|e| TpmError::new("TPM2_ReadPublic (persistent key)", e))?;
                KeyHandle::from(object)
            }
        };
        if let Some(auth) = &slot.auth {
            self.ctx
                .tr_set_auth(handle.into(), auth.clone())
                .map_err(|e| TpmError::new("setting the key's auth value", e))?;
        }
        let transient = matches!(slot.source, KeySource::Blob { .. });
        self.loaded.insert(
            id,
            Loaded {
                handle,
                used: self.uses,
                transient,
            },
        );
        Ok(handle)
    }
}

/// The worker thread's state.
pub(super) struct Tpm {
    tcti_name: String,
    tcti: TctiNameConf,
    conn: Option<Conn>,
    slots: HashMap<KeyId, Slot>,
    next_id: KeyId,
}

/// Flushes transient objects that an earlier process left behind. Only a direct connection
/// (swtpm, `/dev/tpm0`: one client at a time) sees them, and they fill the TPM's few object
/// slots; through a resource manager (`/dev/tpmrm0`, tpm2-abrmd) a new connection sees none.
fn flush_stale_objects(ctx: &mut Context) {
    let listed = ctx.execute_without_session(|c| {
        c.get_capability(CapabilityType::Handles, TPM2_TRANSIENT_FIRST, 64)
    });
    let Ok((CapabilityData::Handles(handles), _)) = listed else {
        return;
    };
    for handle in handles.iter().copied() {
        if let TpmHandle::Transient(_) = handle
            && let Ok(object) = ctx.execute_without_session(|c| c.tr_from_tpm_public(handle))
            && let Err(e) = ctx.flush_context(object)
        {
            tracing::debug!(error = %e, "flushing a stale TPM object");
        }
    }
}

fn connect<'a>(tcti: &TctiNameConf, conn: &'a mut Option<Conn>) -> Result<&'a mut Conn, TpmError> {
    if conn.is_none() {
        let mut ctx =
            Context::new(tcti.clone()).map_err(|e| TpmError::new("connecting to the TPM", e))?;
        flush_stale_objects(&mut ctx);
        *conn = Some(Conn {
            ctx,
            srk: None,
            loaded: HashMap::new(),
            uses: 0,
        });
    }
    Ok(conn.as_mut().expect("connected above"))
}

/// A ticket that says "no ticket": fine for unrestricted keys, which sign any digest.
fn null_ticket() -> Result<HashcheckTicket, TpmError> {
    HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
        tag: TPM2_ST_HASHCHECK,
        hierarchy: TPM2_RH_NULL,
        digest: Default::default(),
    })
    .map_err(|e| TpmError::new("making the null ticket", e))
}

impl Tpm {
    fn new(tcti_name: String, tcti: TctiNameConf) -> Tpm {
        Tpm {
            tcti_name,
            tcti,
            conn: None,
            slots: HashMap::new(),
            next_id: 0,
        }
    }

    /// Runs `op` on a connection; when the link broke or our objects are gone, drops the
    /// context and runs it once more on a new one.
    fn retrying<T>(
        &mut self,
        mut op: impl FnMut(&mut Conn, &HashMap<KeyId, Slot>) -> Result<T, TpmError>,
    ) -> Result<T, TpmError> {
        let mut last = None;
        for _ in 0..2 {
            let result = connect(&self.tcti, &mut self.conn).and_then(|c| op(c, &self.slots));
            match result {
                Err(e) if matches!(e.fault, Fault::Lost | Fault::Evicted | Fault::ObjectMemory) => {
                    tracing::info!(
                        command = e.command,
                        "TPM connection or objects lost ({}); reconnecting",
                        e.reason
                    );
                    self.conn = None;
                    last = Some(e);
                }
                other => return other,
            }
        }
        Err(last.expect("the loop ran"))
    }

    fn error(&self, e: TpmError, label: Option<&str>) -> Error {
        e.into_error(&self.tcti_name, label)
    }

    /// Connects (and makes the SRK), so that an unreachable TPM is reported at start-up.
    pub(super) fn check(&mut self) -> Result<(), Error> {
        self.retrying(|c, _| c.srk().map(drop))
            .map_err(|e| self.error(e, None))
    }

    /// Registers a key; it is loaded on first use or by [`load`](Self::load).
    pub(super) fn add(&mut self, label: &str, source: KeySource, auth: Option<Auth>) -> KeyId {
        let id = self.next_id;
        self.next_id += 1;
        self.slots.insert(
            id,
            Slot {
                label: label.to_owned(),
                source,
                auth,
                sealed: false,
                refused: false,
            },
        );
        id
    }

    /// Forgets a key and unloads it.
    pub(super) fn forget(&mut self, id: KeyId) {
        let Some(slot) = self.slots.remove(&id) else {
            return;
        };
        if let Some(conn) = &mut self.conn
            && let Some(loaded) = conn.loaded.remove(&id)
        {
            let result = match slot.source {
                KeySource::Blob { .. } => conn.ctx.flush_context(loaded.handle.into()),
                KeySource::Persistent(_) => {
                    conn.ctx.tr_close(&mut ObjectHandle::from(loaded.handle))
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "unloading a forgotten TPM key");
            }
        }
    }

    fn label(&self, id: KeyId) -> Result<&str, Error> {
        self.slots
            .get(&id)
            .map(|s| s.label.as_str())
            .ok_or_else(|| Error::KeyNotFound {
                label: format!("TPM key #{id}"),
            })
    }

    /// Loads a key now, so that a blob the TPM refuses is reported at start-up.
    pub(super) fn load(&mut self, id: KeyId) -> Result<(), Error> {
        let label = self.label(id)?.to_owned();
        self.retrying(|c, slots| c.handle(id, &slots[&id]).map(drop))
            .map_err(|e| self.error(e, Some(&label)))
    }

    /// Whether a persistent object exists at `handle` (TPM2_GetCapability, so that asking
    /// about an empty handle is not mistaken for a lost connection).
    pub(super) fn persistent_exists(&mut self, handle: u32) -> Result<bool, Error> {
        self.retrying(|c, _| {
            c.ctx
                .execute_without_session(|ctx| {
                    ctx.get_capability(CapabilityType::Handles, handle, 1)
                })
                .map_err(|e| TpmError::new("TPM2_GetCapability", e))
        })
        .map(|(data, _)| match data {
            CapabilityData::Handles(handles) => handles.iter().any(|h| u32::from(*h) == handle),
            _ => false,
        })
        .map_err(|e| self.error(e, None))
    }

    /// The public area of a loaded key, as the TPM has it.
    pub(super) fn read_public(&mut self, id: KeyId) -> Result<Public, Error> {
        let label = self.label(id)?.to_owned();
        self.retrying(|c, slots| {
            let handle = c.handle(id, &slots[&id])?;
            c.ctx
                .execute_without_session(|ctx| ctx.read_public(handle))
                .map(|(public, _, _)| public)
                .map_err(|e| TpmError::new("TPM2_ReadPublic", e))
        })
        .map_err(|e| self.error(e, Some(&label)))
    }

    /// Signs a digest with a key. A refused auth value is not sent again.
    pub(super) fn sign(
        &mut self,
        id: KeyId,
        digest: &[u8],
        scheme: SignatureScheme,
    ) -> Result<Signature, Error> {
        let label = self.label(id)?.to_owned();
        // Locked: the auth value is not here, and a try without it would count against the
        // TPM's dictionary attack protection.
        if self.slots[&id].sealed {
            return Err(Error::Sealed);
        }
        if self.slots[&id].refused {
            return Err(Error::AuthFailed {
                backend: BackendKind::Tpm,
                key: Some(label),
            });
        }
        let digest = Digest::try_from(digest).map_err(|e| super::error::wrapper("TPM2_Sign", e))?;
        let ticket = null_ticket().map_err(|e| self.error(e, Some(&label)))?;
        let result = self.retrying(|c, slots| {
            let handle = c.handle(id, &slots[&id])?;
            let (digest, ticket) = (digest.clone(), ticket.clone());
            c.ctx
                .execute_with_session(Some(AuthSession::Password), |ctx| {
                    ctx.sign(handle, digest, scheme, ticket)
                })
                .map_err(|e| TpmError::new("TPM2_Sign", e))
        });
        if let Err(e) = &result
            && e.fault == Fault::AuthFail
            && let Some(slot) = self.slots.get_mut(&id)
        {
            slot.refused = true;
        }
        result.map_err(|e| self.error(e, Some(&label)))
    }

    /// The agent is locked: drops every key's auth value (the backend keeps it sealed), also
    /// from the ESAPI context: each loaded key's auth is overwritten, the keys unloaded, the
    /// command buffer (which held the last password) overwritten by a long response, and the
    /// context closed. Keys load again on first use after [`unseal`](Self::unseal).
    pub(super) fn seal(&mut self) {
        for slot in self.slots.values_mut() {
            if slot.auth.take().is_some() {
                slot.sealed = true;
            }
        }
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        for (id, loaded) in conn.loaded.drain() {
            let object = ObjectHandle::from(loaded.handle);
            if let Err(e) = conn.ctx.tr_set_auth(object, Auth::default()) {
                tracing::debug!(error = %e, "clearing a TPM key's auth value");
            }
            let persistent = matches!(
                self.slots.get(&id).map(|s| &s.source),
                Some(KeySource::Persistent(_))
            );
            let result = if persistent {
                conn.ctx.tr_close(&mut ObjectHandle::from(loaded.handle))
            } else {
                conn.ctx.flush_context(object)
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "unloading a TPM key on lock");
            }
        }
        // A response longer than any command that carried a password (every TPM property).
        let scrub = conn.ctx.execute_without_session(|c| {
            c.get_capability(CapabilityType::TpmProperties, 0x100, 128)
        });
        if let Err(e) = scrub {
            tracing::debug!(error = %e, "overwriting the TPM command buffer on lock");
        }
    }

    /// Undoes [`seal`](Self::seal) with the auth value again.
    pub(super) fn unseal(&mut self, auth: &Auth) {
        for slot in self.slots.values_mut() {
            if std::mem::take(&mut slot.sealed) {
                slot.auth = Some(auth.clone());
            }
        }
    }

    /// Makes a key under the SRK from `template`; returns the TPM's public area and the
    /// wrapped private blob.
    pub(super) fn create(
        &mut self,
        template: &Public,
        auth: Option<Auth>,
    ) -> Result<(Public, Private), Error> {
        self.retrying(|c, _| {
            let srk = c.srk()?;
            let (template, auth) = (template.clone(), auth.clone());
            c.ctx
                .execute_with_session(Some(AuthSession::Password), |ctx| {
                    ctx.create(srk, template, auth, None, None, None)
                })
                .map(|created| (created.out_public, created.out_private))
                .map_err(|e| TpmError::new("TPM2_Create", e))
        })
        .map_err(|e| match e.fault {
            Fault::Unsupported => failed(
                e.command,
                format!("this TPM does not make such keys: {}", e.reason),
            ),
            _ => self.error(e, None),
        })
    }

    /// Imports an unwrapped duplicate (a marshalled `TPM2B_SENSITIVE`, neither inner nor
    /// outer wrapping) under the SRK; returns the wrapped private blob.
    pub(super) fn import(&mut self, public: &Public, duplicate: &[u8]) -> Result<Private, Error> {
        let duplicate =
            Private::try_from(duplicate).map_err(|e| super::error::wrapper("TPM2_Import", e))?;
        self.retrying(|c, _| {
            let srk = c.srk()?;
            let (public, duplicate) = (public.clone(), duplicate.clone());
            c.ctx
                .execute_with_session(Some(AuthSession::Password), |ctx| {
                    ctx.import(
                        srk.into(),
                        None,
                        public,
                        duplicate,
                        EncryptedSecret::default(),
                        SymmetricDefinitionObject::Null,
                    )
                })
                .map_err(|e| TpmError::new("TPM2_Import", e))
        })
        .map_err(|e| self.error(e, None))
    }
}

/// A job for the worker.
type Job = Box<dyn FnOnce(&mut Tpm) + Send>;

/// The handle on the worker thread; dropping it ends the thread after the jobs queued and
/// waits for it, so the context is closed (and our objects flushed) before the process ends.
pub(super) struct Worker {
    jobs: mpsc::Sender<Job>,
    thread: Option<std::thread::JoinHandle<()>>,
    tcti: String,
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop.
        let (closed, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.jobs, closed));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Worker {
    /// Starts the thread for `tcti` (checked here, connected on first use).
    pub(super) fn start(tcti: &str) -> Result<Worker, Error> {
        let conf = TctiNameConf::from_str(tcti).map_err(|_| {
            failed(
                "parsing the TCTI",
                format!(
                    "{tcti:?} is not a TCTI (device:/dev/tpmrm0, tabrmd:, swtpm:host=H,port=P or \
                 mssim:host=H,port=P)"
                ),
            )
        })?;
        let (jobs, queue) = mpsc::channel::<Job>();
        let name = tcti.to_owned();
        let thread = std::thread::Builder::new()
            .name("dpop-tpm".into())
            .spawn(move || {
                let mut tpm = Tpm::new(name, conf);
                for job in queue {
                    job(&mut tpm);
                }
            })
            .map_err(|e| failed("starting the TPM thread", e.to_string()))?;
        Ok(Worker {
            jobs,
            thread: Some(thread),
            tcti: tcti.to_owned(),
        })
    }

    /// The TCTI the worker uses.
    pub(super) fn tcti(&self) -> &str {
        &self.tcti
    }

    /// Runs `job` on the worker thread and waits for its answer.
    pub(super) fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Tpm) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let gone = || failed("reaching the TPM thread", "the thread stopped".to_owned());
        let (reply, answer) = mpsc::sync_channel(1);
        self.jobs
            .send(Box::new(move |tpm| {
                let _ = reply.send(job(tpm));
            }))
            .map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }

    /// Like [`run`](Self::run), without waiting: the result arrives on the receiver (which
    /// reports a stopped thread as a closed channel).
    pub(super) fn run_detached<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Tpm) -> Result<T, Error> + Send + 'static,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<T, Error>>, Error> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move |tpm| {
                let _ = reply.send(job(tpm));
            }))
            .map_err(|_| failed("reaching the TPM thread", "the thread stopped".to_owned()))?;
        Ok(answer)
    }
}
