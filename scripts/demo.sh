#!/usr/bin/env bash
# The main job in one command: build dpop-agent, start it on the software backend, make a
# key and print a DPoP proof (then verify it, and stop the agent).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p dpop-agent -p dpop-cli
bin="$PWD/target/release"

work=$(mktemp -d)
trap 'kill "${DPOP_AGENT_PID:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
# Memory-only software keys for the demo (set DPOP_AGENT_PASSPHRASE to keep keys on disk).
agent_env=$("$bin/dpop-agent" -a "$work/agent.sock" --data-dir "$work/data")
eval "$agent_env" >/dev/null

"$bin/dpop" keys generate --key demo >&2
proof=$("$bin/dpop" proof --key demo --method GET --url https://api.example.com/v1/items \
    --access-token demo-access-token)
echo "$proof"
"$bin/dpop" verify --proof "$proof" --method GET --url https://api.example.com/v1/items \
    --access-token demo-access-token >&2
"$bin/dpop-agent" -k >/dev/null
