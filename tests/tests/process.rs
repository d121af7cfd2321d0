//! The agent as a process: peer-uid check, socket and directory permissions, signals,
//! background start with `eval "$(dpop-agent)"` and `-k`, and secrets kept out of logs.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, ExitStatus, Output, Stdio};

use dpop_tests::{
    AgentOptions, PROCESS_TIMEOUT, TestAgent, binaries, command_as_other_user, new_temp_dir,
    other_user, process_gone, run_ok, send_signal, wait_timeout, wait_until, write_private_file,
};

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// Runs `dpop-agent` with `args`, expecting it to exit by itself (it is killed after the
/// timeout, which fails the test); returns the status and standard error.
fn agent_expecting_exit(args: &[&std::ffi::OsStr], env: &[(&str, &Path)]) -> (ExitStatus, String) {
    let dir = new_temp_dir();
    let log = dir.path().join("log");
    let mut child = Command::new(&binaries().agent)
        .args(args)
        .env_remove("DPOP_AGENT_PASSPHRASE")
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawning dpop-agent");
    let status = wait_timeout(&mut child, PROCESS_TIMEOUT);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stderr = fs::read_to_string(&log).unwrap_or_default();
    let status = status.unwrap_or_else(|| {
        panic!("dpop-agent {args:?} was expected to exit but kept running; log:\n{stderr}")
    });
    (status, stderr)
}

/// An agent whose socket the filesystem lets every user reach, so that only the agent's peer
/// check can refuse them.
fn agent_open_to_other_users() -> TestAgent {
    let agent = TestAgent::start(AgentOptions::new());
    agent.client().generate_key("mine", None, None).unwrap();
    set_mode(agent.dir(), 0o755);
    set_mode(&agent.socket(), 0o666);
    agent
}

fn assert_still_serves_its_own_user(agent: &TestAgent) {
    let mut client = agent.client();
    assert_eq!(
        client.hello().unwrap().protocol,
        1,
        "hello still works for the agent's user"
    );
    assert_eq!(
        client.list_keys().unwrap()[0].label,
        "mine",
        "the agent's user still sees its keys"
    );
}

#[test]
fn a_client_of_another_uid_is_refused_by_the_peer_check() {
    let (uid, _) = other_user();
    let agent = agent_open_to_other_users();
    // A raw client (system Python, no packages) that reads what the agent says on connect.
    let script = "import socket, sys\n\
        s = socket.socket(socket.AF_UNIX)\n\
        s.settimeout(30)\n\
        s.connect(sys.argv[1])\n\
        sys.stdout.write(s.makefile('rb').readline().decode())\n";
    let mut command = command_as_other_user("python3");
    command
        .args(["-c", script])
        .arg(agent.socket())
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .stdin(Stdio::null());
    let out = command.output().expect("running python3 as another user");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the other user's raw client ran (connect is allowed by the 0666 socket): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("the agent answers uid {uid} with a JSON line ({e}): {stdout:?}")
    });
    assert_eq!(
        dpop_tests::error_code(&reply),
        "permission_denied",
        "uid {uid} gets permission_denied: {reply}"
    );
    let log = agent.stderr_log();
    assert!(
        log.contains(&format!("refused connection from uid {uid}")),
        "the agent logs the refused uid:\n{log}"
    );
    assert_still_serves_its_own_user(&agent);
}

#[test]
fn dpop_cli_of_another_uid_reports_the_agents_refusal() {
    let (uid, _) = other_user();
    let agent = agent_open_to_other_users();
    // Several runs, because whether the client's request write races the agent's close
    // differs from run to run; every run must show the refusal.
    for run in 0..20 {
        let mut command = command_as_other_user(&binaries().dpop);
        command
            .args(["keys", "list", "--json"])
            .env("DPOP_AUTH_SOCK", agent.socket())
            .stdin(Stdio::null());
        let out = command.output().expect("running dpop as another user");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "run {run}: dpop keys list as uid {uid} must fail; stdout: {stdout}"
        );
        assert!(
            !stdout.contains("mine"),
            "run {run}: no key is shown to uid {uid}: {stdout}"
        );
        assert!(
            stderr.contains("(permission_denied)") && stderr.contains("only its own user"),
            "run {run}: dpop as uid {uid} reports the agent's refusal (permission_denied), \
             not a transport error: {stderr}"
        );
    }
    assert_still_serves_its_own_user(&agent);
}

#[test]
fn default_socket_location_is_private() {
    let agent = TestAgent::start(AgentOptions::new().default_socket_location());
    let socket = agent.socket();
    let dir = socket.parent().unwrap();
    assert_eq!(
        dir,
        agent.dir().join("run/dpop-agent"),
        "default socket under $XDG_RUNTIME_DIR/dpop-agent"
    );
    assert_eq!(mode(dir), 0o700, "the socket directory is 0700");
    let meta = fs::symlink_metadata(&socket).expect("socket exists at the default path");
    assert!(
        meta.file_type().is_socket(),
        "{} is a socket",
        socket.display()
    );
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "the socket is 0600"
    );
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(meta.uid(), euid, "the socket belongs to the agent's user");
    assert_eq!(
        fs::metadata(dir).unwrap().uid(),
        euid,
        "the directory belongs to the agent's user"
    );
    assert!(
        agent.dpop_ok(&["keys", "list"]).contains("no keys"),
        "dpop reaches the agent at the default socket"
    );
}

fn start_with_prepared_socket_dir(prepare: impl FnOnce(&Path)) -> dpop_tests::StartFailure {
    let dir = new_temp_dir();
    let socket_dir = dir.path().join("run/dpop-agent");
    fs::create_dir_all(&socket_dir).unwrap();
    set_mode(&dir.path().join("run"), 0o700);
    prepare(&socket_dir);
    match TestAgent::try_start_in(dir, AgentOptions::new().default_socket_location()) {
        Ok(agent) => panic!(
            "the agent started with an unsafe socket directory; log:\n{}",
            agent.stderr_log()
        ),
        Err(failure) => failure,
    }
}

#[test]
fn agent_refuses_a_socket_directory_others_can_write_to() {
    for unsafe_mode in [0o720, 0o702, 0o777] {
        let failure = start_with_prepared_socket_dir(|d| set_mode(d, unsafe_mode));
        let status = failure.status.expect("the agent exits by itself");
        assert!(
            !status.success(),
            "mode {unsafe_mode:o}: exit status is non-zero, got {status}"
        );
        assert!(
            failure.stderr.contains("refusing to use socket directory")
                && failure.stderr.contains("lets others in"),
            "mode {unsafe_mode:o}: the agent explains the refusal:\n{}",
            failure.stderr
        );
        let socket = failure.dir.path().join("run/dpop-agent/agent.sock");
        assert!(
            !socket.exists(),
            "mode {unsafe_mode:o}: no socket was created"
        );
    }
}

#[test]
fn agent_refuses_a_socket_directory_owned_by_another_uid() {
    let (uid, gid) = other_user();
    let failure = start_with_prepared_socket_dir(|d| {
        set_mode(d, 0o700);
        std::os::unix::fs::chown(d, Some(uid), Some(gid)).expect("chown to the other user");
    });
    assert!(
        !failure.status.expect("the agent exits by itself").success(),
        "exit status is non-zero"
    );
    assert!(
        failure.stderr.contains(&format!("owned by uid {uid}")),
        "the agent names the foreign owner:\n{}",
        failure.stderr
    );
}

#[test]
fn socket_path_conflicts() {
    // A live agent on the path: a second one must not steal it.
    let first = TestAgent::start(AgentOptions::new());
    let data = new_temp_dir();
    let (status, stderr) = agent_expecting_exit(
        &[
            "-D".as_ref(),
            "-a".as_ref(),
            first.socket().as_os_str(),
            "--data-dir".as_ref(),
            data.path().as_os_str(),
        ],
        &[],
    );
    assert!(
        !status.success(),
        "a second agent on a live socket exits non-zero"
    );
    assert!(
        stderr.contains("another agent is listening"),
        "it says why:\n{stderr}"
    );
    assert_eq!(
        first.client().hello().unwrap().protocol,
        1,
        "the first agent still serves its socket"
    );

    // A regular file where the socket should go is left alone.
    let dir = new_temp_dir();
    let path = dir.path().join("agent.sock");
    fs::write(&path, b"not a socket").unwrap();
    let (status, stderr) = agent_expecting_exit(
        &[
            "-D".as_ref(),
            "-a".as_ref(),
            path.as_os_str(),
            "--data-dir".as_ref(),
            data.path().as_os_str(),
        ],
        &[],
    );
    assert!(
        !status.success(),
        "the agent refuses a non-socket at the socket path"
    );
    assert!(stderr.contains("is not a socket"), "it says why:\n{stderr}");
    assert_eq!(
        fs::read(&path).unwrap(),
        b"not a socket",
        "the file is untouched"
    );

    // A stale socket (nobody listening) is replaced.
    let dir = new_temp_dir();
    drop(std::os::unix::net::UnixListener::bind(dir.path().join("agent.sock")).unwrap());
    assert!(
        dir.path().join("agent.sock").exists(),
        "the stale socket file is there"
    );
    let agent = TestAgent::try_start_in(dir, AgentOptions::new())
        .unwrap_or_else(|f| panic!("the agent replaces a stale socket; log:\n{}", f.stderr));
    assert_eq!(
        agent.client().hello().unwrap().protocol,
        1,
        "the agent serves on the replaced socket"
    );
}

#[test]
fn sigterm_and_sigint_shut_down_cleanly_and_remove_the_socket() {
    for (name, signal) in [("SIGTERM", libc::SIGTERM), ("SIGINT", libc::SIGINT)] {
        let mut agent = TestAgent::start(AgentOptions::new());
        // An idle connection must not keep the agent from stopping.
        let _idle = agent.raw();
        let mut client = agent.client();
        client.hello().unwrap();
        let status = agent.stop_with(signal);
        assert!(
            status.success(),
            "{name}: the agent exits with status 0, got {status}"
        );
        assert!(
            !agent.socket().exists(),
            "{name}: the socket file is removed"
        );
        let log = agent.stderr_log();
        assert!(
            log.contains(name) && log.contains("stopped"),
            "{name}: the log records the signal and the stop:\n{log}"
        );
        assert!(
            client.hello().is_err(),
            "{name}: an open connection is closed by the shutdown"
        );
    }
}

/// Kills a background agent when a test fails half-way.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if !process_gone(self.0) {
            send_signal(self.0, libc::SIGKILL);
        }
    }
}

#[test]
fn background_start_with_eval_and_stop_with_k() {
    let dir = new_temp_dir();
    // A directory name that needs shell quoting.
    let sock_dir = dir.path().join("it's a dir");
    fs::create_dir(&sock_dir).unwrap();
    let socket = sock_dir.join("agent.sock");
    let data = dir.path().join("data");

    let agent_bin = &binaries().agent;
    let dpop_bin = &binaries().dpop;
    // The way users start it: eval "$(dpop-agent ...)" in a shell, then use $DPOP_AUTH_SOCK.
    let script = r#"eval "$("$0" -a "$1" --data-dir "$2")" || exit 9
"$3" keys generate --label bg >/dev/null || exit 10
printf 'SOCK=%s\nPID=%s\n' "$DPOP_AUTH_SOCK" "$DPOP_AGENT_PID""#;
    let out = run_ok(
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(agent_bin)
            .arg(&socket)
            .arg(&data)
            .arg(dpop_bin)
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env_remove("DPOP_AUTH_SOCK")
            .env_remove("DPOP_AGENT_PID")
            .env_remove("DPOP_AGENT_PASSPHRASE"),
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("the shell printed {name}: {stdout}"))
            .to_owned()
    };
    assert_eq!(
        Path::new(&field("SOCK=")),
        socket,
        "eval set DPOP_AUTH_SOCK to the socket path"
    );
    let pid: u32 = field("PID=")
        .parse()
        .expect("eval set DPOP_AGENT_PID to a pid");
    let _guard = KillOnDrop(pid);
    assert!(
        stdout.contains(&format!("Agent pid {pid}")),
        "the agent announces its pid: {stdout}"
    );
    assert!(
        !process_gone(pid),
        "the background agent runs after the starting command returned"
    );
    let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(
        &exe, agent_bin,
        "DPOP_AGENT_PID names the dpop-agent process"
    );

    // It keeps serving (and logging) after the process that started it has exited.
    for _ in 0..3 {
        let proof = run_ok(
            Command::new(dpop_bin)
                .args([
                    "proof",
                    "--key",
                    "bg",
                    "-X",
                    "GET",
                    "--url",
                    "https://rs.example/bg",
                ])
                .env("DPOP_AUTH_SOCK", &socket),
        );
        dpop_tests::verify_proof(
            String::from_utf8_lossy(&proof.stdout).trim(),
            "GET",
            "https://rs.example/bg",
            None,
        );
    }

    // -k without DPOP_AGENT_PID says what is missing.
    let no_pid = Command::new(agent_bin)
        .arg("-k")
        .env_remove("DPOP_AGENT_PID")
        .output()
        .unwrap();
    assert!(
        !no_pid.status.success(),
        "dpop-agent -k without DPOP_AGENT_PID fails"
    );
    assert!(
        String::from_utf8_lossy(&no_pid.stderr).contains("DPOP_AGENT_PID"),
        "and names the variable"
    );

    let kill = run_ok(
        Command::new(agent_bin)
            .arg("-k")
            .env("DPOP_AGENT_PID", pid.to_string()),
    );
    let kill_out = String::from_utf8(kill.stdout).unwrap();
    assert!(
        kill_out.contains("unset DPOP_AUTH_SOCK;") && kill_out.contains("unset DPOP_AGENT_PID;"),
        "dpop-agent -k prints shell lines that unset the variables: {kill_out}"
    );
    wait_until(
        "the killed agent removed its socket",
        PROCESS_TIMEOUT,
        || !socket.exists(),
    );
    wait_until("the killed agent exited", PROCESS_TIMEOUT, || {
        process_gone(pid)
    });
}

/// The background start prints the socket its child binds, also when the config file (not
/// `-a`) names it: it used to print the default path then, and `eval` exported a socket that
/// nothing listened on.
#[test]
fn background_start_exports_the_socket_named_in_the_config_file() {
    let dir = new_temp_dir();
    let socket = dir.path().join("from-config.sock");
    let config = dir.path().join("agent.toml");
    fs::write(
        &config,
        format!(
            "socket = {:?}\ndata_dir = {:?}\n",
            socket.to_str().unwrap(),
            dir.path().join("data").to_str().unwrap()
        ),
    )
    .unwrap();
    let out = run_ok(
        Command::new(&binaries().agent)
            .arg("--config")
            .arg(&config)
            .env("XDG_RUNTIME_DIR", dir.path().join("runtime"))
            .env_remove("DPOP_AGENT_PASSPHRASE"),
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let pid: u32 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("DPOP_AGENT_PID="))
        .and_then(|rest| rest.split(';').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("the start printed DPOP_AGENT_PID: {stdout}"));
    let _guard = KillOnDrop(pid);
    let quoted = format!("DPOP_AUTH_SOCK='{}';", socket.display());
    assert!(
        stdout.contains(&quoted),
        "the printed socket is the config file's {}: {stdout}",
        socket.display()
    );
    let mut client = dpop_client::blocking::Client::connect(&socket)
        .expect("an agent listens on the printed socket");
    client.hello().expect("and answers");
}

#[test]
fn failed_background_start_prints_no_shell_variables() {
    let dir = new_temp_dir();
    let data = dir.path().join("data");
    let socket = dir.path().join("missing-dir/agent.sock");
    let out = Command::new(&binaries().agent)
        .arg("-a")
        .arg(&socket)
        .arg("--data-dir")
        .arg(&data)
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .env_remove("DPOP_AGENT_PASSPHRASE")
        .stdin(Stdio::null())
        .output()
        .expect("running dpop-agent");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a background start that fails exits non-zero"
    );
    assert!(
        !stdout.contains("DPOP_AUTH_SOCK"),
        "nothing for eval to export when the agent did not start: {stdout}"
    );
    assert!(
        stderr.contains("does not exist"),
        "the agent's own explanation reaches the user: {stderr}"
    );
}

#[test]
fn secrets_never_appear_in_logs_or_cli_output() {
    const PASSPHRASE: &str = "pass-SENTINEL-5d1e0f9a-phrase";
    const TOKEN: &str = "tok-SENTINEL-83c2b7e1";
    const BAD_TOKEN: &str = "bad tok-SENTINEL-7a66";
    let mut agent = TestAgent::start(
        AgentOptions::new()
            .passphrase_env(PASSPHRASE)
            .env("RUST_LOG", "debug"),
    );
    let pem_path = agent.dir().join("k.pem");
    dpop_tests::openssl_pkcs8_ec_pem(&pem_path);
    let pem = fs::read_to_string(&pem_path).unwrap();
    let pem_body: Vec<&str> = pem.lines().filter(|l| !l.starts_with("-----")).collect();

    agent.dpop_ok(&["keys", "generate", "--label", "gen"]);
    agent.dpop_ok(&[
        "keys".as_ref(),
        "import".as_ref(),
        pem_path.as_os_str(),
        "--label".as_ref(),
        "imp".as_ref(),
    ]);

    let mut outputs = Vec::new();
    let out = agent.dpop(&[
        "proof",
        "--key",
        "imp",
        "-X",
        "POST",
        "--url",
        "https://rs.example/x",
        "--access-token",
        TOKEN,
    ]);
    assert!(out.status.success(), "dpop proof with a token works");
    assert!(
        out.stderr.is_empty(),
        "dpop proof writes nothing to standard error"
    );
    let proof = String::from_utf8(out.stdout.clone()).unwrap();
    dpop_tests::verify_proof(proof.trim(), "POST", "https://rs.example/x", Some(TOKEN));
    outputs.push(out);
    let token_file = agent.dir().join("token");
    write_private_file(&token_file, format!("{TOKEN}\n").as_bytes());
    outputs.push(agent.dpop(&[
        "proof".as_ref(),
        "--key".as_ref(),
        "gen".as_ref(),
        "-X".as_ref(),
        "GET".as_ref(),
        "--url".as_ref(),
        "https://rs.example/y".as_ref(),
        "--access-token-file".as_ref(),
        token_file.as_os_str(),
    ]));
    assert!(
        outputs[1].status.success(),
        "dpop proof --access-token-file works"
    );
    let failed = agent.dpop(&[
        "proof",
        "--key",
        "gen",
        "-X",
        "GET",
        "--url",
        "https://rs.example/y",
        "--access-token",
        BAD_TOKEN,
    ]);
    assert!(
        !failed.status.success(),
        "an access token with a space is refused"
    );
    outputs.push(failed);
    outputs.push(agent.dpop(&[
        "verify",
        "--proof",
        proof.trim(),
        "-X",
        "POST",
        "--url",
        "https://rs.example/x",
        "--access-token",
        TOKEN,
    ]));
    outputs.push(agent.dpop(&[
        "verify",
        "--proof",
        proof.trim(),
        "-X",
        "POST",
        "--url",
        "https://rs.example/x",
        "--access-token",
        BAD_TOKEN,
    ]));
    outputs.push(agent.dpop(&["keys", "list", "--json"]));
    agent
        .client()
        .sign_proof(
            "gen",
            &dpop_client::ProofRequest::new("GET", "https://rs.example/z").access_token(TOKEN),
        )
        .unwrap();
    agent.raw_request(format!(r#"{{"id":1,"op":"sign_proof","key":"gen","htm":"GET","htu":"https://rs.example/","access_token":"{TOKEN}","bogus":1}}"#).as_bytes());
    agent.raw_request(format!(r#"{{"id":2,"op":"sign_proof","key":"nope","htm":"GET","htu":"https://rs.example/","access_token":"{TOKEN}"}}"#).as_bytes());
    agent.raw_request(
        format!(
            r#"{{"id":3,"op":"import_key","label":"x","pem":"{}"}}"#,
            "A".repeat(40) + TOKEN
        )
        .as_bytes(),
    );
    agent.restart();
    agent.client().list_keys().unwrap();

    let log = agent.stderr_log();
    assert!(
        log.contains("DEBUG"),
        "RUST_LOG=debug took effect, so the check covers debug logs:\n{log}"
    );
    assert!(
        log.contains("sign_proof"),
        "the debug log records proofs being signed:\n{log}"
    );
    for (what, secret) in [
        ("passphrase", PASSPHRASE),
        ("access token", TOKEN),
        ("bad access token", BAD_TOKEN),
        ("token suffix", "SENTINEL"),
    ] {
        assert!(
            !log.contains(secret),
            "the agent log contains the {what}:\n{log}"
        );
    }
    for line in &pem_body {
        assert!(
            !log.contains(line),
            "the agent log contains private key PEM data"
        );
    }
    for (i, out) in outputs.iter().enumerate() {
        for stream in [&out.stdout, &out.stderr] {
            let text = String::from_utf8_lossy(stream);
            assert!(
                !text.contains("SENTINEL"),
                "dpop output #{i} contains a secret: {text}"
            );
            for line in &pem_body {
                assert!(
                    !text.contains(line),
                    "dpop output #{i} contains private key PEM data"
                );
            }
        }
    }
}

/// `dpop keys list | head -c1`: the reader goes away while dpop still writes. dpop used to
/// panic on the failed `println!` (exit 101, a backtrace hint on stderr); it must end quietly
/// as coreutils do (killed by SIGPIPE), in every run.
#[test]
fn dpop_ends_quietly_when_its_output_pipe_closes() {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::process::ExitStatusExt;

    let agent = TestAgent::start(AgentOptions::new());
    let mut client = agent.client();
    // More output than a pipe buffers (64 KiB), so that dpop is still writing when the reader
    // has gone.
    for i in 0..200 {
        client
            .generate_key(&format!("key-{i:03}"), None, None)
            .unwrap();
    }

    // Deterministic: the pipe's read end is closed before dpop writes its first byte.
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills the two descriptors we pass; we own them from here on.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe(2)");
    // SAFETY: both descriptors were just created and are not owned elsewhere.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read_end);
    let out = agent
        .dpop_command()
        .args(["keys", "list", "--json"])
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::piped())
        .output()
        .expect("running dpop");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "dpop ends by SIGPIPE, as coreutils do, not {}: {stderr}",
        out.status
    );
    assert!(stderr.is_empty(), "and says nothing: {stderr}");

    // The way users hit it: through head, 30 times (the timing differs from run to run).
    let script = r#"set -o pipefail; "$0" keys list $1 | head -c1 >/dev/null; echo "status=${PIPESTATUS[0]}""#;
    for run in 0..30 {
        // Both the table and the JSON output.
        let format = if run % 2 == 0 { "--json" } else { "" };
        let out = Command::new("bash")
            .args(["-c", script])
            .arg(&binaries().dpop)
            .arg(format)
            .env("DPOP_AUTH_SOCK", agent.socket())
            .output()
            .expect("running bash");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let status: i32 = stdout
            .trim()
            .strip_prefix("status=")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("run {run}: bash printed dpop's status: {stdout}"));
        assert!(
            status == 0 || status == 128 + libc::SIGPIPE,
            "run {run}: dpop exits 0 or by SIGPIPE, not {status}: {stderr}"
        );
        assert!(
            !stderr.contains("panicked"),
            "run {run}: dpop panicked: {stderr}"
        );
        assert!(stderr.is_empty(), "run {run}: dpop says nothing: {stderr}");
    }
}

/// A listener of another user on the path a client is pointed to (a `DPOP_AUTH_SOCK` set by
/// a script, say) pretends to be the agent and records whatever it is sent. Both clients and
/// the CLI must refuse it before sending anything: no access token, no private key.
#[test]
fn clients_refuse_a_listener_of_another_user_and_send_it_nothing() {
    const TOKEN: &str = "tok-SENTINEL-2f9e61";
    let (uid, gid) = other_user();
    let dir = new_temp_dir();
    // The other user can reach its own directory inside ours.
    set_mode(dir.path(), 0o711);
    let theirs = dir.path().join("theirs");
    fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(uid), Some(gid)).unwrap();
    let socket = theirs.join("agent.sock");
    let record = theirs.join("received");
    // Answers every line as the agent would, after writing it down.
    let script = "import socket, sys\n\
        s = socket.socket(socket.AF_UNIX)\n\
        s.bind(sys.argv[1])\n\
        s.listen(16)\n\
        while True:\n\
        \x20   c, _ = s.accept()\n\
        \x20   f = c.makefile('rwb')\n\
        \x20   for line in f:\n\
        \x20       open(sys.argv[2], 'ab').write(line)\n\
        \x20       f.write(b'{\"id\":1,\"ok\":true,\"protocol\":1,\"proof\":\"x\",\"keys\":[]}\\n')\n\
        \x20       f.flush()\n\
        \x20   c.close()\n";
    let mut listener = command_as_other_user("python3")
        .args(["-c", script])
        .arg(&socket)
        .arg(&record)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .stdin(Stdio::null())
        .spawn()
        .expect("running the other user's listener");
    struct KillChild<'a>(&'a mut std::process::Child);
    impl Drop for KillChild<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _listener = KillChild(&mut listener);
    wait_until("the other user's listener accepts", PROCESS_TIMEOUT, || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    });

    let pem = dir.path().join("k.pem");
    dpop_tests::openssl_pkcs8_ec_pem(&pem);
    let pem_body: Vec<String> = fs::read_to_string(&pem)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::to_owned)
        .collect();
    let dpop = |args: &[&std::ffi::OsStr]| {
        Command::new(&binaries().dpop)
            .args(args)
            .env("DPOP_AUTH_SOCK", &socket)
            .stdin(Stdio::null())
            .output()
            .expect("running dpop")
    };
    for (what, out) in [
        (
            "dpop proof --access-token",
            dpop(&[
                "proof".as_ref(),
                "--key".as_ref(),
                "k".as_ref(),
                "-X".as_ref(),
                "GET".as_ref(),
                "--url".as_ref(),
                "https://rs.example/".as_ref(),
                "--access-token".as_ref(),
                TOKEN.as_ref(),
            ]),
        ),
        (
            "dpop keys import",
            dpop(&[
                "keys".as_ref(),
                "import".as_ref(),
                pem.as_os_str(),
                "--label".as_ref(),
                "k".as_ref(),
            ]),
        ),
        ("dpop keys list", dpop(&["keys".as_ref(), "list".as_ref()])),
    ] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{what} must fail against uid {uid}'s listener"
        );
        assert!(
            stderr.contains(&format!("runs as uid {uid}"))
                && stderr.contains(&socket.display().to_string()),
            "{what}: the error names the socket and the listener's uid: {stderr}"
        );
    }

    // The library clients, blocking and async, refuse before sending too.
    let blocking = dpop_client::blocking::Client::connect(&socket);
    assert!(
        matches!(&blocking, Err(dpop_client::Error::ForeignAgent { uid: u, .. }) if *u == uid),
        "the blocking client refuses uid {uid}: {blocking:?}"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let refused = runtime.block_on(async {
        let mut client = dpop_client::Client::connect(&socket).await?;
        client
            .sign_proof(
                "k",
                &dpop_client::ProofRequest::new("GET", "https://rs.example/").access_token(TOKEN),
            )
            .await
    });
    assert!(
        matches!(&refused, Err(dpop_client::Error::ForeignAgent { uid: u, .. }) if *u == uid),
        "the async client refuses uid {uid}: {refused:?}"
    );

    // Whatever reached the listener was written down by now (it answers after writing).
    let received = fs::read_to_string(&record).unwrap_or_default();
    assert!(
        !received.contains("SENTINEL"),
        "the access token reached the other user's listener: {received}"
    );
    for line in &pem_body {
        assert!(
            !received.contains(line.as_str()),
            "private key PEM data reached the other user's listener"
        );
    }
    assert!(received.is_empty(), "nothing at all was sent: {received}");
}

/// The pid that a background start printed for `eval`.
fn started_pid(stdout: &str) -> u32 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("DPOP_AGENT_PID="))
        .and_then(|rest| rest.split(';').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("the start printed DPOP_AGENT_PID: {stdout}"))
}

/// The environment block of `pid` as the kernel shows it (the bytes the process started with,
/// wherever its own copy has gone since): root can read it even of a non-dumpable process.
fn proc_environ(pid: u32) -> String {
    let bytes = fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/environ (as root): {e}"));
    String::from_utf8_lossy(&bytes).replace('\0', "\n")
}

/// The entries of an environment block that hold `needle`, by name only: failure messages
/// must not print the machine's whole environment.
fn names_holding(environ: &str, needle: &str) -> Vec<String> {
    environ
        .lines()
        .filter(|entry| entry.contains(needle))
        .map(|entry| entry.split('=').next().unwrap_or_default().to_owned())
        .collect()
}

/// The passphrase in `DPOP_AGENT_PASSPHRASE` and the PIN in `--pkcs11-pin-env`'s variable
/// must not be readable in `/proc/<pid>/environ` of the running agent: the background child
/// gets them over its standard input (never its environment), and a foreground agent wipes
/// them in place once read (`remove_var` alone leaves the bytes; the PIN variable used to stay
/// altogether).
#[test]
fn secrets_never_stay_in_the_agents_environment() {
    const PASSPHRASE: &str = "pass-SENTINEL-c41d";
    const PIN: &str = "pin-SENTINEL-93b0";
    let token = dpop_tests::SoftHsmToken::create("environ", PIN, "so-pin-0000");
    let dir = new_temp_dir();
    let socket = dir.path().join("agent.sock");
    let out = run_ok(
        Command::new(&binaries().agent)
            .arg("-a")
            .arg(&socket)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--pkcs11-module")
            .arg(token.module())
            .args(["--pkcs11-token", token.label()])
            .args(["--pkcs11-pin-env", dpop_tests::PKCS11_PIN_VAR])
            .env("SOFTHSM2_CONF", token.conf())
            .env(dpop_tests::PKCS11_PIN_VAR, PIN)
            .env("DPOP_AGENT_PASSPHRASE", PASSPHRASE)
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .stdin(Stdio::null()),
    );
    let pid = started_pid(&String::from_utf8_lossy(&out.stdout));
    let _guard = KillOnDrop(pid);
    // Both secrets arrived: a software key is saved (the passphrase) and a token key made
    // (the PIN).
    let mut client = dpop_client::blocking::Client::connect(&socket).unwrap();
    let soft = client.generate_key("soft", None, None).unwrap();
    assert!(soft.persistent, "the background agent has the passphrase");
    client
        .generate_key("tok", Some("pkcs11"), None)
        .expect("the background agent has the PIN");
    let environ = proc_environ(pid);
    assert!(
        environ.contains("SOFTHSM2_CONF="),
        "this is the agent's environment"
    );
    assert!(
        !environ.contains(PASSPHRASE) && !environ.contains(PIN) && !environ.contains("SENTINEL"),
        "a secret is in the background agent's /proc/{pid}/environ, in {:?}",
        names_holding(&environ, "SENTINEL")
    );
    drop(client);
    send_signal(pid, libc::SIGTERM);
    wait_until("the background agent stopped", PROCESS_TIMEOUT, || {
        process_gone(pid)
    });

    // In front (-D), the same secrets from the same variables.
    let agent = TestAgent::start(
        AgentOptions::new()
            .passphrase_env(PASSPHRASE)
            .pkcs11(&token),
    );
    agent
        .client()
        .generate_key("tok2", Some("pkcs11"), None)
        .expect("the foreground agent has the PIN");
    let pid = agent.pid().expect("running");
    let environ = proc_environ(pid);
    assert!(
        environ.contains("SOFTHSM2_CONF="),
        "this is the agent's environment"
    );
    assert!(
        !environ.contains("SENTINEL"),
        "a secret is in the foreground agent's /proc/{pid}/environ, in {:?}",
        names_holding(&environ, "SENTINEL")
    );
}

/// Whether `pid` is non-dumpable, seen from outside: the kernel then makes its /proc files
/// root's, whoever it runs as (meaningful for a process that does not run as root).
fn proc_files_belong_to_root(pid: u32) -> bool {
    fs::metadata(format!("/proc/{pid}/environ"))
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// The background start (the launcher) reads the passphrase and then waits at the PIN prompt
/// as long as the user takes: meanwhile its /proc/<pid>/environ must not show the passphrase,
/// and it must be non-dumpable (another process of the same user cannot read its memory or
/// environment). Run as an unprivileged user, whose /proc files are its own unless it is
/// non-dumpable.
#[test]
fn the_launcher_is_non_dumpable_and_wiped_while_it_asks_for_the_pin() {
    use std::io::Read;
    const PASSPHRASE: &str = "pass-SENTINEL-launch-7e";
    let (uid, _) = other_user();
    dpop_tests::require_tool("script", &["--version"], "bsdutils");
    let dir = new_temp_dir();
    set_mode(dir.path(), 0o755);
    let marker = dir.path().join("data-launcher-marker");
    let command = format!(
        "setpriv --reuid={uid} --regid={uid} --clear-groups -- {} -a {} --data-dir {} \
         --pkcs11-module {} --pkcs11-token some-token",
        binaries().agent.display(),
        dir.path().join("agent.sock").display(),
        marker.display(),
        dpop_tests::pkcs11_module().display(),
    );
    let mut script = Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .env("DPOP_AGENT_PASSPHRASE", PASSPHRASE)
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .env("HOME", dir.path())
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("running script(1)");
    struct KillChild(std::process::Child);
    impl Drop for KillChild {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut stdout = script.stdout.take().expect("piped");
    let script = KillChild(script);
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("PIN for the PKCS#11") {
        let n = stdout.read(&mut buf).expect("reading the terminal");
        assert!(n > 0, "no PIN prompt: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    // The launcher: our dpop-agent binary with the marker in its command line.
    let launcher = fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == binaries().agent)
                && fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("data-launcher-marker"))
        })
        .expect("the launcher process waiting at the prompt");
    let status = fs::read_to_string(format!("/proc/{launcher}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some(&uid.to_string())),
        "the launcher runs as uid {uid}: {status}"
    );
    assert!(
        proc_files_belong_to_root(launcher),
        "the launcher (uid {uid}) is non-dumpable: its /proc files are root's"
    );
    let environ = proc_environ(launcher);
    assert!(
        environ.contains("XDG_CONFIG_HOME="),
        "this is the launcher's environment"
    );
    assert!(
        !environ.contains("SENTINEL"),
        "the passphrase is in the waiting launcher's /proc/{launcher}/environ, in {:?}",
        names_holding(&environ, "SENTINEL")
    );
    // Another process of the same user cannot read it either.
    let peek = command_as_other_user("cat")
        .arg(format!("/proc/{launcher}/environ"))
        .output()
        .unwrap();
    assert!(
        !peek.status.success() && !String::from_utf8_lossy(&peek.stdout).contains("SENTINEL"),
        "uid {uid} reads its own launcher's environment"
    );
    drop(script);
    send_signal(launcher, libc::SIGKILL);
}

/// The path a background start printed for `eval` (`DPOP_AUTH_SOCK='...';`).
fn started_socket(stdout: &str) -> std::path::PathBuf {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("DPOP_AUTH_SOCK='"))
        .and_then(|rest| rest.split("';").next())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| panic!("the start printed DPOP_AUTH_SOCK: {stdout}"))
}

/// Without `XDG_RUNTIME_DIR` the socket used to be `/tmp/dpop-agent-<uid>/agent.sock`: a path
/// that another user could create first (the agent then refused to start) or be pointed to.
/// Now each agent makes its own `$TMPDIR/dpop-XXXXXXXXXX/agent.<pid>` (0700, as ssh-agent
/// does), prints it, and removes it when it stops.
#[test]
fn without_a_runtime_directory_each_agent_gets_an_unpredictable_private_directory() {
    let (uid, gid) = other_user();
    let tmp = new_temp_dir();
    // Another user squats the old predictable name (no effect on a random one).
    let squat = tmp
        .path()
        .join(format!("dpop-agent-{}", unsafe { libc::geteuid() }));
    fs::create_dir(&squat).unwrap();
    std::os::unix::fs::chown(&squat, Some(uid), Some(gid)).unwrap();
    let start = |name: &str| {
        let out = run_ok(
            Command::new(&binaries().agent)
                .arg("--data-dir")
                .arg(tmp.path().join(name))
                .env_remove("XDG_RUNTIME_DIR")
                .env_remove("DPOP_AGENT_PASSPHRASE")
                .env("TMPDIR", tmp.path())
                .env("XDG_CONFIG_HOME", tmp.path().join("config"))
                .stdin(Stdio::null()),
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        (started_socket(&stdout), KillOnDrop(started_pid(&stdout)))
    };
    let (first, first_pid) = start("one");
    let (second, _second_pid) = start("two");
    assert_ne!(first, second, "two agents get two directories");
    for socket in [&first, &second] {
        let dir = socket.parent().unwrap();
        let name = dir.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            dir.parent(),
            Some(tmp.path()),
            "under $TMPDIR: {}",
            socket.display()
        );
        assert!(
            name.len() == "dpop-".len() + 10
                && name.starts_with("dpop-")
                && !name.contains("XXX")
                && dir != squat,
            "a random dpop-XXXXXXXXXX directory: {}",
            socket.display()
        );
        assert!(
            socket
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("agent."),
            "the socket is agent.<pid>: {}",
            socket.display()
        );
        assert_eq!(mode(dir), 0o700, "{} is 0700", dir.display());
        assert_eq!(mode(socket), 0o600, "{} is 0600", socket.display());
        // SAFETY: geteuid has no preconditions.
        assert_eq!(fs::metadata(dir).unwrap().uid(), unsafe { libc::geteuid() });
        let mut client = dpop_client::blocking::Client::connect(socket)
            .unwrap_or_else(|e| panic!("an agent serves {}: {e}", socket.display()));
        client.hello().unwrap();
    }

    // -k stops the agent and its directory goes with its socket.
    run_ok(
        Command::new(&binaries().agent)
            .arg("-k")
            .env("DPOP_AUTH_SOCK", &first),
    );
    wait_until("the stopped agent exited", PROCESS_TIMEOUT, || {
        process_gone(first_pid.0)
    });
    assert!(
        !first.parent().unwrap().exists(),
        "the private directory {} is removed at stop",
        first.parent().unwrap().display()
    );
}

/// Runs a background start in `dir` with `args`; returns its output (the agent, if it started,
/// is stopped by the returned guard).
fn background_start(dir: &Path, args: &[&std::ffi::OsStr]) -> (Output, Option<KillOnDrop>) {
    let out = Command::new(&binaries().agent)
        .args(args)
        .env_remove("DPOP_AGENT_PASSPHRASE")
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .stdin(Stdio::null())
        .output()
        .expect("running dpop-agent");
    let guard = out
        .status
        .success()
        .then(|| KillOnDrop(started_pid(&String::from_utf8_lossy(&out.stdout))));
    (out, guard)
}

/// The background start used to lose its start-up warnings (they went to the detached
/// child's log only, or nowhere): now they reach the user's terminal before the child detaches
/// and the log file too. The log file is created 0600 and a symbolic link in its place is
/// refused; a passphrase file that others can read gets a warning, as a PIN file does.
#[test]
fn background_start_shows_its_warnings_and_keeps_its_log_private() {
    // A saved key that an agent without the passphrase cannot load.
    let mut saved = TestAgent::start(AgentOptions::new().passphrase_env("correct horse"));
    saved.client().generate_key("saved", None, None).unwrap();
    saved.stop();
    let data = saved.data_dir();
    let dir = new_temp_dir();
    let log = dir.path().join("agent.log");
    let (out, _agent) = background_start(
        dir.path(),
        &[
            "-a".as_ref(),
            dir.path().join("a.sock").as_os_str(),
            "--data-dir".as_ref(),
            data.as_os_str(),
            "--log-file".as_ref(),
            log.as_os_str(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the agent starts: {stderr}");
    let log_text = fs::read_to_string(&log).unwrap();
    for (what, text) in [
        ("the launcher's standard error", &*stderr),
        ("the log file", &log_text),
    ] {
        assert!(
            text.contains("no passphrase"),
            "{what} warns that keys are memory-only:\n{text}"
        );
        assert!(
            text.contains("1 software key file(s)") && text.contains("not loaded"),
            "{what} warns about the saved key file that was not loaded:\n{text}"
        );
    }
    assert!(
        stderr
            .lines()
            .all(|l| l.starts_with("dpop-agent: warning: ")),
        "only warnings, each on its own line, reach the terminal:\n{stderr}"
    );
    assert_eq!(mode(&log), 0o600, "the log file is created 0600");

    // A symbolic link where the log file should be: refused, its target untouched.
    let target = dir.path().join("elsewhere");
    fs::write(&target, b"").unwrap();
    let link = dir.path().join("link.log");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let (out, _none) = background_start(
        dir.path(),
        &[
            "-a".as_ref(),
            dir.path().join("b.sock").as_os_str(),
            "--data-dir".as_ref(),
            dir.path().join("data-b").as_os_str(),
            "--log-file".as_ref(),
            link.as_os_str(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a symlinked log file fails the start"
    );
    assert!(
        stderr.contains("symbolic link"),
        "and the agent says why: {stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("DPOP_AUTH_SOCK"),
        "nothing for eval to export"
    );
    assert_eq!(
        fs::read(&target).unwrap(),
        b"",
        "the link's target is untouched"
    );

    // A passphrase file that group and others can read.
    let passphrase = dir.path().join("passphrase");
    fs::write(&passphrase, b"correct horse\n").unwrap();
    set_mode(&passphrase, 0o644);
    let (out, _agent) = background_start(
        dir.path(),
        &[
            "-a".as_ref(),
            dir.path().join("c.sock").as_os_str(),
            "--data-dir".as_ref(),
            data.as_os_str(),
            "--passphrase-file".as_ref(),
            passphrase.as_os_str(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the agent starts: {stderr}");
    assert!(
        stderr.contains("passphrase file is readable by group or others"),
        "a readable passphrase file gets a warning: {stderr}"
    );
    assert!(
        !stderr.contains("correct horse"),
        "the warning does not show the passphrase"
    );
    let mut client = dpop_client::blocking::Client::connect(dir.path().join("c.sock")).unwrap();
    assert_eq!(
        client.list_keys().unwrap()[0].label,
        "saved",
        "with the passphrase, the saved key is loaded"
    );
}
