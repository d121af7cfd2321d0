//! Framing: JSON Lines in, JSON Lines out. Reads are capped at 64 KiB a line; replies are
//! buffered and flushed once no further request is already waiting, so a pipelining client
//! gets its replies in few writes, or once [`MAX_QUEUED_OUTPUT`] bytes are queued: a client
//! that pipelines and never reads then stalls in the flush, and no further request of it is
//! read until it reads (backpressure instead of a reply queue that grows without bound).
//!
//! On Unix, while the agent has no more clients than cores, a connection that just answered
//! polls its socket briefly for the next request before it sleeps: waking a sleeping thread
//! costs more than a software-key proof on virtual machines. The poll reads with
//! `recv(MSG_DONTWAIT)` itself, because tokio only tries the socket again after epoll reports
//! it. (A named pipe on Windows is not polled.)

use std::io;
use std::time::Duration;

use dpop_protocol::MAX_LINE;
use tokio::io::AsyncWriteExt;

use crate::transport::Stream;

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
    stream: Stream,
    /// Received bytes; `buf[start..]` is not consumed yet.
    buf: Vec<u8>,
    start: usize,
    /// Set while skipping the rest of an over-long line.
    discarding: bool,
    out: Vec<u8>,
}

const READ_CHUNK: usize = 16 * 1024;

/// Replies queued for one connection beyond this many bytes are sent before the next request
/// is read. A `list_keys` reply with hundreds of keys is about 100 KB; one 16 KiB read of
/// pipelined `list_keys` requests used to queue some 600 of those unsent (issue 12, finding 6).
pub const MAX_QUEUED_OUTPUT: usize = 256 * 1024;

impl Connection {
    pub fn new(stream: Stream) -> Connection {
        Connection {
            stream,
            buf: Vec::with_capacity(READ_CHUNK),
            start: 0,
            discarding: false,
            out: Vec::with_capacity(4096),
        }
    }

    /// Reads the next non-empty line, polling for up to `spin` before sleeping.
    pub async fn read_frame(&mut self, spin: Duration) -> io::Result<Frame<'_>> {
        let mut scanned = self.start;
        loop {
            if let Some(i) = self.buf[scanned..].iter().position(|&b| b == b'\n') {
                let end = scanned + i;
                let line_start = self.start;
                self.start = end + 1;
                scanned = self.start;
                if std::mem::take(&mut self.discarding) || end + 1 - line_start > MAX_LINE {
                    return Ok(Frame::TooLong);
                }
                let mut line = &self.buf[line_start..end];
                if let [rest @ .., b'\r'] = line {
                    line = rest;
                }
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let (line_start, len) = (line_start, line.len());
                return Ok(Frame::Line(&self.buf[line_start..line_start + len]));
            }
            // No complete line: drop what is consumed (wiped: an import carries a private
            // key), enforce the cap, read more.
            zeroize::Zeroize::zeroize(&mut self.buf[..self.start]);
            self.buf.drain(..self.start);
            self.start = 0;
            if self.buf.len() >= MAX_LINE {
                self.discarding = true;
                zeroize::Zeroize::zeroize(&mut self.buf);
            }
            scanned = self.buf.len();
            if self.read_more(spin).await? == 0 {
                let rest = std::mem::take(&mut self.buf);
                if self.discarding {
                    self.discarding = false;
                    return Ok(Frame::TooLong);
                }
                // A last line without its newline still counts.
                if rest.iter().all(u8::is_ascii_whitespace) {
                    return Ok(Frame::Eof);
                }
                self.buf = rest;
                self.buf.push(b'\n');
            }
        }
    }

    async fn read_more(&mut self, spin: Duration) -> io::Result<usize> {
        self.buf.reserve(READ_CHUNK);
        if !spin.is_zero()
            && let Some(n) = self.spin_read(spin)?
        {
            return Ok(n);
        }
        loop {
            self.stream.readable().await?;
            match self.stream.try_read_buf(&mut self.buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads what arrives within `spin`, polling the socket without sleeping; `None` when
    /// nothing came.
    #[cfg(unix)]
    fn spin_read(&mut self, spin: Duration) -> io::Result<Option<usize>> {
        use std::os::fd::AsRawFd;
        let deadline = std::time::Instant::now() + spin;
        loop {
            let spare = self.buf.spare_capacity_mut();
            // SAFETY: recv writes at most spare.len() bytes into the spare capacity.
            let n = unsafe {
                libc::recv(
                    self.stream.as_raw_fd(),
                    spare.as_mut_ptr().cast(),
                    spare.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                let n = n as usize;
                // SAFETY: recv initialised the first n spare bytes.
                unsafe { self.buf.set_len(self.buf.len() + n) };
                return Ok(Some(n));
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::WouldBlock {
                return Err(err);
            }
            if std::time::Instant::now() >= deadline {
                return Ok(None);
            }
            // Spin in place: yielding to the runtime here makes it wake an idle worker
            // every time, which costs more than the short wait (at most one core's worth
            // of connections spin at once).
            std::hint::spin_loop();
        }
    }

    /// Named pipes are not polled: nothing to read yet.
    #[cfg(windows)]
    fn spin_read(&mut self, _spin: Duration) -> io::Result<Option<usize>> {
        Ok(None)
    }

    /// Queues a reply line; sends the queue unless another request is already waiting and
    /// the queue is under [`MAX_QUEUED_OUTPUT`]. Sending waits for the client to read.
    pub async fn write(&mut self, reply: &[u8]) -> io::Result<()> {
        self.out.extend_from_slice(reply);
        if self.out.len() >= MAX_QUEUED_OUTPUT || !self.buf[self.start..].contains(&b'\n') {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends everything queued.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
            // One huge reply should not pin its buffer for the connection's lifetime.
            if self.out.capacity() > MAX_QUEUED_OUTPUT {
                self.out.shrink_to(4096);
            }
        }
        Ok(())
    }

    /// Flushes, shuts down the write side and discards input until the client closes (or
    /// `limit` passes), so the client reads what we sent before the connection goes.
    pub async fn refuse_and_drain(&mut self, limit: Duration) {
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
        let drain = async {
            let mut sink = [0u8; 4096];
            loop {
                if self.stream.readable().await.is_err() {
                    break;
                }
                match self.stream.try_read(&mut sink) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => break,
                }
            }
        };
        let _ = tokio::time::timeout(limit, drain).await;
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.buf);
    }
}
