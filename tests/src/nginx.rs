//! A real nginx (Debian's `/usr/sbin/nginx`) as a reverse proxy on a free loopback port, run
//! as the current user in one process (`master_process off`, so it never switches user) with
//! its own configuration, pid file, logs and temporary directories in a fresh temporary
//! directory; killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use tempfile::TempDir;

use crate::{KillOnDrop, PROCESS_TIMEOUT, free_port, new_temp_dir, require_tool, wait_until};

/// Debian's nginx.
pub const NGINX: &str = "/usr/sbin/nginx";

/// A running nginx that proxies every path to one upstream. Fails (panics) when nginx is not
/// installed (`apt-get install nginx`).
pub struct Nginx {
    port: u16,
    dir: TempDir,
    child: Option<(Child, KillOnDrop)>,
}

impl Nginx {
    /// Starts nginx on `127.0.0.1:<free port>` with `location / { proxy_pass <upstream>;
    /// <location> }` (`upstream` as `http://127.0.0.1:8080`, `location` the directives that
    /// set the forwarding headers) and waits until it accepts connections.
    pub fn start(upstream: &str, location: &str) -> Nginx {
        require_tool(NGINX, &["-v"], "nginx");
        let dir = new_temp_dir();
        let port = free_port();
        let path = |name: &str| dir.path().join(name).display().to_string();
        let temp = path("temp");
        std::fs::create_dir(&temp).expect("nginx temp directory");
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
             \x20       listen 127.0.0.1:{port};\n\
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

    /// `http://127.0.0.1:<port>` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
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
