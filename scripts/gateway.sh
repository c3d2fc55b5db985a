#!/usr/bin/env bash
# `make gateway`: plugind on the LLM gateway's plugins, then the gateway host in the foreground.
# Ctrl-C stops both. PLUGIND_SOCKET, GATEWAY_PORT (8088) and PLUGIND_PROFILE (release) are honoured.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${PLUGIND_PROFILE:-release}
state=$PWD/state/gateway
socket=${PLUGIND_SOCKET:-$state/plugind.sock}
port=${GATEWAY_PORT:-8088}
mkdir -p "$state"
PLUGIND_PROFILE=$profile "./target/$profile/plugind" --plugins examples/llm-gateway/plugins \
    --socket "$socket" --state-dir "$state" &
plugind=$!
trap 'kill $plugind 2>/dev/null; wait $plugind 2>/dev/null' EXIT
for _ in $(seq 200); do
    "./target/$profile/pluginctl" --socket "$socket" list >/dev/null 2>&1 && break
    kill -0 $plugind 2>/dev/null || { echo "plugind exited; see above" >&2; exit 1; }
    sleep 0.05
done
cat <<MSG
plugind: socket $socket
gateway: http://127.0.0.1:$port — in another terminal:
  curl -s localhost:$port/v1/chat/completions -H 'Authorization: Bearer demo-key' \\
       -d '{"messages":[{"role":"user","content":"mail me at bob@example.com"}]}'
  ./target/$profile/pluginctl --socket $socket logs -f        # or: trace pii-redactor
MSG
PLUGIND_SOCKET=$socket GATEWAY_PORT=$port node examples/llm-gateway/gateway.mjs
