//! Text from someone else (a server's error, a program path, a key label) made safe for a
//! terminal, a log line or an askpass question.

use std::borrow::Cow;

/// `text` with every control character (C0, DEL and C1: escape sequences, a CR LF that would
/// forge a line, a bell) written as a Rust escape (`\u{1b}`, `\n`), everything else as is, so
/// the text is still there to read but cannot make the output say something else.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("/usr/bin/ok"), "/usr/bin/ok");
        assert_eq!(
            printable("/tmp/x\nAllow /usr/bin/ssh\u{1b}[2K"),
            "/tmp/x\\nAllow /usr/bin/ssh\\u{1b}[2K"
        );
        assert_eq!(printable("caf\u{e9}\t"), "caf\u{e9}\\t");
    }
}
