//! ssh-agent habits of `dpop-agent`: `-s` / `-c` output, `-k` that waits until the agent is
//! gone, `--reuse` of a live agent, and `--check-config` with its errors.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dpop_tests::{
    AgentOptions, KillOnDrop, TestAgent, binaries, new_temp_dir, process_gone, run_ok,
};

/// `dpop-agent ARGS` with a clean environment (no agent variables, config under `dir`).
fn agent_command(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(&binaries().agent);
    command
        .args(args)
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env_remove("DPOP_AUTH_SOCK")
        .env_remove("DPOP_AGENT_PID")
        .env_remove("DPOP_AGENT_PASSPHRASE")
        .env_remove("XDG_RUNTIME_DIR")
        .env("SHELL", "/bin/sh");
    command
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// Runs `script` in sh with `$AGENT` and `$DIR` set; returns its standard output.
fn sh(dir: &Path, script: &str) -> String {
    stdout(&run_ok(
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("AGENT", &binaries().agent)
            .env("DIR", dir)
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .env_remove("DPOP_AUTH_SOCK")
            .env_remove("DPOP_AGENT_PID")
            .env_remove("DPOP_AGENT_PASSPHRASE")
            .env_remove("XDG_RUNTIME_DIR"),
    ))
}

fn pid_in(text: &str) -> u32 {
    text.lines()
        .find_map(|l| Some(l.split_once("Agent pid ")?.1))
        .and_then(|rest| rest.trim_end_matches(';').parse().ok())
        .unwrap_or_else(|| panic!("no 'Agent pid N' line in {text:?}"))
}

#[test]
fn sh_output_evals_and_k_waits_until_the_agent_is_gone() {
    let dir = new_temp_dir();
    // The CI form: a failed start is not hidden by eval.
    let out = sh(
        dir.path(),
        r#"out=$("$AGENT" -s -a "$DIR/a.sock" --data-dir "$DIR/data") && eval "$out" || exit 7
printf 'SOCK=%s PID=%s\n' "$DPOP_AUTH_SOCK" "$DPOP_AGENT_PID"
k=$("$AGENT" -k) || exit 8
eval "$k"
printf 'AFTER=[%s][%s]\n' "$DPOP_AUTH_SOCK" "$DPOP_AGENT_PID"
printf 'K=%s\n' "$k""#,
    );
    let pid = pid_in(&out);
    let _guard = KillOnDrop(pid);
    let socket = dir.path().join("a.sock");
    assert!(
        out.contains(&format!("SOCK={} PID={pid}", socket.display())),
        "{out}"
    );
    // -k returned only once the agent was gone: nothing to wait for here.
    assert!(process_gone(pid), "the agent is gone when -k returns");
    assert!(!socket.exists(), "and its socket with it");
    assert!(
        out.contains("AFTER=[][]"),
        "eval of -k's output unset both: {out}"
    );
    assert!(out.contains(&format!("Agent pid {pid} killed")), "{out}");
}

#[test]
fn a_failed_start_fails_the_ci_form() {
    let dir = new_temp_dir();
    let status = Command::new("sh")
        .arg("-c")
        .arg(r#"out=$("$AGENT" -s -a /nonexistent-dir/a.sock) && eval "$out""#)
        .env("AGENT", &binaries().agent)
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .env_remove("DPOP_AUTH_SOCK")
        .output()
        .unwrap();
    assert!(!status.status.success(), "the shell sees the failure");
    assert!(
        String::from_utf8_lossy(&status.stderr).contains("nonexistent-dir"),
        "and the agent says why: {}",
        String::from_utf8_lossy(&status.stderr)
    );
}

#[test]
fn csh_output_with_c_or_a_csh_login_shell() {
    let dir = new_temp_dir();
    let socket = dir.path().join("c.sock");
    let out = run_ok(
        agent_command(dir.path(), &["-a", socket.to_str().unwrap(), "--data-dir"])
            .arg(dir.path().join("data"))
            .env("SHELL", "/bin/tcsh"),
    );
    let text = stdout(&out);
    let pid = pid_in(&text);
    let _guard = KillOnDrop(pid);
    assert_eq!(
        text,
        format!(
            "setenv DPOP_AUTH_SOCK '{}';\nsetenv DPOP_AGENT_PID {pid};\necho Agent pid {pid};\n",
            socket.display()
        )
    );
    // -s wins over the login shell; -c and -s together are refused.
    let both = agent_command(dir.path(), &["-c", "-s"]).output().unwrap();
    assert!(!both.status.success());
    assert!(String::from_utf8_lossy(&both.stderr).contains("cannot be used with"));

    let kill = run_ok(agent_command(dir.path(), &["-k", "-c"]).env("DPOP_AUTH_SOCK", &socket));
    assert_eq!(
        stdout(&kill),
        format!(
            "unsetenv DPOP_AUTH_SOCK;\nunsetenv DPOP_AGENT_PID;\necho Agent pid {pid} killed;\n"
        )
    );
    assert!(process_gone(pid));
}

#[test]
fn reuse_prints_a_live_agents_environment_instead_of_starting_another() {
    let dir = new_temp_dir();
    let runtime = dir.path().join("run");
    fs::create_dir(&runtime).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&runtime, fs::Permissions::from_mode(0o700)).unwrap();
    let data = dir.path().join("data");
    let start = |extra: &[&str]| -> String {
        let mut command = agent_command(dir.path(), extra);
        command
            .arg("--data-dir")
            .arg(&data)
            .env("XDG_RUNTIME_DIR", &runtime);
        stdout(&run_ok(&mut command))
    };

    // Nothing to reuse yet: a new agent on the default socket.
    let first = start(&["--reuse"]);
    let pid = pid_in(&first);
    let _guard = KillOnDrop(pid);
    let default_socket = runtime.join("dpop-agent/agent.sock");
    assert!(
        first.contains(&format!("DPOP_AUTH_SOCK='{}'", default_socket.display())),
        "{first}"
    );
    // Again, as a shell profile would: the same agent, no second one.
    let again = start(&["--reuse"]);
    assert_eq!(again, first, "the live agent's environment, verbatim");

    // Named by DPOP_AUTH_SOCK (another socket than the default): that one is reused.
    let agent = TestAgent::start(AgentOptions::new());
    let mut command = agent_command(dir.path(), &["--reuse"]);
    command
        .arg("--data-dir")
        .arg(&data)
        .env("XDG_RUNTIME_DIR", &runtime)
        .env("DPOP_AUTH_SOCK", agent.socket());
    let via_env = stdout(&run_ok(&mut command));
    assert_eq!(pid_in(&via_env), agent.pid().unwrap());

    // Without --reuse, a second agent on the default socket is refused, naming the live one.
    let mut command = agent_command(dir.path(), &[]);
    command
        .arg("--data-dir")
        .arg(&data)
        .env("XDG_RUNTIME_DIR", &runtime);
    let refused = command.output().unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("agent.sock"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("agent.toml");
    fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_config_validates_and_names_the_problem() {
    let dir = new_temp_dir();
    let home = dir.path().join("home");
    fs::create_dir(&home).unwrap();
    let config = write_config(
        dir.path(),
        "data_dir = \"~/dpop-data\"\nlog_file = \"~/agent.log\"\nephemeral = true\n",
    );
    let out = run_ok(
        agent_command(dir.path(), &["--check-config", "--config"])
            .arg(&config)
            .env("HOME", &home)
            .env("DPOP_AGENT_PASSPHRASE", "never printed"),
    );
    let text = stdout(&out);
    assert!(text.contains("configuration OK"), "{text}");
    assert!(
        text.contains(&format!(
            "data directory: {}",
            home.join("dpop-data").display()
        )),
        "~ expanded: {text}"
    );
    assert!(text.contains("memory only"), "{text}");
    assert!(!text.contains("never printed"));
    assert!(!home.join("dpop-data").exists(), "a check creates nothing");

    for (config_text, expect) in [
        ("data_dir = \"/d\"\n\nsokcet = \"/s\"\n", "line 3"),
        ("data_dir = \"/d\"\n\nsokcet = \"/s\"\n", "sokcet"),
        ("data_dir = 5\n", "line 1"),
        (
            "pkcs11_module = \"/nonexistent/lib.so\"\npkcs11_token = \"t\"\npkcs11_pin_file = \"/nonexistent/pin\"\n",
            "/nonexistent/lib.so",
        ),
        ("log_file = \"~root/x\"\n", "~user"),
    ] {
        let config = write_config(dir.path(), config_text);
        let out = agent_command(dir.path(), &["--check-config", "--config"])
            .arg(&config)
            .env("HOME", &home)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{config_text:?} is refused");
        assert!(
            stderr.contains(expect),
            "{config_text:?}: {expect:?} in {stderr}"
        );
    }

    // The example configuration in the repository is valid as shipped.
    let example = dpop_tests::workspace_root().join("agent/config.example.toml");
    let out = run_ok(
        agent_command(dir.path(), &["--check-config", "--config"])
            .arg(&example)
            .env("HOME", &home),
    );
    assert!(stdout(&out).contains("configuration OK"));
}

/// Starts `dpop-agent -D` as systemd would: `fd` as descriptor 3, `LISTEN_FDS=1`,
/// `LISTEN_PID` its own pid (set by `sh` just before `exec`), `NOTIFY_SOCKET` given.
fn socket_activated_agent(
    dir: &Path,
    fd: std::os::fd::RawFd,
    notify: &Path,
) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(r#"export LISTEN_PID=$$ LISTEN_FDS=1; exec "$0" -D --data-dir "$1""#)
        .arg(&binaries().agent)
        .arg(dir.join("data"))
        .env("NOTIFY_SOCKET", notify)
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env_remove("DPOP_AGENT_PASSPHRASE")
        .stderr(fs::File::create(dir.join("agent.log")).unwrap());
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if fd == 3 {
                // dup2(3, 3) would keep close-on-exec set.
                if libc::fcntl(3, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) != 3 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
        .spawn()
        .expect("spawning the socket-activated agent")
}

#[test]
fn socket_activation_with_listen_fds_and_sd_notify_readiness() {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::{UnixDatagram, UnixListener};
    use std::time::Duration;

    let dir = new_temp_dir();
    let socket = dir.path().join("activated.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut child = socket_activated_agent(dir.path(), listener.as_raw_fd(), &notify_path);
    let _guard = KillOnDrop(child.id());
    drop(listener);

    let mut message = [0u8; 256];
    let n = notify
        .recv(&mut message)
        .expect("the agent notifies readiness");
    assert_eq!(&message[..n], b"READY=1\n");
    // It serves on the passed socket, which it did not bind itself.
    let mut client = dpop_client::blocking::Client::connect(&socket).unwrap();
    let key = client.generate_key("activated").unwrap();
    assert_eq!(key.label, "activated");

    dpop_tests::send_signal(child.id(), libc::SIGTERM);
    let status =
        dpop_tests::wait_timeout(&mut child, dpop_tests::PROCESS_TIMEOUT).expect("the agent stops");
    assert!(status.success(), "{status}");
    let n = notify
        .recv(&mut message)
        .expect("the agent notifies stopping");
    assert_eq!(&message[..n], b"STOPPING=1\n");
    assert!(
        socket.exists(),
        "the socket belongs to systemd: the agent leaves it in place"
    );
    let log = fs::read_to_string(dir.path().join("agent.log")).unwrap();
    assert!(log.contains("activated=true"), "{log}");

    // A datagram socket (a wrong unit) is refused with a reason.
    let (datagram, _other) = UnixDatagram::pair().unwrap();
    let mut child = socket_activated_agent(dir.path(), datagram.as_raw_fd(), &notify_path);
    let _guard = KillOnDrop(child.id());
    let status =
        dpop_tests::wait_timeout(&mut child, dpop_tests::PROCESS_TIMEOUT).expect("the agent exits");
    assert!(!status.success());
    let log = fs::read_to_string(dir.path().join("agent.log")).unwrap();
    assert!(log.contains("not a listening Unix stream socket"), "{log}");
}

#[test]
fn clients_find_the_default_socket_without_dpop_auth_sock() {
    let agent = TestAgent::start(AgentOptions::new().default_socket_location());
    agent.client().generate_key("found").unwrap();
    let runtime = agent.dir().join("run");
    let list = run_ok(
        Command::new(&binaries().dpop)
            .args(["keys", "list"])
            .env_remove("DPOP_AUTH_SOCK")
            .env("XDG_RUNTIME_DIR", &runtime),
    );
    assert!(stdout(&list).contains("found"), "{}", stdout(&list));

    // Nothing there: the error says what to do.
    let empty = new_temp_dir();
    let out = Command::new(&binaries().dpop)
        .args(["keys", "list"])
        .env_remove("DPOP_AUTH_SOCK")
        .env("XDG_RUNTIME_DIR", empty.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("DPOP_AUTH_SOCK") && stderr.contains("dpop-agent"),
        "{stderr}"
    );
}
