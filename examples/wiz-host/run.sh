#!/bin/sh
# `make wiz`: plugind on this example's plugins, then the host; exits 0 once the theme plugin has
# registered its theme through the host's `ui` service. Everything is stopped on the way out.
# PLUGIND names the binary (default: target/debug/plugind).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
plugind=${PLUGIND:-$root/target/debug/plugind}
work=$(mktemp -d "${TMPDIR:-/tmp}/wiz-host.XXXXXX")
socket=$work/plugind.sock

"$plugind" --plugins "$here/plugins" --socket "$socket" --state-dir "$work/state" --no-watch 2>"$work/plugind.log" &
pid=$!
status=1
finish() {
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    [ "$status" -eq 0 ] || { echo "wiz-host failed; plugind's log:" >&2; cat "$work/plugind.log" >&2; }
    rm -rf "$work"
}
trap finish EXIT
trap 'exit 130' INT TERM

python3 "$here/host.py" --socket "$socket" --once
status=0
