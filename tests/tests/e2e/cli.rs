//! The `dpop` command line as a new user meets it: names and versions, completions and man
//! pages for both programs, one way to name a key (`--key`, the only key by default), a key
//! list whose columns line up, a confirmed delete of a token key, status / lock / unlock, and
//! policies set from the command line.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use dpop_tests::agent::Askpass;
use dpop_tests::{
    AgentOptions, SoftHsmToken, TestAgent, binaries, new_temp_dir, run_ok, verify_proof,
};

const URL: &str = "https://api.example.com/v1/items";

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `dpop ARGS` against `agent` with `input` on standard input.
fn dpop_with_input(agent: &TestAgent, args: &[&str], input: &str) -> Output {
    let mut child = agent
        .dpop_command()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning dpop");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn versions_completions_and_man_pages() {
    let version = text(&run_ok(Command::new(&binaries().dpop).arg("--version")));
    assert!(version.starts_with("dpop 0."), "{version}");
    let version = text(&run_ok(Command::new(&binaries().agent).arg("--version")));
    assert!(version.starts_with("dpop-agent 0."), "{version}");

    for (program, args, name) in [
        (&binaries().dpop, vec!["completions", "bash"], "dpop"),
        (
            &binaries().agent,
            vec!["--completions", "bash"],
            "dpop-agent",
        ),
    ] {
        let script = text(&run_ok(Command::new(program).args(&args)));
        let function = format!("_{}", name.replace('-', "__"));
        assert!(
            script.contains(&format!(
                "complete -F {function} -o nosort -o bashdefault -o default {name}"
            )),
            "{script}"
        );
        // bash reads it without a syntax error.
        let dir = dpop_tests::new_temp_dir();
        let path = dir.path().join("completion.bash");
        std::fs::write(&path, &script).unwrap();
        run_ok(Command::new("bash").arg("-n").arg(&path));
    }
    let zsh = text(&run_ok(
        Command::new(&binaries().dpop).args(["completions", "zsh"]),
    ));
    assert!(zsh.starts_with("#compdef dpop"), "{zsh}");

    let man = text(&run_ok(Command::new(&binaries().dpop).arg("man")));
    assert!(man.contains(".TH dpop 1"), "{man}");
    assert!(man.contains("keys"), "the man page lists the commands");
    let man = text(&run_ok(Command::new(&binaries().agent).arg("--man")));
    assert!(man.contains(".TH dpop-agent 1"), "{man}");
    assert!(man.contains("reuse"), "the man page lists the flags");
}

#[test]
fn one_way_to_name_a_key_and_the_only_key_by_default() {
    let agent = TestAgent::start(AgentOptions::new());
    agent.dpop_ok(&["keys", "generate", "--key", "only"]);
    let proof = agent.dpop_ok(&["proof", "-X", "GET", "--url", URL]);
    let key = agent.client().list_keys().unwrap().remove(0);
    assert_eq!(verify_proof(proof.trim(), "GET", URL, None).jkt, key.jkt);
    assert_eq!(agent.dpop_ok(&["thumbprint"]).trim(), key.jkt);
    assert!(agent.dpop_ok(&["jwk"]).contains("\"crv\":\"P-256\""));

    // The old spelling still works.
    agent.dpop_ok(&[
        "keys",
        "generate",
        "--label",
        "a-much-longer-label-than-the-other",
    ]);
    let out = agent.dpop(&["proof", "-X", "GET", "--url", URL]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--key LABEL"), "{}", stderr(&out));
    agent.dpop_ok(&["proof", "--key", "only", "-X", "GET", "--url", URL]);

    // The list's columns line up whatever the label lengths.
    let list = agent.dpop_ok(&["keys", "list"]);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 3, "{list}");
    let column = lines[0].find("JKT").expect("a JKT column");
    for line in &lines[1..] {
        let jkt = line.split_whitespace().last().unwrap();
        assert_eq!(line.find(jkt), Some(column), "misaligned:\n{list}");
    }

    // Delete by --key, or by the label alone as before.
    agent.dpop_ok(&["keys", "delete", "--key", "only"]);
    agent.dpop_ok(&["keys", "delete", "a-much-longer-label-than-the-other"]);
    assert!(agent.client().list_keys().unwrap().is_empty());
}

#[test]
fn deleting_a_token_key_needs_a_yes() {
    let token = SoftHsmToken::create("cli-delete", "pin-Qx83Zt7w", "so-Mf92Lk4v");
    let agent = TestAgent::start(AgentOptions::new().pkcs11(&token));
    agent.dpop_ok(&["keys", "generate", "--key", "hsm", "--backend", "pkcs11"]);
    let out = agent.dpop(&["keys", "delete", "--key", "hsm"]);
    assert!(!out.status.success(), "no terminal, no --yes: refused");
    assert!(stderr(&out).contains("--yes"), "{}", stderr(&out));
    assert_eq!(
        agent.client().list_keys().unwrap().len(),
        1,
        "nothing deleted"
    );
    agent.dpop_ok(&["keys", "delete", "--key", "hsm", "--yes"]);
    assert!(agent.client().list_keys().unwrap().is_empty());
}

#[test]
fn status_lock_and_unlock_from_the_command_line() {
    let agent = TestAgent::start(AgentOptions::new());
    agent.dpop_ok(&["keys", "generate", "--key", "k"]);
    let status = agent.dpop_ok(&["status"]);
    assert!(status.contains("locked:   no"), "{status}");
    assert!(
        status.contains(&format!("pid {}", agent.pid().unwrap())),
        "{status}"
    );

    let out = dpop_with_input(&agent, &["lock"], "s3cret words\n");
    assert!(out.status.success(), "{}", stderr(&out));
    let status: serde_json::Value =
        serde_json::from_str(&agent.dpop_ok(&["status", "--json"])).unwrap();
    assert_eq!(status["locked"], true);
    let out = agent.dpop(&["proof", "-X", "GET", "--url", URL]);
    assert!(stderr(&out).contains("locked"), "{}", stderr(&out));

    let out = dpop_with_input(&agent, &["unlock"], "wrong\n");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("wrong_passphrase"),
        "{}",
        stderr(&out)
    );
    let out = dpop_with_input(&agent, &["unlock"], "s3cret words\n");
    assert!(out.status.success(), "{}", stderr(&out));
    agent.dpop_ok(&["proof", "-X", "GET", "--url", URL]);
}

#[test]
fn policies_from_the_command_line() {
    // Clearing a policy is a loosening: it needs the user's yes (issue 22, item 2).
    let dir = new_temp_dir();
    let yes = Askpass::new(dir.path(), "yes", 0);
    let agent = TestAgent::start(AgentOptions::new().env("DPOP_ASKPASS", yes.path()));
    agent.dpop_ok(&[
        "keys",
        "generate",
        "--key",
        "api",
        "--allow-origin",
        "https://api.example.com",
        "--allow-origin",
        "https://*.svc.example.com",
        "--lifetime",
        "8h",
    ]);
    let list = agent.dpop_ok(&["keys", "list"]);
    assert!(
        list.contains("origins=https://api.example.com,https://*.svc.example.com"),
        "{list}"
    );
    assert!(
        list.contains("expires in 7h") || list.contains("expires in 8h"),
        "{list}"
    );
    agent.dpop_ok(&["proof", "-X", "GET", "--url", URL]);
    let out = agent.dpop(&["proof", "-X", "GET", "--url", "https://evil.example.com/"]);
    assert!(
        stderr(&out).contains("origin_not_allowed"),
        "{}",
        stderr(&out)
    );

    let shown = agent.dpop_ok(&["keys", "policy"]);
    assert!(
        shown.contains("allow origin  https://api.example.com"),
        "{shown}"
    );
    let cleared: serde_json::Value =
        serde_json::from_str(&agent.dpop_ok(&["keys", "policy", "--clear", "--json"])).unwrap();
    assert_eq!(cleared["policy"], serde_json::json!({}));
    let asked = yes.questions();
    assert!(
        asked.len() == 1 && asked[0].contains("allow-origin"),
        "one question naming the change: {asked:?}"
    );
    agent.dpop_ok(&["proof", "-X", "GET", "--url", "https://evil.example.com/"]);

    let out = agent.dpop(&["keys", "policy", "--lifetime", "soon"]);
    assert!(stderr(&out).contains("not a lifetime"), "{}", stderr(&out));
}

#[test]
fn a_confirm_remember_beyond_the_agents_bound_is_refused_before_sending() {
    let agent = TestAgent::start(AgentOptions::new());
    agent.dpop_ok(&["keys", "generate", "--key", "api"]);
    let year = dpop_protocol::MAX_CONFIRM_REMEMBER_SECS.to_string();
    for (args, too_long) in [
        (
            vec!["keys", "policy", "--confirm", "--confirm-remember"],
            "366d",
        ),
        (
            vec![
                "keys",
                "generate",
                "--key",
                "other",
                "--confirm",
                "--confirm-remember",
            ],
            "18446744073709551615",
        ),
    ] {
        let mut args = args.clone();
        args.push(too_long);
        let out = agent.dpop(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("--confirm-remember") && err.contains("a year") && err.contains(&year),
            "{err}"
        );
        // Refused while reading the command line: with no agent to talk to, the same answer.
        let out = agent
            .dpop_command()
            .env("DPOP_AUTH_SOCK", agent.dir().join("no-such.sock"))
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains("a year"), "{}", stderr(&out));
    }
    let list = agent.dpop_ok(&["keys", "list"]);
    assert!(
        !list.contains("other") && !list.contains("confirm"),
        "{list}"
    );
    // A year exactly is taken.
    agent.dpop_ok(&["keys", "policy", "--confirm", "--confirm-remember", "365d"]);
    let shown = agent.dpop_ok(&["keys", "policy", "--json"]);
    assert!(
        shown.contains(&format!("\"confirm_remember_secs\": {year}")),
        "{shown}"
    );
}
