//! The one store for key records that every backend uses: one `<label>.json` per key in a
//! private directory (0700), written atomically as a new 0600 file that never replaces an
//! existing one. The backend decides what a record holds (the software backend an encrypted
//! PKCS#8, the PKCS#11 backend where the key is on the token); the store checks once that a
//! record's file name is its label, so a renamed file cannot pass for another key. The agent
//! keeps its key policies in one too.

use std::fs;
use std::path::{Path, PathBuf};

#[cfg(any(feature = "pkcs11", feature = "tpm"))]
use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::fsutil::{create_private_dir, replace_private_file, write_new_private_file};
use crate::{Error, KeyLabel};

/// How a hardware backend's key came to the agent, as its record says: what deleting it does.
#[cfg(any(feature = "pkcs11", feature = "tpm"))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Origin {
    /// Made in the token or TPM by the agent; deleting destroys it.
    Generated,
    /// Imported from PEM by the agent; deleting destroys it.
    Imported,
    /// There before (adopted by URI or handle); deleting only forgets it.
    Adopted,
}

/// A record a backend keeps in a [`RecordStore`]: it knows the label it is filed under.
pub trait Record: Serialize + DeserializeOwned {
    /// The label inside the record, which must match its file name.
    fn label(&self) -> &KeyLabel;
}

/// Key records in one directory.
#[derive(Clone, Debug)]
pub struct RecordStore {
    dir: PathBuf,
}

impl RecordStore {
    /// Records in `dir`, created 0700 if missing; an existing directory must be ours and not
    /// writable by others.
    pub fn open(dir: PathBuf) -> Result<RecordStore, Error> {
        create_private_dir(&dir)?;
        Ok(RecordStore { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the record of `label` lives.
    pub fn path(&self, label: &KeyLabel) -> PathBuf {
        self.dir.join(format!("{label}.json"))
    }

    /// Fails with [`Error::KeyExists`] when `label` has a record already.
    pub fn check_free(&self, label: &KeyLabel) -> Result<(), Error> {
        if self.path(label).exists() {
            return Err(Error::KeyExists {
                label: label.to_string(),
            });
        }
        Ok(())
    }

    /// Files a new record under its label (pretty JSON, as the stores have always written).
    /// Never replaces an existing record: that is [`Error::KeyExists`].
    pub fn write_new<R: Record>(&self, record: &R) -> Result<(), Error> {
        let json = serde_json::to_vec_pretty(record).expect("key records serialize");
        write_new_private_file(&self.path(record.label()), &json)
    }

    /// Rewrites the existing record of `record`'s label in one atomic step (a format
    /// migration): a failure leaves the old record in place.
    pub fn replace<R: Record>(&self, record: &R) -> Result<(), Error> {
        let json = serde_json::to_vec_pretty(record).expect("key records serialize");
        replace_private_file(&self.path(record.label()), &json)
    }

    /// The record files, sorted by name so keys load in a stable order.
    pub fn list(&self) -> Result<Vec<PathBuf>, Error> {
        json_files(&self.dir)
    }

    /// Reads and checks the record at `path` (one of [`list`](Self::list)).
    pub fn read<R: Record>(&self, path: &Path) -> Result<R, Error> {
        let bytes = fs::read(path).map_err(|source| Error::Io {
            action: "reading key record",
            path: path.to_owned(),
            source,
        })?;
        let corrupt = |reason: String| Error::CorruptStore {
            path: path.to_owned(),
            reason,
        };
        let record: R = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if path.file_stem().and_then(|s| s.to_str()) != Some(record.label().as_str()) {
            return Err(corrupt("file name does not match the label inside".into()));
        }
        Ok(record)
    }

    /// Reads the record of `label`: [`Error::KeyNotFound`] when there is none.
    pub fn load<R: Record>(&self, label: &KeyLabel) -> Result<R, Error> {
        let path = self.path(label);
        if !path.exists() {
            return Err(Error::KeyNotFound {
                label: label.to_string(),
            });
        }
        self.read(&path)
    }

    /// Removes the record of `label`.
    pub fn remove(&self, label: &KeyLabel) -> Result<(), Error> {
        let path = self.path(label);
        fs::remove_file(&path).map_err(|source| Error::Io {
            action: "removing key record",
            path,
            source,
        })
    }

    /// Moves the record of `label` aside (it no longer lists or loads), for a removal that
    /// must first undo something outside the store: a crash in between then leaves no record
    /// of a key that is gone. [`SetAside::restore`] puts it back, [`SetAside::remove`] ends it.
    pub fn set_aside(&self, label: &KeyLabel) -> Result<SetAside, Error> {
        let path = self.path(label);
        let aside = path.with_extension("json.deleting");
        fs::rename(&path, &aside).map_err(|source| Error::Io {
            action: "removing key record",
            path: path.clone(),
            source,
        })?;
        Ok(SetAside { path, aside })
    }
}

/// A record moved aside by [`RecordStore::set_aside`].
#[must_use = "a record set aside is either restored or removed"]
pub struct SetAside {
    path: PathBuf,
    aside: PathBuf,
}

impl SetAside {
    /// Puts the record back where it was.
    pub fn restore(self) {
        if let Err(io) = fs::rename(&self.aside, &self.path) {
            tracing::error!(error = %io, path = %self.path.display(), "could not restore the key record");
        }
    }

    /// Removes the record for good.
    pub fn remove(self) -> Result<(), Error> {
        fs::remove_file(&self.aside).map_err(|source| Error::Io {
            action: "removing key record",
            path: self.aside,
            source,
        })
    }
}

/// How many records sit in `dir`, without opening it as a store (0 when it cannot be read):
/// the software backend without a passphrase reports the key files it leaves unloaded.
pub fn count_in(dir: &Path) -> usize {
    json_files(dir).map_or(0, |paths| paths.len())
}

/// The `*.json` files in `dir`, sorted by name. Temporary (`.json.tmp`) and set-aside
/// (`.json.deleting`) files are not among them.
fn json_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let entries = fs::read_dir(dir).map_err(|source| Error::Io {
        action: "reading the key record directory",
        path: dir.to_owned(),
        source,
    })?;
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use serde::Deserialize;

    use super::*;

    #[derive(Serialize, Deserialize)]
    struct Note {
        label: KeyLabel,
        text: String,
    }

    impl Record for Note {
        fn label(&self) -> &KeyLabel {
            &self.label
        }
    }

    fn note(label: &str) -> Note {
        Note {
            label: KeyLabel::new(label).unwrap(),
            text: "hi".into(),
        }
    }

    #[test]
    fn records_are_new_private_files_named_by_their_label() {
        let tmp = tempfile::tempdir().unwrap();
        let store = RecordStore::open(tmp.path().join("records")).unwrap();
        let a = note("a");
        store.write_new(&a).unwrap();
        let mode = fs::metadata(store.path(&a.label))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(store.write_new(&a), Err(Error::KeyExists { .. })));
        assert!(matches!(
            store.check_free(&a.label),
            Err(Error::KeyExists { .. })
        ));
        let read: Note = store.load(&a.label).unwrap();
        assert_eq!(read.text, "hi");

        // A record copied under another name is refused.
        fs::copy(store.path(&a.label), store.dir().join("b.json")).unwrap();
        let paths = store.list().unwrap();
        assert_eq!(paths.len(), 2);
        assert!(matches!(
            store.read::<Note>(&paths[1]),
            Err(Error::CorruptStore { .. })
        ));
        assert_eq!(count_in(store.dir()), 2);

        let aside = store.set_aside(&a.label).unwrap();
        assert_eq!(store.list().unwrap().len(), 1);
        aside.restore();
        assert_eq!(store.list().unwrap().len(), 2);
        store.set_aside(&a.label).unwrap().remove().unwrap();
        store.remove(&KeyLabel::new("b").unwrap()).unwrap();
        assert!(store.list().unwrap().is_empty());
        assert!(matches!(
            store.load::<Note>(&a.label),
            Err(Error::KeyNotFound { .. })
        ));
    }
}
