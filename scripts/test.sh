#!/usr/bin/env bash
# Runs every check and test of dpop-agent. Installs what the tests need when it is missing
# (Debian packages, Python's jwcrypto), so a fresh Debian machine with Rust needs only this.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
# mingw-w64 and wine64: the Windows build (aws-lc-sys needs a C cross-compiler) and its tests
# under Wine (tests/tests/e2e/windows.rs).
for pkg in softhsm2 opensc openssl swtpm swtpm-tools libtss2-dev util-linux passwd mingw-w64 wine64; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
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

echo "== npm ci (tests/interop/oidc-provider)"
(cd tests/interop/oidc-provider && npm ci --no-audit --no-fund --silent)

echo "== cargo fmt"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings
echo "== Windows: clippy (cargo check and its lints) of the client, the CLI and the agent"
cargo clippy --target x86_64-pc-windows-gnu -p dpop-client -p dpop-cli -p dpop-agent -- -D warnings
cargo clippy --target x86_64-pc-windows-gnu -p dpop-client --no-default-features -- -D warnings
echo "== crate boundaries: no cryptography or key backend in the protocol and client crates"
for crate in dpop-protocol dpop-client; do
    if cargo tree -p "$crate" -e normal | grep -E 'aws-lc|cryptoki|tss-esapi'; then
        echo "$crate must not depend on the crates above" >&2
        exit 1
    fi
done
echo "== backends as features: software only (no cryptoki), and a client without tokio"
cargo clippy -p dpop-keys -p dpop-agent --no-default-features --all-targets -- -D warnings
cargo test -p dpop-keys --no-default-features
cargo clippy -p dpop-client --no-default-features -- -D warnings
echo "== cargo test"
cargo test --workspace --all-features --no-fail-fast
echo "== benchmarks, smoke run (cargo bench measures)"
cargo test -p dpop-tests --benches
# The TPM bench needs the feature (libtss2 to build, swtpm to run), like the TPM tests above.
echo "== TPM benchmark, smoke run"
cargo test -p dpop-tests --features tpm --bench tpm
