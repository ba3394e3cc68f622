#!/usr/bin/env bash
# Side-by-side on one broker: celeriac (one worker process) and Python Celery 5.7 (prefork
# -c 2) drain the same number of no-op tasks; prints both and the ratio.
#
#   crates/celeriac-bench/compare-with-celery.sh [--canvas] [N] [BROKER_URL] [RESULTS_REDIS_URL]
#   e.g. ... 20000 redis://127.0.0.1:6379/8
#        ... 20000 amqp://guest:guest@127.0.0.1:5672/%2f redis://127.0.0.1:6379/8
#        ... --canvas 10000 redis://127.0.0.1:6379/8   (a group and a chord of N, a chain
#            of 1000 steps, on each side)
#
# Needs .venv with celery[redis]==5.7.0 (as .ci/run creates). The results database is flushed.
set -euo pipefail
cd "$(dirname "$0")/../.."
CANVAS=0
if [ "${1:-}" = "--canvas" ]; then CANVAS=1; shift; fi
N="${1:-20000}"
URL="${2:-redis://127.0.0.1:6379/8}"
RESULTS="${3:-$URL}"
case "$RESULTS" in redis*) ;; *) echo "results must go to Redis (both sides read them)" >&2; exit 2;; esac
PY="${CELERIAC_PYTHON:-.venv/bin/python}"

"$PY" -c 'import redis, sys; redis.Redis.from_url(sys.argv[1]).flushdb()' "$RESULTS"
cargo build --release -q -p celeriac-bench
if [ "$CANVAS" = 1 ]; then
  STEPS=1000
  echo "== celeriac canvas ($URL, N=$N, chain of $STEPS)"
  ./target/release/celeriac-bench --broker "$URL" --result-backend "$RESULTS" --canvas -n "$N" --chain-steps "$STEPS"
  "$PY" -c 'import redis, sys; redis.Redis.from_url(sys.argv[1]).flushdb()' "$RESULTS"
  echo "== Python Celery 5.7 prefork -c 2 canvas ($URL, N=$N, chain of $STEPS)"
  (cd tests/interop && CELERIAC_INTEROP_BROKER="$URL" CELERIAC_INTEROP_BACKEND="$RESULTS" "../../$PY" bench_canvas.py "$N" "$STEPS")
  exit 0
fi
echo "== celeriac ($URL, N=$N per enqueue phase)"
celeriac_out=$(./target/release/celeriac-bench --broker "$URL" --result-backend "$RESULTS" -n "$N")
echo "$celeriac_out"
"$PY" -c 'import redis, sys; redis.Redis.from_url(sys.argv[1]).flushdb()' "$RESULTS"
echo "== Python Celery 5.7 prefork -c 2 ($URL, N=$N)"
celery_out=$(cd tests/interop && CELERIAC_INTEROP_BROKER="$URL" CELERIAC_INTEROP_BACKEND="$RESULTS" "../../$PY" bench_celery.py "$N")
echo "$celery_out"

drain_rs=$(echo "$celeriac_out" | sed -n 's/^drain.*: *\([0-9]*\) tasks\/s.*/\1/p')
enq_rs=$(echo "$celeriac_out" | sed -n "s/^enqueue (single apply_async, 1 producer): *\([0-9]*\).*/\1/p")
drain_py=$(echo "$celery_out" | sed -n 's/.*"drain_per_s": \([0-9]*\).*/\1/p')
enq_py=$(echo "$celery_out" | sed -n 's/.*"enqueue_per_s": \([0-9]*\).*/\1/p')
echo "== ratio celeriac / Celery"
awk -v a="$drain_rs" -v b="$drain_py" 'BEGIN { printf "drain:   %.1fx (%d vs %d tasks/s)\n", a / b, a, b }'
awk -v a="$enq_rs" -v b="$enq_py" 'BEGIN { printf "enqueue (one sequential producer each): %.1fx (%d vs %d tasks/s)\n", a / b, a, b }'
