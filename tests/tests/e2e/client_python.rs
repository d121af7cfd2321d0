//! The Python client (clients/python) against the real world of [`ClientWorld`]: its pytest
//! suite runs in a virtual environment made once under the target directory
//! (`<target>/py-venv`: `python3 -m venv`, the pinned test requirements, then
//! `pip install clients/python[requests,httpx]`, which also proves the package installs; mypy's
//! cache for tests/test_types.py lives there too).
//! The test passes only when pytest exits 0 with exactly [`PYTEST_TESTS`] tests passed and
//! none skipped, so a suite that collects nothing, or less than it should, fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use dpop_tests::clients::ClientWorld;
use dpop_tests::{KillOnDrop, new_temp_dir, require_tool, wait_timeout, workspace_root};

/// How many tests clients/python/tests holds (update it with the suite).
const PYTEST_TESTS: usize = 39;

/// The longest the pytest run may take (it takes a few seconds).
const PYTEST_TIMEOUT: Duration = Duration::from_secs(180);

/// The target directory of this test executable (`<target>/<profile>/deps/e2e-…`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    exe.ancestors()
        .nth(3)
        .unwrap_or_else(|| panic!("cannot tell the target directory from {}", exe.display()))
        .to_owned()
}

fn run(command: &mut Command, what: &str) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run it: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The venv's python, with the test requirements and this checkout's package installed.
fn python_venv() -> PathBuf {
    require_tool("python3", &["--version"], "python3");
    let package = workspace_root().join("clients/python");
    let venv = target_dir().join("py-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        run(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "python3 -m venv (apt-get install python3-venv)",
        );
    }
    // The pinned tools, once per version of the list (pip's own check takes seconds).
    let requirements = package.join("requirements-test.txt");
    let wanted = std::fs::read_to_string(&requirements).expect("reading requirements-test.txt");
    let stamp = venv.join("requirements-test.txt");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        run(
            Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--disable-pip-version-check",
                    "-r",
                ])
                .arg(&requirements),
            "pip install -r clients/python/requirements-test.txt",
        );
        std::fs::write(&stamp, &wanted).expect("writing the venv's requirements stamp");
    }
    // This checkout's package, with the extras as users install it (they are in already: no
    // network). Built from a copy, so the checkout gets no build/ or egg-info; pip always
    // reinstalls a local directory.
    let copy = new_temp_dir();
    for part in ["pyproject.toml", "README.md", "src"] {
        run(
            Command::new("cp")
                .arg("-R")
                .arg(package.join(part))
                .arg(copy.path()),
            "copying clients/python",
        );
    }
    run(
        Command::new(&python)
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .arg("--no-build-isolation")
            .arg(format!("{}[requests,httpx]", copy.path().display())),
        "pip install clients/python[requests,httpx]",
    );
    python
}

/// An attribute of the first `<testsuite>` element of a JUnit XML report.
fn junit_count(xml: &str, attribute: &str) -> usize {
    let suite = &xml[xml.find("<testsuite ").expect("a <testsuite> element")..];
    let suite = &suite[..suite.find('>').expect("a complete <testsuite> tag")];
    let start = suite
        .find(&format!(" {attribute}=\""))
        .unwrap_or_else(|| panic!("<testsuite> has no {attribute}: {suite}"))
        + attribute.len()
        + 3;
    let value = &suite[start..];
    value[..value.find('"').expect("a closing quote")]
        .parse()
        .unwrap_or_else(|e| panic!("{attribute} is not a count: {e}"))
}

/// The last `lines` lines of a log.
fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn run_pytest(python: &Path, world: &ClientWorld) -> (String, String) {
    let report_dir = new_temp_dir();
    let report = report_dir.path().join("junit.xml");
    let mut child = Command::new(python)
        // -W error: a leaked socket or connection (ResourceWarning) fails the suite too.
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-rfEs",
            "-W",
            "error",
        ])
        .arg(format!("--junitxml={}", report.display()))
        .arg(workspace_root().join("clients/python/tests"))
        .current_dir(report_dir.path())
        .envs(world.env())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env(
            "DPOP_TEST_MYPY_CACHE",
            python
                .parent()
                .and_then(Path::parent)
                .unwrap()
                .join("mypy-cache"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running pytest");
    let _guard = KillOnDrop(child.id());
    let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let read = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let (stdout, stderr) = (read(Box::new(stdout)), read(Box::new(stderr)));
    let status = wait_timeout(&mut child, PYTEST_TIMEOUT);
    let _ = child.kill();
    let output = format!(
        "{}{}",
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default()
    );
    let status = status.unwrap_or_else(|| panic!("pytest ran over {PYTEST_TIMEOUT:?}:\n{output}"));
    assert!(
        status.success(),
        "pytest failed ({status}):\n{output}\nthe agent's log ends:\n{}\nthe server's log ends:\n{}",
        tail(&world.agent.stderr_log(), 30),
        tail(&world.server.log(), 30)
    );
    let xml = std::fs::read_to_string(&report).expect("pytest's JUnit report");
    (xml, output)
}

#[test]
fn the_python_client_passes_its_suite_against_the_agent_and_resource_server() {
    let python = python_venv();
    let world = ClientWorld::start();
    let (xml, output) = run_pytest(&python, &world);
    let tests = junit_count(&xml, "tests");
    let failed = junit_count(&xml, "failures") + junit_count(&xml, "errors");
    let skipped = junit_count(&xml, "skipped");
    assert_eq!(skipped, 0, "no test may be skipped:\n{output}");
    assert_eq!(failed, 0, "{output}");
    assert_eq!(
        tests, PYTEST_TESTS,
        "pytest ran {tests} tests, the suite has {PYTEST_TESTS}:\n{output}"
    );
}
