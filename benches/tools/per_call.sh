#!/bin/sh
# CPU time, context switches and syscalls per call of each process on the call path, under the
# pipelined load of `plugind-bench --load` (see docs/benchmarks.md, "What limits each figure").
#
# usage: benches/tools/per_call.sh plugind|relay|relay-async [DEPTH] [CPUS]     (needs perf; run as root)
#   DEPTH: calls in flight (default 64; 1 = sequential)   CPUS: taskset list (default 0)
set -eu
target=${1:?plugind, relay or relay-async}; depth=${2:-64}; cpus=${3:-0}
bench=$(dirname "$0")/../../target/release/plugind-bench
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
taskset -c "$cpus" "$bench" --load 9 "$depth" "$target" >"$tmp/load" 2>&1 &
client=$!
sleep 2
server=$(sed -n 's/^pid //p' "$tmp/load")
plugins=$(pgrep -P "$server" | paste -sd, -)
for p in "$client" "$server" "$plugins"; do
    perf stat -x, -e task-clock,context-switches -p "$p" -o "$tmp/cpu.$p" -- sleep 5 &
done
perf stat -x, -o "$tmp/sys" -p "$server" -e 'syscalls:sys_enter_read,syscalls:sys_enter_write,syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto,syscalls:sys_enter_epoll_wait' -- sleep 5 &
wait
rate=$(sed -n 's/ calls\/s.*//p' "$tmp/load")
echo "$target: $rate calls/s with $depth in flight on CPUs $cpus (per call, over 5 s)"
for p in "$client" "$server" "$plugins"; do
    case $p in "$client") n=client ;; "$server") n=$target ;; *) n=echo-rust ;; esac
    awk -F, -v n="$n" -v r="$rate" '/task-clock/ {ms = $1} /context-switches/ {cs = $1}
        END {printf "  %-9s cpu %5.2f us  context switches %.3f\n", n, ms * 1000 / (5 * r), cs / (5 * r)}' "$tmp/cpu.$p"
done
awk -F, -v n="$target" -v r="$rate" '/^[0-9]/ {sub("syscalls:sys_enter_", "", $3); s = s sprintf(" %s %.3f", $3, $1 / (5 * r))}
    END {print "  " n " syscalls:" s}' "$tmp/sys"
