#!/usr/bin/env bash
# Soak run of plugind (issue 9; not part of CI): an hour of mixed load with hot reloads and
# kills, plugind's RSS/fds/threads sampled into a CSV, every call past its deadline reported.
#
#   scripts/soak.sh                       # release build, 3600 s
#   scripts/soak.sh --duration 300        # a 5-minute run
#   PROFILE=debug scripts/soak.sh --duration 300 --out /tmp/soak
#
# Options are scripts/soak.py's (--clients, --timeout-ms, --reload-every, --kill-every,
# --sample-every, --out, --seed). Needs python3, perl and node, like `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${PROFILE:-release}
if [ "$profile" = release ]; then
    cargo build --release --workspace
else
    cargo build --workspace
fi
exec python3 scripts/soak.py --profile "$profile" "$@"
