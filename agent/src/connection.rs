//! Framing: JSON Lines in, JSON Lines out. Reads are capped at 64 KiB a line; replies are
//! buffered and flushed once no further request is already waiting, so a pipelining client
//! gets its replies in few writes.

use std::io;

use dpop_protocol::MAX_LINE;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// What the next read produced.
pub enum Frame<'a> {
    /// One request line, without its line ending.
    Line(&'a [u8]),
    /// A line over the cap; it was discarded up to its newline.
    TooLong,
    /// The client closed the connection.
    Eof,
}

pub struct Connection {
    reader: BufReader<OwnedReadHalf>,
    writer: BufWriter<OwnedWriteHalf>,
    line: Vec<u8>,
}

impl Connection {
    pub fn new(stream: UnixStream) -> Connection {
        let (read, write) = stream.into_split();
        Connection {
            reader: BufReader::with_capacity(16 * 1024, read),
            writer: BufWriter::with_capacity(16 * 1024, write),
            line: Vec::with_capacity(1024),
        }
    }

    /// Reads the next non-empty line.
    pub async fn read_frame(&mut self) -> io::Result<Frame<'_>> {
        loop {
            self.line.clear();
            let mut too_long = false;
            let at_eof = loop {
                let buf = self.reader.fill_buf().await?;
                if buf.is_empty() {
                    break true;
                }
                let (chunk, consumed, done) = match buf.iter().position(|&b| b == b'\n') {
                    Some(i) => (&buf[..i], i + 1, true),
                    None => (buf, buf.len(), false),
                };
                if !too_long {
                    if self.line.len() + chunk.len() + usize::from(done) > MAX_LINE {
                        too_long = true;
                        self.line.clear();
                    } else {
                        self.line.extend_from_slice(chunk);
                    }
                }
                self.reader.consume(consumed);
                if done {
                    break false;
                }
            };
            if too_long {
                return Ok(Frame::TooLong);
            }
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
            if !self.line.iter().all(u8::is_ascii_whitespace) {
                return Ok(Frame::Line(&self.line));
            }
            if at_eof {
                return Ok(Frame::Eof);
            }
        }
    }

    /// Queues a reply line.
    pub async fn write(&mut self, reply: &[u8]) -> io::Result<()> {
        self.writer.write_all(reply).await?;
        if self.reader.buffer().is_empty() {
            self.writer.flush().await?;
        }
        Ok(())
    }

    /// Flushes, shuts down the write side and discards input until the client closes (or
    /// `limit` passes), so the client reads what we sent before the connection goes.
    pub async fn refuse_and_drain(&mut self, limit: std::time::Duration) {
        let _ = self.writer.flush().await;
        let _ = self.writer.shutdown().await;
        let drain = async {
            loop {
                match self.reader.fill_buf().await {
                    Ok([]) | Err(_) => break,
                    Ok(buf) => {
                        let n = buf.len();
                        self.reader.consume(n);
                    }
                }
            }
        };
        let _ = tokio::time::timeout(limit, drain).await;
    }

    /// Sends everything queued.
    pub async fn flush(&mut self) -> io::Result<()> {
        self.writer.flush().await
    }
}
