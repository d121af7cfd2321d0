#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets) for SECONDS each and prints the executions
# per target. Needs nightly (rustup) and cargo-fuzz. Corpora grow in fuzz/corpus/<target>
# (git-ignored), seeded from fuzz/seeds/<target>; crashes land in fuzz/artifacts/<target>.
#
#   scripts/fuzz.sh 5      # smoke: 5 s per target
#   scripts/fuzz.sh 300    # a real run
set -euo pipefail

secs=${1:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"
targets=(agent_request verify_structured verify_raw htu pkcs11_uri pem_import)

# PEM seeds are made here, not committed: private keys do not belong in the repository.
pem_seeds=seeds/pem_import
mkdir -p "$pem_seeds"
if command -v openssl >/dev/null && [ ! -e "$pem_seeds/.generated" ]; then
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$pem_seeds/p256_pkcs8.pem" 2>/dev/null
    openssl ecparam -name secp384r1 -genkey -out "$pem_seeds/p384_sec1_params.pem" 2>/dev/null
    openssl ec -in "$pem_seeds/p256_pkcs8.pem" -out "$pem_seeds/p256_sec1.pem" 2>/dev/null
    openssl genpkey -algorithm ED25519 -out "$pem_seeds/ed25519.pem" 2>/dev/null
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pem_seeds/rsa_pkcs8.pem" 2>/dev/null
    openssl rsa -in "$pem_seeds/rsa_pkcs8.pem" -traditional -out "$pem_seeds/rsa_pkcs1.pem" 2>/dev/null
    # One import_key request for the agent target, with the P-256 key.
    pem_json=$(python3 -c 'import json,sys; print(json.dumps(open(sys.argv[1]).read()))' "$pem_seeds/p256_pkcs8.pem")
    printf '{"id":11,"op":"import_key","label":"imported","pem":%s}\n{"id":12,"op":"sign_proof","key":"imported","htm":"GET","htu":"https://a.example/"}\n' \
        "$pem_json" > seeds/agent_request/import_key.generated
    touch "$pem_seeds/.generated"
fi

cargo +nightly fuzz build --debug-assertions >/dev/null

total=0
failed=()
printf '%-18s %14s %10s\n' target executions exec/s
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "seeds/$t"
    log=$(mktemp)
    status=0
    cargo +nightly fuzz run --debug-assertions "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 -rss_limit_mb=2048 -timeout=10 \
        >"$log" 2>&1 || status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
    runs=${runs:-0}
    total=$((total + runs))
    printf '%-18s %14s %10s\n' "$t" "$runs" "$((runs / (secs > 0 ? secs : 1)))"
    if [ "$status" -ne 0 ]; then
        failed+=("$t")
        grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -n 20 >&2 || true
    fi
    rm -f "$log"
done
printf '%-18s %14s\n' total "$total"
if [ "${#failed[@]}" -ne 0 ]; then
    echo "crashes in: ${failed[*]} (see fuzz/artifacts/)" >&2
    exit 1
fi
