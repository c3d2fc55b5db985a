#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for SECONDS each (default 600), two at a time, niced,
# and prints the executions and findings of each (docs/reliability.md records a run).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly toolchain (`cargo +nightly`), or
# RUSTC_BOOTSTRAP=1 on stable: FUZZ_CARGO="env RUSTC_BOOTSTRAP=1 cargo" scripts/fuzz.sh.
# Corpora grow in fuzz/corpus/TARGET (seeded from fuzz/seeds/TARGET); crashes land in
# fuzz/artifacts/TARGET. Logs: fuzz/logs/TARGET.log.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(frame_decoder jsonrpc_parse manifest_parse control_request)
cargo=${FUZZ_CARGO:-cargo +nightly}
$cargo fuzz build >/dev/null
mkdir -p logs

dict_of() {
    case $1 in
        manifest_parse) echo dict/manifest.dict ;;
        *) echo dict/jsonrpc.dict ;;
    esac
}

run_one() {
    local t=$1
    mkdir -p "corpus/$t" "artifacts/$t"
    cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true
    nice -n 19 $cargo fuzz run "$t" "corpus/$t" -- \
        -max_total_time="$secs" -dict="$(dict_of "$t")" -print_final_stats=1 -rss_limit_mb=4096 \
        >"logs/$t.log" 2>&1 || true
}

running=0
for t in "${targets[@]}"; do
    run_one "$t" &
    running=$((running + 1))
    if [ $running -ge 2 ]; then
        wait -n || true
        running=$((running - 1))
    fi
done
wait

for t in "${targets[@]}"; do
    execs=$(grep -E '^stat::number_of_executed_units' "logs/$t.log" | awk '{print $2}' || true)
    secs_done=$(grep -E '^Done [0-9]+ runs in' "logs/$t.log" | awk '{print $5}' || true)
    cov=$(grep -E '^#[0-9]+' "logs/$t.log" | tail -1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9a-zA-Z]+' || true)
    crashes=$(find "artifacts/$t" -type f 2>/dev/null | wc -l)
    echo "$t: ${execs:-?} execs in ${secs_done:-?} s; ${cov:-?}; artifacts: $crashes"
done
