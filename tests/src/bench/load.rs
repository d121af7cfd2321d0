//! A closed-loop HTTP/1.1 load generator for the `server_load` bench, and what it reads of
//! the processes it loads: CPU time and memory from `/proc`, and CPU pinning.
//!
//! Each client is one keep-alive connection that sends its requests one after another, each
//! as bytes built before the clock starts, and reads each answer just far enough to know its
//! status and length: the generator's own CPU per request stays small next to the server's.
//! All clients run as tasks of one current-thread tokio runtime on the calling thread, so
//! pinning that thread ([`pin_to_cpu`](crate::bench::load::pin_to_cpu)) pins the whole
//! generator to one core.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Run;

/// One keep-alive HTTP/1.1 connection of the generator.
pub struct Client {
    stream: TcpStream,
    /// Bytes read past the end of the previous answer (none with a well-behaved server).
    buf: Vec<u8>,
}

/// An answer: status, headers (names in lower case) and body.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` to `host` with these extra header lines (`Name: value`), as bytes.
pub fn get_request(host: &str, path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.into_bytes()
}

impl Client {
    /// Opens a connection (with `TCP_NODELAY`, as the servers set too).
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        stream.set_nodelay(true).expect("TCP_NODELAY");
        Client {
            stream,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Sends `request` and reads the whole answer.
    pub async fn send(&mut self, request: &[u8]) -> Reply {
        self.stream.write_all(request).await.expect("sending");
        let (head_len, body_len) = self.read_answer().await;
        let head = String::from_utf8_lossy(&self.buf[..head_len]).into_owned();
        let body = self.buf[head_len..head_len + body_len].to_vec();
        self.buf.drain(..head_len + body_len);
        let mut lines = head.split("\r\n");
        let status = status_of(lines.next().unwrap_or_default().as_bytes());
        let headers = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Reply {
            status,
            headers,
            body,
        }
    }

    /// Sends `request` and reads the answer, which must be `200 OK` (panics with it
    /// otherwise: a bench that times refusals measures nothing).
    async fn send_expecting_ok(&mut self, request: &[u8]) {
        self.stream.write_all(request).await.expect("sending");
        let (head_len, body_len) = self.read_answer().await;
        if status_of(&self.buf) != 200 {
            panic!(
                "the server refused a request of the load: {}",
                String::from_utf8_lossy(&self.buf[..head_len + body_len])
            );
        }
        self.buf.drain(..head_len + body_len);
    }

    /// Reads until `buf` holds one whole answer: the length of its head (with the blank
    /// line) and of its body (`Content-Length`; the servers here never send chunked bodies).
    async fn read_answer(&mut self) -> (usize, usize) {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head_len = end + 4;
                let body_len = content_length(&self.buf[..head_len]);
                while self.buf.len() < head_len + body_len {
                    self.fill().await;
                }
                return (head_len, body_len);
            }
            self.fill().await;
        }
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await.expect("reading");
        assert!(n > 0, "the server closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }
}

/// The status code of `HTTP/1.1 NNN ...`.
fn status_of(head: &[u8]) -> u16 {
    head.get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {}", String::from_utf8_lossy(head)))
}

fn content_length(head: &[u8]) -> usize {
    let head = String::from_utf8_lossy(head);
    head.split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .map(|(_, value)| value.trim().parse().expect("Content-Length is a number"))
        .unwrap_or_else(|| panic!("an answer without Content-Length: {head}"))
}

/// The generator: a current-thread tokio runtime on the calling thread.
pub struct Generator {
    runtime: tokio::runtime::Runtime,
}

impl Default for Generator {
    fn default() -> Self {
        Generator::new()
    }
}

impl Generator {
    /// A generator on the calling thread.
    pub fn new() -> Generator {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("generator runtime");
        Generator { runtime }
    }

    /// Runs `future` on the generator's thread.
    pub fn block_on<T>(&self, future: impl Future<Output = T>) -> T {
        self.runtime.block_on(future)
    }

    /// `n` connections to `addr`.
    pub fn connect(&self, addr: SocketAddr, n: usize) -> Vec<Client> {
        self.block_on(async {
            let mut clients = Vec::with_capacity(n);
            for _ in 0..n {
                clients.push(Client::connect(addr).await);
            }
            clients
        })
    }

    /// Sends `requests[i]` on `clients[i]`, all at once, and times each answer (which must
    /// be `200 OK`). The clients come back open, so that the server's memory can be read
    /// while it still holds their connections.
    pub fn run(
        &self,
        name: String,
        clients: Vec<Client>,
        requests: Vec<Vec<Vec<u8>>>,
    ) -> (Run, Vec<Client>) {
        assert_eq!(clients.len(), requests.len(), "one batch per client");
        self.block_on(async {
            let start = Instant::now();
            let tasks: Vec<_> = clients
                .into_iter()
                .zip(requests)
                .map(|(mut client, batch)| {
                    tokio::spawn(async move {
                        let mut samples = Vec::with_capacity(batch.len());
                        for request in &batch {
                            let t = Instant::now();
                            client.send_expecting_ok(request).await;
                            samples.push(t.elapsed());
                        }
                        (client, samples)
                    })
                })
                .collect();
            let mut samples = Vec::new();
            let mut clients = Vec::new();
            for task in tasks {
                let (client, s) = task.await.expect("client task");
                samples.extend(s);
                clients.push(client);
            }
            let run = Run {
                name,
                wall: start.elapsed(),
                samples,
            };
            (run, clients)
        })
    }
}

/// Pins the calling thread to CPU `cpu`; processes it starts afterwards inherit the pin (and
/// a tokio runtime in them then sizes itself for one core). Panics when the machine has no
/// such CPU.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it; the call
    // only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            rc,
            0,
            "pinning to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The CPUs this process may run on (its affinity mask, which a container's cpuset limits),
/// in order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the call fills it; CPU_ISSET reads
    // within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let rc = libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
        assert_eq!(
            rc,
            0,
            "reading the CPU affinity: {}",
            std::io::Error::last_os_error()
        );
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// User plus system CPU time process `pid` has used so far (all its threads), from
/// `/proc/PID/stat` (fields 14 and 15, in clock ticks: 10 ms resolution at the usual 100 Hz).
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/stat: {e}"));
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = &stat[stat.rfind(')').expect("a stat line") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

/// A process's resident memory now and at its peak.
#[derive(Clone, Copy, Debug)]
pub struct Memory {
    /// `VmRSS`, in bytes.
    pub rss: u64,
    /// `VmHWM` (the highest RSS so far), in bytes.
    pub hwm: u64,
}

impl Memory {
    /// `VmRSS` and `VmHWM` of process `pid`, from `/proc/PID/status`.
    pub fn of(pid: u32) -> Memory {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
        let kib = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or_else(|| panic!("/proc/{pid}/status has no {name}"))
        };
        Memory {
            rss: kib("VmRSS:") * 1024,
            hwm: kib("VmHWM:") * 1024,
        }
    }

    /// `VmRSS` and `VmHWM` of this process.
    pub fn of_self() -> Memory {
        Memory::of(std::process::id())
    }
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        write!(
            f,
            "VmRSS {:.1} MiB, VmHWM {:.1} MiB",
            mib(self.rss),
            mib(self.hwm)
        )
    }
}

/// A server process under load: started from a prepared command, ready once it prints
/// `listening on ADDR` on standard output (as `dpop-resource-server` and `dpop-test-bearer`
/// do); its standard error goes to a log file; killed on drop. Unlike
/// [`ResourceServer`](crate::ResourceServer) it tells its process id, which the bench needs
/// for the CPU and memory it reads from `/proc`.
pub struct ServerProcess {
    child: std::process::Child,
    _guard: crate::KillOnDrop,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl ServerProcess {
    /// Starts `command` and waits until it listens; panics with its log when it exits first
    /// or does not listen within [`PROCESS_TIMEOUT`](crate::PROCESS_TIMEOUT).
    pub fn start(mut command: std::process::Command) -> ServerProcess {
        use std::io::BufRead;
        use std::process::Stdio;
        let dir = crate::new_temp_dir();
        let log = std::fs::File::create(dir.path().join("server.log")).expect("log file");
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
        let guard = crate::KillOnDrop(child.id());
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(crate::PROCESS_TIMEOUT).unwrap_or_default();
        let log = || std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
        let Some(addr) = line
            .strip_prefix("listening on ")
            .and_then(|a| a.trim().parse().ok())
        else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} did not start; its log:\n{}", log());
        };
        ServerProcess {
            child,
            _guard: guard,
            addr,
            dir,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What it logged on standard error.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long process `pid`'s threads have waited, runnable, for a CPU so far: the second field
/// of each `/proc/PID/task/TID/schedstat`, summed. On a busy machine, time a process spent
/// waiting for its core rather than working or sleeping.
pub fn run_queue_wait(pid: u32) -> Duration {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/task: {e}"));
    let mut nanos = 0u64;
    for task in tasks.flatten() {
        // A thread that exits between the listing and the read is skipped.
        if let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) {
            nanos += stat
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(nanos)
}
