//! Who the agent and its clients trust, and where secrets may not linger: clients refuse a
//! listener of another user, the socket directory is unpredictable without a runtime directory,
//! the passphrase and PIN stay out of `/proc/<pid>/environ`, the launcher is non-dumpable, the
//! background start shows its warnings and keeps its log private, and `dpop` ends quietly when
//! its output pipe closes.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use dpop_tests::{
    AgentOptions, KillOnDrop, PROCESS_TIMEOUT, TestAgent, binaries, command_as_other_user, mode,
    new_temp_dir, other_user, process_gone, run_ok, send_signal, set_mode, wait_until,
};

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
        client.generate_key(&format!("key-{i:03}")).unwrap();
    }

    // Deterministic: the pipe's read end is closed before dpop writes its first byte.
    let mut fds = [0; 2];
    // Close-on-exec: another test's child, spawned meanwhile, must not inherit the read end (a
    // reader left would block dpop instead of failing its write).
    // SAFETY: pipe2(2) fills the two descriptors we pass; we own them from here on.
    assert_eq!(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) },
        0,
        "pipe2(2)"
    );
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
    let soft = client.generate_key("soft").unwrap();
    assert!(soft.persistent, "the background agent has the passphrase");
    client
        .generate_key(dpop_client::NewKey::new("tok").backend("pkcs11"))
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
        .generate_key(dpop_client::NewKey::new("tok2").backend("pkcs11"))
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
    saved.client().generate_key("saved").unwrap();
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
