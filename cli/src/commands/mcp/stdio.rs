//! The stdio side of `dpop mcp`: newline-delimited JSON-RPC read from standard input and
//! written to standard output, each on a thread of its own.
//!
//! Threads rather than tokio's stdin/stdout: tokio reads stdin on its blocking pool, and a
//! runtime being dropped waits for that read, so a bridge whose server ended the session
//! would hang until the client closed stdin. A plain thread blocked in `read` does not keep
//! the process alive once `main` returns.

use std::io::{BufRead, Write};

use tokio::sync::mpsc;

/// Reads standard input line by line on a thread, sending each non-empty line without its
/// line ending; the channel closes at end of input (or on a read error, reported on stderr).
pub(crate) fn read_lines() -> mpsc::UnboundedReceiver<Vec<u8>> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        loop {
            let mut line = Vec::new();
            match stdin.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {
                    let line = trim_line_end(line);
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    if tx.send(line).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    eprintln!("dpop mcp: reading standard input: {e}");
                    break;
                }
            }
        }
    });
    rx
}

/// `line` without its final LF or CRLF.
fn trim_line_end(mut line: Vec<u8>) -> Vec<u8> {
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    line
}

/// The writer of standard output: one thread that writes each message as one whole line, so
/// that messages from concurrent answers never interleave.
pub(crate) struct Output {
    tx: mpsc::UnboundedSender<Line>,
    thread: std::thread::JoinHandle<()>,
}

/// What the writer thread is sent.
pub(crate) enum Line {
    /// A message, without its line ending.
    Message(Vec<u8>),
    /// Stop after what came before (tasks that still hold a sender may never drop it).
    End,
}

impl Output {
    /// Starts the writer thread. `on_closed` is called when standard output is gone (the
    /// client went away); lines are dropped after that.
    pub(crate) fn start(on_closed: impl FnOnce() + Send + 'static) -> Output {
        let (tx, mut rx) = mpsc::unbounded_channel::<Line>();
        let thread = std::thread::spawn(move || {
            let stdout = std::io::stdout();
            while let Some(Line::Message(mut line)) = rx.blocking_recv() {
                line.push(b'\n');
                let mut out = stdout.lock();
                if let Err(e) = out.write_all(&line).and_then(|()| out.flush()) {
                    if e.kind() != std::io::ErrorKind::BrokenPipe {
                        eprintln!("dpop mcp: writing standard output: {e}");
                    }
                    on_closed();
                    break;
                }
            }
        });
        Output { tx, thread }
    }

    /// A handle that queues lines for the writer.
    pub(crate) fn sender(&self) -> mpsc::UnboundedSender<Line> {
        self.tx.clone()
    }

    /// Waits until every line queued so far is written.
    pub(crate) fn finish(self) {
        let _ = self.tx.send(Line::End);
        let _ = self.thread.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_endings_are_trimmed_once() {
        assert_eq!(trim_line_end(b"{}\n".to_vec()), b"{}");
        assert_eq!(trim_line_end(b"{}\r\n".to_vec()), b"{}");
        assert_eq!(trim_line_end(b"{}".to_vec()), b"{}");
        assert_eq!(trim_line_end(b"{} \n".to_vec()), b"{} ");
    }
}
