//! The SoftHSM2 recipes of `softhsm/README.md` and `README.md`, run as written (with the
//! binaries under test on `PATH` and every directory in a temporary home).

use std::path::Path;
use std::process::{Command, Stdio};

use dpop_tests::pkcs11::*;
use dpop_tests::{
    POLL_INTERVAL, PROCESS_TIMEOUT, binaries, new_temp_dir, pkcs11_module, poll_until,
    process_gone, require_tool, send_signal, verify_proof, wait_timeout, wait_until,
    workspace_root,
};

/// A command from a README code block, run by `sh`; `/tmp/hsm` becomes `hsm_dir` and the
/// SoftHSM2 module path the module under test.
fn readme_block(readme: &str, first_line_contains: &str) -> Vec<String> {
    let path = workspace_root().join(readme);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{readme}: {e}"));
    let mut in_block = false;
    let mut block = Vec::new();
    for line in text.lines() {
        if line.starts_with("```") {
            if in_block
                && block
                    .iter()
                    .any(|l: &String| l.contains(first_line_contains))
            {
                return block;
            }
            in_block = line == "```sh";
            block.clear();
        } else if in_block {
            block.push(line.to_owned());
        }
    }
    panic!("{readme} has no sh block with {first_line_contains:?}")
}

/// The environment of a README recipe: binaries on PATH, HOME and XDG directories inside
/// `home`, no agent of the caller's.
fn recipe_command(home: &Path, script: &str) -> Command {
    let bins = binaries();
    let bin_dir = bins.agent.parent().expect("binary directory");
    assert_eq!(
        bins.dpop.parent(),
        Some(bin_dir),
        "dpop and dpop-agent side by side"
    );
    let run = home.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(script)
        .current_dir(workspace_root())
        .env("PATH", path)
        .env("HOME", home)
        .env("XDG_RUNTIME_DIR", &run)
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env_remove("SOFTHSM2_CONF")
        .env_remove("DPOP_AUTH_SOCK")
        .env_remove("DPOP_AGENT_PID")
        .env_remove("DPOP_AGENT_PASSPHRASE")
        .env_remove("RUST_LOG")
        .env_remove("PIN")
        .stdin(Stdio::null());
    command
}

fn adapt_recipe(lines: &[String], hsm_dir: &Path) -> Vec<String> {
    let module = pkcs11_module();
    lines
        .iter()
        .filter(|l| !l.trim_start().starts_with("sudo "))
        .map(|l| {
            l.replace("/tmp/hsm", &hsm_dir.display().to_string())
                .replace(
                    "/usr/lib/softhsm/libsofthsm2.so",
                    &module.display().to_string(),
                )
        })
        .collect()
}

/// softhsm/README.md's recipe as written (token by make-token.sh, SOFTHSM2_CONF exported, the
/// agent in the foreground with the documented flags, PIN=1234 in its environment): a token
/// key's proof verifies.
#[test]
fn softhsm_readme_recipe_works() {
    require_tool("softhsm2-util", &["--version"], "softhsm2");
    let home = new_temp_dir();
    let hsm = home.path().join("hsm");
    let recipe = adapt_recipe(&readme_block("softhsm/README.md", "make-token.sh"), &hsm);
    assert_eq!(
        recipe.len(),
        2,
        "make the token, start the agent: {recipe:?}"
    );
    assert!(recipe[1].starts_with("dpop-agent -D "), "{recipe:?}");
    // The agent runs in front: `exec` it so that this test can stop it by its pid.
    let script = format!("set -e\n{}\nexec {}\n", recipe[0], recipe[1]);
    let log = std::fs::File::create(home.path().join("agent.log")).unwrap();
    let mut child = recipe_command(home.path(), &script)
        .env("PIN", "1234")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("running sh");
    struct Stop(u32);
    impl Drop for Stop {
        fn drop(&mut self) {
            if !process_gone(self.0) {
                send_signal(self.0, libc::SIGTERM);
            }
        }
    }
    let _stop = Stop(child.id());
    let socket = home.path().join("run/dpop-agent/agent.sock");
    wait_until(
        format_args!("the recipe's agent listens on {}", socket.display()),
        PROCESS_TIMEOUT,
        || {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "the recipe's agent exited ({status}):\n{}",
                    std::fs::read_to_string(home.path().join("agent.log")).unwrap_or_default()
                );
            }
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        },
    );
    let dpop = |args: &[&str]| {
        let out = Command::new(&binaries().dpop)
            .args(args)
            .env("DPOP_AUTH_SOCK", &socket)
            .output()
            .unwrap();
        assert!(out.status.success(), "dpop {args:?}: {}", stderr_of(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let key = parse_key(&dpop(&[
        "keys",
        "generate",
        "--label",
        "dev",
        "--backend",
        "pkcs11",
        "--alg",
        "ES256",
        "--json",
    ]));
    assert_eq!(key.backend, "pkcs11");
    assert!(
        key.location
            .as_deref()
            .is_some_and(|l| l.starts_with("pkcs11:token=dpop;")),
        "{key:?}"
    );
    let proof = dpop(&["proof", "--key", "dev", "-X", "GET", "--url", URL]);
    let verified = verify_proof(proof.trim(), "GET", URL, None);
    assert_eq!(verified.jkt, key.jkt);
    send_signal(child.id(), libc::SIGTERM);
    let status = wait_timeout(&mut child, PROCESS_TIMEOUT).expect("agent stops");
    assert!(
        status.success(),
        "the agent exited with {status} on SIGTERM"
    );
}

/// README.md's three-line CI recipe as written (make-token.sh, `export PIN=1234`, the agent
/// started in the background by `eval "$(dpop-agent ...)"`), then a token key and a proof
/// through `dpop`, and `dpop-agent -k`.
#[test]
fn readme_ci_recipe_works() {
    require_tool("softhsm2-util", &["--version"], "softhsm2");
    let home = new_temp_dir();
    let hsm = home.path().join("hsm");
    let recipe = adapt_recipe(&readme_block("README.md", "make-token.sh"), &hsm);
    assert_eq!(recipe.len(), 3, "three lines: {recipe:?}");
    let out_dir = home.path();
    // Run from the workspace root (the recipe calls softhsm/make-token.sh); results go to
    // `out_dir`.
    let script = format!(
        "set -e\n{recipe}\necho \"$DPOP_AGENT_PID\" > '{out}/agent.pid'\n\
         trap 'dpop-agent -k > /dev/null' EXIT\n\
         dpop keys generate --label ci --backend pkcs11 --alg ES256 --json > '{out}/key.json'\n\
         dpop proof --key ci -X GET --url '{URL}' > '{out}/proof'\n",
        recipe = recipe.join("\n"),
        out = out_dir.display(),
    );
    let out = recipe_command(out_dir, &script)
        .output()
        .expect("running sh");
    // Whatever happened, no agent is left behind (`-k` signals it and does not wait).
    if let Ok(pid) = std::fs::read_to_string(out_dir.join("agent.pid"))
        && let Ok(pid) = pid.trim().parse::<u32>()
    {
        let gone = poll_until(PROCESS_TIMEOUT, POLL_INTERVAL, || {
            process_gone(pid).then_some(())
        });
        if gone.is_none() {
            send_signal(pid, libc::SIGKILL);
            panic!("dpop-agent -k left the agent {pid} running");
        }
    }
    assert!(
        out.status.success(),
        "the README recipe failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        stderr_of(&out)
    );
    let read = |name: &str| std::fs::read_to_string(out_dir.join(name)).expect("recipe output");
    let key = parse_key(&read("key.json"));
    assert_eq!(key.backend, "pkcs11");
    assert!(
        key.location
            .as_deref()
            .is_some_and(|l| l.starts_with("pkcs11:token=dpop;")),
        "{key:?}"
    );
    let verified = verify_proof(read("proof").trim(), "GET", URL, None);
    assert_eq!(verified.jkt, key.jkt);
}
