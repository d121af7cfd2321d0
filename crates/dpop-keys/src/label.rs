use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::Error;

/// A key's name: 1 to 64 characters from `A-Z a-z 0-9 . _ -`, not starting with `.` or `-`.
/// Safe as a file name, a PKCS#11 `CKA_LABEL` and a command-line argument.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct KeyLabel(String);

impl KeyLabel {
    /// Validates a label.
    pub fn new(label: &str) -> Result<KeyLabel, Error> {
        let bad = |reason| Error::InvalidLabel {
            label: label.chars().take(80).collect(),
            reason,
        };
        if label.is_empty() {
            return Err(bad("empty"));
        }
        if label.len() > 64 {
            return Err(bad("longer than 64 characters"));
        }
        if label.starts_with(['.', '-']) {
            return Err(bad("starts with '.' or '-'"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(bad("only letters, digits, '.', '_' and '-' are allowed"));
        }
        Ok(KeyLabel(label.to_owned()))
    }

    /// The label.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl<'de> Deserialize<'de> for KeyLabel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        KeyLabel::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        for ok in ["a", "my-key", "prod.api_2", &"x".repeat(64)] {
            KeyLabel::new(ok).unwrap();
        }
        for bad in [
            "",
            ".hidden",
            "-flag",
            "a/b",
            "../x",
            "a b",
            "ключ",
            &"x".repeat(65),
        ] {
            assert!(KeyLabel::new(bad).is_err(), "{bad:?} accepted");
        }
    }
}
