#!/usr/bin/env bash
# Flame graph of pyproxy config (b) (header match + 90/10 split + 0% fault, metrics on) under
# wrk -t1 -c50 for ~10 s, origin and wrk on core 0, pyproxy on core 1.
#
#   bash loadtests/bench/profile.sh [--dur 10] [--rate 200]
#
# Writes results/profile-b.svg (flame graph), profile-b.raw.txt (collapsed stacks) and
# profile-b-top.txt (self/total share per function, like `py-spy top`). Installs py-spy into the
# project venv, and wrk/nginx with apt, if missing.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PY=${PYPROXY_BENCH_PYTHON:-$REPO/.venv/bin/python}
[[ -x $PY ]] || { echo "profile.sh: no project venv at $REPO/.venv" >&2; exit 2; }
child=""
cleanup() {
    if [[ -n $child ]] && kill -0 "$child" 2>/dev/null; then
        kill -TERM "$child" 2>/dev/null
        for _ in $(seq 1 100); do kill -0 "$child" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$child" 2>/dev/null && kill -KILL "$child" 2>/dev/null
    fi
    child=""
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM HUP
"$PY" "$HERE/bench.py" profile "$@" &
child=$!
wait "$child"
rc=$?
child=""
exit $rc
