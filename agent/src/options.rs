//! How a setting is declared once. Each concern (the agent in general, each backend) has one
//! options struct that derives both `clap::Args` (its flags) and `Deserialize` (its keys in the
//! TOML file: the long flag with `_` for `-`). The struct is read from the file's top-level
//! keys with [`read_group`], and the command line is laid over it with [`Over`], written once
//! per struct as a struct literal (a new field the merge forgets does not compile).
//!
//! The groups share the file's top level (today's files stay valid), so no group refuses keys
//! it does not know; [`check_keys`] refuses a key that no group reads, with its line.
//! Every path setting is a [`ConfigPath`], which expands `~/` when read from the file.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// A path setting. From the file, a leading `~` or `~/` is `$HOME` (the shell does it for
/// flags, nobody does it for a TOML file) and `~user` is refused rather than taken as a
/// directory named `~user`; from a flag, the path as given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigPath(PathBuf);

impl ConfigPath {
    /// The path.
    pub fn into_path_buf(self) -> PathBuf {
        self.0
    }
}

impl std::ops::Deref for ConfigPath {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

/// A flag's value (clap's value parser for this type).
impl From<OsString> for ConfigPath {
    fn from(path: OsString) -> ConfigPath {
        ConfigPath(path.into())
    }
}

impl<'de> Deserialize<'de> for ConfigPath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ConfigPath, D::Error> {
        let path = PathBuf::deserialize(deserializer)?;
        expand_home(&path)
            .map(ConfigPath)
            .map_err(de::Error::custom)
    }
}

/// `~` or `~/rest` with the home directory; other paths as they are.
fn expand_home(path: &Path) -> Result<PathBuf, String> {
    let Ok(rest) = path.strip_prefix("~") else {
        if path.to_string_lossy().starts_with('~') {
            return Err(format!(
                "{}: only ~ and ~/ are expanded (to $HOME), not ~user",
                path.display()
            ));
        }
        return Ok(path.to_owned());
    };
    let home = home().ok_or("a path starts with ~ but HOME is not set")?;
    Ok(home.join(rest))
}

/// An environment variable that holds a path, when set and not empty.
pub fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The home directory: `$HOME` (on Windows, else `%USERPROFILE%`).
pub fn home() -> Option<PathBuf> {
    let home = env_path("HOME");
    #[cfg(windows)]
    let home = home.or_else(|| env_path("USERPROFILE"));
    home
}

/// A flag's value laid over the file's: a flag given wins, a switch set on either side is on.
pub trait Over {
    /// `self` (from the command line) over `file`.
    fn over(self, file: Self) -> Self;
}

impl<T> Over for Option<T> {
    fn over(self, file: Self) -> Self {
        self.or(file)
    }
}

impl Over for bool {
    fn over(self, file: Self) -> Self {
        self || file
    }
}

/// File-only lists (`[[pkcs11_adopt]]`): flags never fill them.
impl<T> Over for Vec<T> {
    fn over(self, file: Self) -> Self {
        if self.is_empty() { file } else { self }
    }
}

/// Reads one group of settings from the file's top-level keys and adds the keys it reads to
/// `known`. Errors (a wrong type, a `~user` path) name their line.
pub fn read_group<T: DeserializeOwned>(
    text: &str,
    known: &mut Vec<&'static str>,
) -> Result<T, toml::de::Error> {
    known.extend_from_slice(keys_of::<T>());
    toml::from_str(text)
}

/// Refuses a top-level key that is not in `known`, naming it and its line (a typo must not
/// be ignored silently).
pub fn check_keys(text: &str, known: &[&'static str]) -> Result<(), toml::de::Error> {
    KnownKeys(known).deserialize(toml::Deserializer::parse(text)?)
}

/// The keys a settings struct reads: the field names that serde's derive hands to
/// `deserialize_struct`, caught by a deserializer that reads nothing else.
pub fn keys_of<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut keys: &'static [&'static str] = &[];
    let _ = T::deserialize(KeysProbe(&mut keys));
    keys
}

struct KeysProbe<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for KeysProbe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("only a struct's keys are read"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("keys read"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// A document whose keys must all be in the list.
struct KnownKeys<'a>(&'a [&'static str]);

impl<'de> DeserializeSeed<'de> for KnownKeys<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for KnownKeys<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a table of settings")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // The key is checked while the deserializer reads it, so the error has its line.
        while map.next_key_seed(KnownKey(self.0))?.is_some() {
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

struct KnownKey<'a>(&'a [&'static str]);

impl<'de> DeserializeSeed<'de> for KnownKey<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_identifier(self)
    }
}

impl<'de> Visitor<'de> for KnownKey<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a setting's name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<(), E> {
        if self.0.contains(&key) {
            return Ok(());
        }
        // serde's own words for an unknown field (its `unknown_field` wants a static list).
        let expected: Vec<String> = self.0.iter().map(|k| format!("`{k}`")).collect();
        Err(E::custom(format_args!(
            "unknown field `{key}`, expected one of {}",
            expected.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug, Default)]
    #[serde(default)]
    struct Group {
        path: Option<ConfigPath>,
        on: bool,
    }

    #[test]
    fn home_is_expanded_in_paths() {
        let home = home().expect("HOME is set in tests");
        assert_eq!(expand_home(Path::new("~/keys")).unwrap(), home.join("keys"));
        assert_eq!(expand_home(Path::new("~")).unwrap(), home);
        assert_eq!(
            expand_home(Path::new("/etc/~x")).unwrap(),
            PathBuf::from("/etc/~x")
        );
        let err = expand_home(Path::new("~root/keys")).unwrap_err();
        assert!(err.contains("~user"), "{err}");
        let err = toml::from_str::<Group>("on = true\npath = \"~root/x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && err.contains("~user"), "{err}");
    }

    #[test]
    fn keys_come_from_the_struct_and_others_are_refused_by_line() {
        assert_eq!(keys_of::<Group>(), ["path", "on"]);
        let mut known = Vec::new();
        let group: Group = read_group("on = true\nother = 1\n", &mut known).unwrap();
        assert!(group.on);
        check_keys("on = true\npath = \"/p\"\n", &known).unwrap();
        let err = check_keys("on = true\n\nother = 1\n", &known)
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3") && err.contains("other"), "{err}");
    }

    #[test]
    fn flags_win_over_the_file() {
        assert_eq!(Some(1).over(Some(2)), Some(1));
        assert_eq!(None.over(Some(2)), Some(2));
        assert!(false.over(true) && true.over(false) && !false.over(false));
        assert_eq!(Vec::<u8>::new().over(vec![1]), [1]);
    }
}
