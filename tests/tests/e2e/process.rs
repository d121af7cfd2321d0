//! The agent as a process: peer-uid check, socket and directory permissions, signals,
//! background start with `eval "$(dpop-agent)"` and `-k`, and secrets kept out of logs.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

use dpop_tests::{
    AgentOptions, KillOnDrop, PROCESS_TIMEOUT, TestAgent, binaries, command_as_other_user, mode,
    new_temp_dir, other_user, process_gone, run_ok, set_mode, wait_timeout, wait_until,
    write_private_file,
};

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
    agent.client().generate_key("mine").unwrap();
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

/// A SIGTERM the moment the socket appears (a service manager stopping an agent it just
/// started) still stops the agent cleanly: the signal waits for the handler rather than kill
/// the agent with its socket file left behind.
#[test]
fn sigterm_right_after_the_socket_appears_still_removes_it() {
    for attempt in 0..20 {
        let dir = new_temp_dir();
        let socket = dir.path().join("agent.sock");
        let mut child = Command::new(&binaries().agent)
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env_remove("DPOP_AGENT_PASSPHRASE")
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning dpop-agent");
        let child_guard = KillOnDrop(child.id());
        while !socket.exists() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "attempt {attempt}: the agent exited before listening"
            );
            std::thread::yield_now();
        }
        dpop_tests::send_signal(child.id(), libc::SIGTERM);
        let status = wait_timeout(&mut child, PROCESS_TIMEOUT).expect("the agent stops");
        drop(child_guard);
        assert!(
            status.success(),
            "attempt {attempt}: SIGTERM during start-up ends the agent cleanly, got {status}"
        );
        assert!(
            !socket.exists(),
            "attempt {attempt}: the socket file is removed"
        );
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
    // Invalid URLs are named in errors and debug logs without their user info and query.
    agent.raw_request(br#"{"id":4,"op":"sign_proof","key":"gen","htm":"GET","htu":"https://user:pw-SENTINEL@rs.example/"}"#);
    agent.raw_request(br#"{"id":5,"op":"sign_proof","key":"gen","htm":"GET","htu":"ftp://rs.example/?t=SENTINEL"}"#);
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
