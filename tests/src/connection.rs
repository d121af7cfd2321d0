//! Raw protocol connections: bytes out, reply lines in, for tests of framing and errors.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// Read timeout on raw connections, so that a missing reply fails the test instead of hanging.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A raw protocol connection: write bytes, read reply lines.
#[derive(Debug)]
pub struct RawConnection {
    reader: BufReader<UnixStream>,
}

impl RawConnection {
    /// Connects to `socket`; reads time out after [`READ_TIMEOUT`].
    pub fn connect(socket: &Path) -> RawConnection {
        let stream = UnixStream::connect(socket)
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", socket.display()));
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("setting a read timeout");
        RawConnection {
            reader: BufReader::new(stream),
        }
    }

    /// Writes `bytes` as they are, in one `write_all`.
    pub fn send(&mut self, bytes: &[u8]) {
        self.reader
            .get_mut()
            .write_all(bytes)
            .expect("writing to the agent");
    }

    /// Writes `line`, adding a newline when it has none.
    pub fn send_line(&mut self, line: &[u8]) {
        let mut bytes = line.to_vec();
        if bytes.last() != Some(&b'\n') {
            bytes.push(b'\n');
        }
        self.send(&bytes);
    }

    /// Reads one reply line (without the newline); `None` at end of stream. Panics on a read
    /// error or after [`READ_TIMEOUT`].
    pub fn read_line(&mut self) -> Option<String> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .expect("reading a reply line from the agent");
        if n == 0 {
            return None;
        }
        assert!(
            line.ends_with('\n'),
            "reply line is not newline-terminated: {line:?}"
        );
        line.pop();
        Some(line)
    }

    /// Reads one reply line and parses it as JSON; `None` at end of stream.
    pub fn read_reply(&mut self) -> Option<Value> {
        self.read_line().map(|line| {
            serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {line:?}"))
        })
    }

    /// Sends `line` and reads its reply.
    pub fn request(&mut self, line: &[u8]) -> Value {
        self.send_line(line);
        self.read_reply()
            .expect("the agent answers before closing the connection")
    }

    /// The underlying socket.
    pub fn stream(&self) -> &UnixStream {
        self.reader.get_ref()
    }
}

/// The error code of a failed reply (`"key_not_found"`, ...); panics when the reply is not a
/// failure.
pub fn error_code(reply: &Value) -> &str {
    assert_eq!(
        reply["ok"],
        Value::Bool(false),
        "expected a failed reply, got {reply}"
    );
    reply["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("failed reply without error.code: {reply}"))
}
