//! A real nginx (Debian's `/usr/sbin/nginx`) as a reverse proxy on a free loopback port, run
//! as the current user in one process (`master_process off`, so it never switches user) with
//! its own configuration, pid file, logs and temporary directories in a fresh temporary
//! directory; killed on drop. It serves plain http, or https with a certificate from a
//! [`TestCa`]: a private CA and a server certificate for `127.0.0.1` made with the `openssl`
//! CLI, whose CA file a client under test is given to trust.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use tempfile::TempDir;

use crate::{
    KillOnDrop, PROCESS_TIMEOUT, free_port, new_temp_dir, require_tool, run_ok, wait_until,
};

/// Debian's nginx.
pub const NGINX: &str = "/usr/sbin/nginx";

/// A running nginx that proxies every path to one upstream. Fails (panics) when nginx is not
/// installed (`apt-get install nginx`).
pub struct Nginx {
    port: u16,
    https: bool,
    dir: TempDir,
    child: Option<(Child, KillOnDrop)>,
}

impl Nginx {
    /// Starts nginx on `127.0.0.1:<free port>` with `location / { proxy_pass <upstream>;
    /// <location> }` (`upstream` as `http://127.0.0.1:8080`, `location` the directives that
    /// set the forwarding headers) and waits until it accepts connections.
    pub fn start(upstream: &str, location: &str) -> Nginx {
        Nginx::launch(upstream, location, None)
    }

    /// [`start`](Self::start), serving https with `ca`'s server certificate (for
    /// `127.0.0.1`) instead of http.
    pub fn start_https(upstream: &str, location: &str, ca: &TestCa) -> Nginx {
        Nginx::launch(upstream, location, Some(ca))
    }

    fn launch(upstream: &str, location: &str, tls: Option<&TestCa>) -> Nginx {
        require_tool(NGINX, &["-v"], "nginx");
        let dir = new_temp_dir();
        let port = free_port();
        let path = |name: &str| dir.path().join(name).display().to_string();
        let temp = path("temp");
        std::fs::create_dir(&temp).expect("nginx temp directory");
        let (ssl, certificate) = match tls {
            Some(ca) => (
                " ssl",
                format!(
                    "\x20       ssl_certificate {};\n\
                     \x20       ssl_certificate_key {};\n",
                    ca.server_cert().display(),
                    ca.server_key().display()
                ),
            ),
            None => ("", String::new()),
        };
        let conf = format!(
            "daemon off;\n\
             master_process off;\n\
             pid {pid};\n\
             error_log {error_log} info;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n\
             \x20   access_log {access_log};\n\
             \x20   client_body_temp_path {temp}/body;\n\
             \x20   proxy_temp_path {temp}/proxy;\n\
             \x20   fastcgi_temp_path {temp}/fastcgi;\n\
             \x20   uwsgi_temp_path {temp}/uwsgi;\n\
             \x20   scgi_temp_path {temp}/scgi;\n\
             \x20   server {{\n\
             \x20       listen 127.0.0.1:{port}{ssl};\n\
             {certificate}\
             \x20       location / {{\n\
             \x20           proxy_pass {upstream};\n\
             \x20           proxy_http_version 1.1;\n\
             {location}\n\
             \x20       }}\n\
             \x20   }}\n\
             }}\n",
            pid = path("nginx.pid"),
            error_log = path("error.log"),
            access_log = path("access.log"),
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("writing nginx.conf");
        let child = Command::new(NGINX)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            // Before the configuration is read, nginx would open its default error log.
            .arg("-e")
            .arg(path("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning nginx");
        let guard = KillOnDrop(child.id());
        let mut nginx = Nginx {
            port,
            https: tls.is_some(),
            dir,
            child: Some((child, guard)),
        };
        let mut exited = false;
        wait_until(
            format_args!("nginx listens on port {port}"),
            PROCESS_TIMEOUT,
            || {
                let gone = nginx.child.as_mut().map(|(child, _)| child.try_wait());
                if matches!(gone, Some(Ok(Some(_)))) {
                    exited = true;
                    return true;
                }
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            },
        );
        assert!(!exited, "nginx exited at start; its log:\n{}", nginx.log());
        nginx
    }

    /// `http://127.0.0.1:<port>` + `path` (`https://` when it serves https).
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its error log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("error.log")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some((mut child, _guard)) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A private certificate authority (EC P-256, valid two days) and a server certificate it
/// issued for `127.0.0.1` (IP subject alternative name, `serverAuth`), made with the `openssl`
/// CLI in a fresh temporary directory. The CA certificate sits alone in its own directory, so
/// that directory can serve as `SSL_CERT_DIR`.
pub struct TestCa {
    dir: TempDir,
}

/// The openssl configuration: the CA's and the server certificate's extensions (what
/// rustls' webpki checks: a v3 CA with `CA:TRUE`, a leaf with the IP in its SAN).
const OPENSSL_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
x509_extensions = ca
[dn]
CN = dpop-agent test CA
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1
authorityKeyIdentifier = keyid
";

impl TestCa {
    /// Makes the CA and the server certificate. Fails (panics) when `openssl` is missing.
    pub fn new() -> TestCa {
        require_tool("openssl", &["version"], "openssl");
        let dir = new_temp_dir();
        std::fs::create_dir(dir.path().join("ca")).expect("CA directory");
        let ca = TestCa { dir };
        let config = ca.path("openssl.cnf");
        std::fs::write(&config, OPENSSL_CONFIG).expect("writing openssl.cnf");
        let openssl = |args: &[&Path]| {
            run_ok(
                std::process::Command::new("openssl")
                    .args(args)
                    .stdin(std::process::Stdio::null()),
            )
        };
        let p = Path::new;
        let new_key = [
            p("-newkey"),
            p("ec"),
            p("-pkeyopt"),
            p("ec_paramgen_curve:P-256"),
        ];
        let (ca_key, csr) = (ca.path("ca.key"), ca.path("server.csr"));
        openssl(
            &[
                &[
                    p("req"),
                    p("-x509"),
                    p("-new"),
                    p("-nodes"),
                    p("-days"),
                    p("2"),
                ][..],
                &new_key,
                &[
                    p("-config"),
                    &config,
                    p("-keyout"),
                    &ca_key,
                    p("-out"),
                    &ca.ca_cert(),
                ],
            ]
            .concat(),
        );
        openssl(
            &[
                &[
                    p("req"),
                    p("-new"),
                    p("-nodes"),
                    p("-subj"),
                    p("/CN=127.0.0.1"),
                ][..],
                &new_key,
                &[
                    p("-config"),
                    &config,
                    p("-keyout"),
                    &ca.server_key(),
                    p("-out"),
                    &csr,
                ],
            ]
            .concat(),
        );
        openssl(&[
            p("x509"),
            p("-req"),
            p("-in"),
            &csr,
            p("-CA"),
            &ca.ca_cert(),
            p("-CAkey"),
            &ca_key,
            p("-days"),
            p("2"),
            p("-extfile"),
            &config,
            p("-extensions"),
            p("server"),
            p("-out"),
            &ca.server_cert(),
        ]);
        ca
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The CA certificate (PEM): what a client is told to trust (`SSL_CERT_FILE`).
    pub fn ca_cert(&self) -> PathBuf {
        self.path("ca/ca.pem")
    }

    /// The directory that holds only [`ca_cert`](Self::ca_cert) (`SSL_CERT_DIR`).
    pub fn ca_dir(&self) -> PathBuf {
        self.path("ca")
    }

    /// The server certificate (PEM), for `127.0.0.1`.
    pub fn server_cert(&self) -> PathBuf {
        self.path("server.pem")
    }

    /// The server certificate's private key (PEM).
    pub fn server_key(&self) -> PathBuf {
        self.path("server.key")
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}
