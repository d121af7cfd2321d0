//! Where the proxy listens, and who may connect: a Unix socket (0600, in a 0700 directory by
//! default) whose peer's uid comes from `SO_PEERCRED`, or loopback TCP, where on Linux the uid
//! owning the connecting socket is read from `/proc/net/tcp` and `/proc/net/tcp6`. Either way
//! only our own user, or root (who could read our memory anyway, as the agent also allows),
//! is served; anyone else's connection is closed with one log line.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result, bail};

/// `--listen`: `unix:PATH`, or a loopback `IP:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ListenAddr {
    /// A Unix socket at this path.
    Unix(PathBuf),
    /// A loopback TCP address.
    Tcp(SocketAddr),
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<ListenAddr, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a path".into());
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        let addr = SocketAddr::from_str(s)
            .map_err(|_| format!("{s:?} is neither unix:PATH nor IP:PORT"))?;
        if !addr.ip().is_loopback() {
            return Err(format!(
                "{s}: the proxy listens on loopback only (127.0.0.1 or [::1]): anyone who can \
                 reach it could use your token"
            ));
        }
        Ok(ListenAddr::Tcp(addr))
    }
}

/// The default socket: `$XDG_RUNTIME_DIR/dpop-agent/proxy.sock`, beside the agent's.
pub(crate) fn default_socket() -> Result<PathBuf> {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => Ok(PathBuf::from(dir).join("dpop-agent").join("proxy.sock")),
        None => bail!(
            "XDG_RUNTIME_DIR is not set, so there is no default socket: give --listen \
             unix:PATH (in a directory only you can reach)"
        ),
    }
}

/// A bound listener (std, non-blocking: bound before the runtime starts, while this
/// process has one thread, because binding sets the umask).
pub(crate) enum Bound {
    /// A Unix socket, and its path (removed at shutdown).
    Unix(std::os::unix::net::UnixListener, PathBuf),
    /// Loopback TCP.
    Tcp(std::net::TcpListener),
}

/// Binds `addr`; `private_dir` creates (0700) or checks the socket's directory, as for the
/// default socket.
pub(crate) fn bind(addr: &ListenAddr, private_dir: bool) -> Result<Bound> {
    match addr {
        ListenAddr::Unix(path) => bind_unix(path, private_dir),
        ListenAddr::Tcp(addr) => {
            if !cfg!(target_os = "linux") {
                bail!(
                    "--listen {addr}: loopback TCP needs Linux, where the proxy can tell which \
                     user owns each connection; use the Unix socket (the default) here"
                );
            }
            let listener =
                std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
            listener.set_nonblocking(true)?;
            Ok(Bound::Tcp(listener))
        }
    }
}

fn bind_unix(path: &Path, private_dir: bool) -> Result<Bound> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if private_dir {
        dpop_protocol::socket_dir::prepare_private_dir(parent)?;
    } else if !parent.is_dir() {
        bail!("socket directory {} does not exist", parent.display());
    }
    if let Ok(meta) = fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!(
                "{} exists and is not a socket; not touching it",
                path.display()
            );
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("something is already listening on {}", path.display());
        }
        fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    // SAFETY: umask changes this process's file creation mask only; it is restored at once,
    // and no other thread exists yet (the runtime starts after binding).
    let old = unsafe { libc::umask(0o177) };
    let bound = std::os::unix::net::UnixListener::bind(path);
    unsafe { libc::umask(old) };
    let listener = bound.with_context(|| format!("binding socket {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting socket mode on {}", path.display()))?;
    listener.set_nonblocking(true)?;
    Ok(Bound::Unix(listener, path.to_owned()))
}

/// Our effective uid.
pub(crate) fn euid() -> u32 {
    dpop_protocol::socket_dir::euid()
}

/// Whether a peer of `uid` may use the proxy: ourselves, or root.
pub(crate) fn allowed(uid: u32) -> bool {
    uid == euid() || uid == 0
}

/// The async listener.
pub(crate) enum Listener {
    /// A Unix socket, and its path.
    Unix(tokio::net::UnixListener, PathBuf),
    /// Loopback TCP.
    Tcp(tokio::net::TcpListener),
}

/// An accepted connection that may be served.
pub(crate) enum Conn {
    /// Over the Unix socket.
    Unix(tokio::net::UnixStream),
    /// Over loopback TCP.
    Tcp(tokio::net::TcpStream),
}

impl Listener {
    /// The async side of `bound` (inside the runtime).
    pub(crate) fn new(bound: Bound) -> Result<Listener> {
        Ok(match bound {
            Bound::Unix(l, path) => Listener::Unix(tokio::net::UnixListener::from_std(l)?, path),
            Bound::Tcp(l) => Listener::Tcp(tokio::net::TcpListener::from_std(l)?),
        })
    }

    /// What to print: `unix:PATH` or `IP:PORT`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Listener::Unix(_, path) => format!("unix:{}", path.display()),
            Listener::Tcp(l) => l
                .local_addr()
                .map_or_else(|e| format!("tcp ({e})"), |a| a.to_string()),
        }
    }

    /// The next connection: `Ok(None)` when it was refused (another user's; logged).
    pub(crate) async fn accept(&self) -> std::io::Result<Option<Conn>> {
        match self {
            Listener::Unix(l, _) => {
                let (stream, _) = l.accept().await?;
                match stream.peer_cred() {
                    Ok(cred) if allowed(cred.uid()) => Ok(Some(Conn::Unix(stream))),
                    Ok(cred) => {
                        refused(&format!("uid {} (pid {:?})", cred.uid(), cred.pid()));
                        Ok(None)
                    }
                    Err(e) => {
                        refused(&format!("an unknown peer ({e})"));
                        Ok(None)
                    }
                }
            }
            Listener::Tcp(l) => {
                let (stream, peer) = l.accept().await?;
                let local = stream.local_addr()?;
                // A blocking read of /proc, once per connection (not per request).
                match tcp_peer_uid(local, peer) {
                    Ok(Some(uid)) if allowed(uid) => {
                        // Small responses must not wait for the peer's delayed ACK.
                        stream.set_nodelay(true)?;
                        Ok(Some(Conn::Tcp(stream)))
                    }
                    Ok(Some(uid)) => {
                        refused(&format!("uid {uid} ({peer})"));
                        Ok(None)
                    }
                    Ok(None) => {
                        refused(&format!("{peer}, whose socket is not in /proc/net/tcp*"));
                        Ok(None)
                    }
                    Err(e) => {
                        refused(&format!("{peer} ({e})"));
                        Ok(None)
                    }
                }
            }
        }
    }
}

/// Closing the listener removes its socket file.
impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = fs::remove_file(path);
        }
    }
}

fn refused(who: &str) {
    log!("dpop proxy: refused a connection from {who}: not this user");
}

/// The uid owning the socket at `peer` connected to our `local`, from the kernel's TCP
/// tables. The peer's socket is the entry whose local address is `peer` and whose remote
/// address is `local`.
fn tcp_peer_uid(local: SocketAddr, peer: SocketAddr) -> std::io::Result<Option<u32>> {
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = match fs::read_to_string(table) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if let Some(uid) = find_uid(&text, local, peer) {
            return Ok(Some(uid));
        }
    }
    Ok(None)
}

/// [`tcp_peer_uid`] over the text of one table.
fn find_uid(table: &str, local: SocketAddr, peer: SocketAddr) -> Option<u32> {
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (local, peer) = (canonical(local), canonical(peer));
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (own, remote, uid) = (fields.get(1)?, fields.get(2)?, fields.get(7)?);
        (parse_addr(own)? == peer && parse_addr(remote)? == local)
            .then(|| uid.parse().ok())
            .flatten()
    })
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): the address as the kernel
/// prints it, 32-bit words in host byte order, and the port in hex.
fn parse_addr(field: &str) -> Option<SocketAddr> {
    let (addr, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    let ip: std::net::IpAddr = match addr.len() {
        8 => std::net::Ipv4Addr::from(word(0)?).into(),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            std::net::Ipv6Addr::from(bytes).into()
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip.to_canonical(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            "unix:/run/p.sock".parse(),
            Ok(ListenAddr::Unix("/run/p.sock".into()))
        );
        assert_eq!(
            "127.0.0.1:8080".parse(),
            Ok(ListenAddr::Tcp("127.0.0.1:8080".parse().unwrap()))
        );
        assert!("[::1]:0".parse::<ListenAddr>().is_ok());
        assert!("0.0.0.0:8080".parse::<ListenAddr>().is_err());
        assert!("192.168.1.2:8080".parse::<ListenAddr>().is_err());
        assert!("localhost:8080".parse::<ListenAddr>().is_err());
        assert!("unix:".parse::<ListenAddr>().is_err());
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn kernel_table_lines() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            \x20  0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n\
            \x20  1: 0100007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 2 1 0 20 4 30 10 -1\n";
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let peer: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        assert_eq!(find_uid(table, local, peer), Some(1000));
        assert_eq!(
            find_uid(table, local, "127.0.0.1:50001".parse().unwrap()),
            None
        );
        // ::1 and a v4-mapped address, as tcp6 prints them.
        assert_eq!(
            parse_addr("00000000000000000000000001000000:1F90"),
            Some("[::1]:8080".parse().unwrap())
        );
        assert_eq!(
            parse_addr("0000000000000000FFFF00000100007F:1F90"),
            Some("127.0.0.1:8080".parse().unwrap())
        );
    }

    /// The real tables: a connection of ours is found, with our uid.
    #[cfg(target_os = "linux")]
    #[test]
    fn own_loopback_connection_is_ours() {
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(listener) = std::net::TcpListener::bind(addr) else {
                assert!(addr.starts_with('['), "IPv4 loopback must bind");
                continue;
            };
            let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server, peer) = listener.accept().unwrap();
            assert_eq!(peer, client.local_addr().unwrap());
            assert_eq!(
                tcp_peer_uid(server.local_addr().unwrap(), peer).unwrap(),
                Some(euid())
            );
        }
    }
}
