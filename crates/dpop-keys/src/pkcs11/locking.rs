//! Mutexes of our own for the module, handed over in `C_Initialize`.
//!
//! PKCS#11 lets the application hand the module its mutex functions (`CreateMutex` & co. in
//! `CK_C_INITIALIZE_ARGS`). Modules that take many short internal locks per signature, SoftHSM2
//! among them, scale badly on the OS's default mutexes: a contended lock puts the thread to
//! sleep at once, and waking it costs more than the critical section. parking_lot's mutex spins
//! briefly before it parks. Measured on 2 cores (`cargo bench -p dpop-tests --bench pkcs11`):
//! two threads signing with one SoftHSM2 key reach 24–43 k/s (varying from run to run) with the
//! OS mutexes and a steady 44–46 k/s with these.
//!
//! A module that cannot use application-supplied locks (`CKR_CANT_LOCK`) is initialised with
//! `CKF_OS_LOCKING_OK` alone (see `raw::RawModule::initialize`).

use std::ffi::c_void;

use cryptoki_sys::{
    CK_C_INITIALIZE_ARGS, CK_RV, CKF_OS_LOCKING_OK, CKR_ARGUMENTS_BAD, CKR_MUTEX_NOT_LOCKED, CKR_OK,
};
use parking_lot::RawMutex;
use parking_lot::lock_api::RawMutex as _;

/// `C_Initialize` arguments: our mutexes, or (`with_mutexes` false) the module's OS locking.
pub(super) fn initialize_args(with_mutexes: bool) -> CK_C_INITIALIZE_ARGS {
    let mut args = CK_C_INITIALIZE_ARGS {
        CreateMutex: Some(create_mutex),
        DestroyMutex: Some(destroy_mutex),
        LockMutex: Some(lock_mutex),
        UnlockMutex: Some(unlock_mutex),
        flags: CKF_OS_LOCKING_OK,
        pReserved: std::ptr::null_mut(),
    };
    if !with_mutexes {
        args.CreateMutex = None;
        args.DestroyMutex = None;
        args.LockMutex = None;
        args.UnlockMutex = None;
    }
    args
}

unsafe extern "C" fn create_mutex(out: *mut *mut c_void) -> CK_RV {
    if out.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    let mutex = Box::into_raw(Box::new(RawMutex::INIT));
    #[cfg(test)]
    tests::count(1, 0);
    // SAFETY: the module passes a valid place for the new mutex's pointer.
    unsafe { *out = mutex.cast() };
    CKR_OK
}

unsafe extern "C" fn destroy_mutex(mutex: *mut c_void) -> CK_RV {
    if mutex.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    // SAFETY: `mutex` came from `create_mutex` and the module destroys it once.
    drop(unsafe { Box::from_raw(mutex.cast::<RawMutex>()) });
    #[cfg(test)]
    tests::count(0, 1);
    CKR_OK
}

unsafe extern "C" fn lock_mutex(mutex: *mut c_void) -> CK_RV {
    if mutex.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    // SAFETY: `mutex` came from `create_mutex` and is not destroyed while in use.
    unsafe { &*mutex.cast::<RawMutex>() }.lock();
    CKR_OK
}

unsafe extern "C" fn unlock_mutex(mutex: *mut c_void) -> CK_RV {
    if mutex.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    // SAFETY: as in `lock_mutex`.
    let mutex = unsafe { &*mutex.cast::<RawMutex>() };
    if !mutex.is_locked() {
        return CKR_MUTEX_NOT_LOCKED;
    }
    // SAFETY: the module unlocks only what it locked (PKCS#11 mutexes are not owned by a
    // thread, and parking_lot's raw mutex may be released from any thread).
    unsafe { mutex.unlock() };
    CKR_OK
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        /// Mutexes created and destroyed on this thread (a module calls the callbacks from
        /// the thread that runs `C_Initialize` / `C_Finalize`).
        static COUNTS: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
    }

    pub(super) fn count(created: usize, destroyed: usize) {
        COUNTS.with(|c| {
            let (a, b) = c.get();
            c.set((a + created, b + destroyed));
        });
    }

    #[test]
    fn softhsm2_takes_our_mutexes_and_destroys_them_in_c_finalize() {
        let module = std::env::var("DPOP_TEST_PKCS11_MODULE")
            .unwrap_or_else(|_| "/usr/lib/softhsm/libsofthsm2.so".into());
        let raw = crate::pkcs11::raw::RawModule::load(module.as_ref()).unwrap_or_else(|e| {
            panic!(
                "SoftHSM2 is needed ({e}); scripts/test.sh installs it (apt-get install softhsm2)"
            )
        });
        raw.initialize().expect("C_Initialize with our mutexes");
        let (created, destroyed) = COUNTS.with(Cell::get);
        assert!(
            created > destroyed,
            "SoftHSM2 holds no mutex of ours ({created} created, {destroyed} destroyed)"
        );
        cryptoki::context::Pkcs11::new(&module)
            .unwrap()
            .finalize()
            .expect("C_Finalize");
        let (created_after, destroyed_after) = COUNTS.with(Cell::get);
        assert_eq!(created_after, created);
        assert_eq!(
            destroyed_after, created,
            "every mutex is destroyed by C_Finalize"
        );
    }

    #[test]
    fn mutex_callbacks_follow_the_pkcs11_contract() {
        let mut m: *mut c_void = std::ptr::null_mut();
        unsafe {
            assert_eq!(create_mutex(&mut m), CKR_OK);
            assert!(!m.is_null());
            assert_eq!(unlock_mutex(m), CKR_MUTEX_NOT_LOCKED);
            assert_eq!(lock_mutex(m), CKR_OK);
            assert!((*m.cast::<RawMutex>()).is_locked());
            assert_eq!(unlock_mutex(m), CKR_OK);
            assert_eq!(unlock_mutex(m), CKR_MUTEX_NOT_LOCKED);
            assert_eq!(destroy_mutex(m), CKR_OK);
            assert_eq!(create_mutex(std::ptr::null_mut()), CKR_ARGUMENTS_BAD);
            assert_eq!(lock_mutex(std::ptr::null_mut()), CKR_ARGUMENTS_BAD);
        }
    }

    #[test]
    fn the_callbacks_exclude_each_other_across_threads() {
        struct Shared(std::cell::UnsafeCell<u64>, usize);
        // SAFETY (test): the counter is only touched between lock_mutex and unlock_mutex.
        unsafe impl Sync for Shared {}
        let mut m: *mut c_void = std::ptr::null_mut();
        unsafe { assert_eq!(create_mutex(&mut m), CKR_OK) };
        let shared = Shared(std::cell::UnsafeCell::new(0), m as usize);
        std::thread::scope(|s| {
            let shared = &shared;
            for _ in 0..4 {
                // `move` of the reference: the whole Sync struct, not its UnsafeCell field.
                s.spawn(move || {
                    for _ in 0..20_000 {
                        let m = shared.1 as *mut c_void;
                        unsafe {
                            assert_eq!(lock_mutex(m), CKR_OK);
                            // A read and a separate write: lost updates if two threads overlap.
                            let v = std::ptr::read_volatile(shared.0.get());
                            std::ptr::write_volatile(shared.0.get(), v + 1);
                            assert_eq!(unlock_mutex(m), CKR_OK);
                        }
                    }
                });
            }
        });
        assert_eq!(unsafe { *shared.0.get() }, 80_000);
        // A mutex locked on one thread may be released from another, as PKCS#11 allows.
        unsafe { assert_eq!(lock_mutex(m), CKR_OK) };
        let addr = m as usize;
        std::thread::spawn(move || unsafe {
            assert_eq!(unlock_mutex(addr as *mut c_void), CKR_OK)
        })
        .join()
        .unwrap();
        unsafe { assert_eq!(destroy_mutex(m), CKR_OK) };
    }
}
