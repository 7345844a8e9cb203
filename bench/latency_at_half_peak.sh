#!/bin/bash
# Targets 3b and 4 measured alone: the service (full production stack, 2 sync workers) is the
# only target running. First its peak with wrk (-t1 -c16), then open-loop latency at half that
# rate with bench/loadgen.py (latency from the scheduled send time). Three rounds each.
#   bash bench/latency_at_half_peak.sh activate 100        # target 4
#   bash bench/latency_at_half_peak.sh list 1000000        # target 3b
#   TARGET=raw bash bench/latency_at_half_peak.sh activate 100   # the raw-SQL app, same protocol
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-activate}; POOL=${2:-100}; PORT=${PORT:-8121}
DB=tokenpool_latency_$$
psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE $DB"
trap 'kill $SERVER 2>/dev/null; wait 2>/dev/null; psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)"; redis-cli -n 13 flushdb >/dev/null' EXIT
export DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1/$DB
.venv/bin/flask --app wsgi db upgrade >/dev/null 2>&1
.venv/bin/flask --app wsgi tokens seed --size "$POOL" >/dev/null
psql -h 127.0.0.1 -U postgres -d $DB -qc "VACUUM ANALYZE"
PROM=$(mktemp -d)
if [ "${TARGET:-service}" = raw ]; then
  .venv/bin/gunicorn -c bench/gunicorn_bare.conf.py -w 2 -k sync -b 127.0.0.1:$PORT bench.raw_app:app \
    > "$PROM/server.log" 2>&1 &
else
env APP_ENV=production SECRET_KEY=bench REDIS_URL=redis://127.0.0.1:6379/13 RATE_LIMIT_PER_MINUTE=100000000 \
    WEB_CONCURRENCY=2 DRAIN_SECONDS=0 LOG_FORMAT=json PROMETHEUS_MULTIPROC_DIR="$PROM" BIND=127.0.0.1:$PORT \
    .venv/bin/gunicorn -c gunicorn.conf.py wsgi:app > "$PROM/server.log" 2>&1 &
fi
SERVER=$!
sleep 3
if [ "${TARGET:-service}" = raw ]; then
  URL=http://127.0.0.1:$PORT/activate; WRK=(-s bench/activate.lua); GEN=(--activate)
elif [ "$MODE" = activate ]; then
  URL=http://127.0.0.1:$PORT/api/tokens/activate; WRK=(-s bench/activate.lua); GEN=(--activate)
else
  URL="http://127.0.0.1:$PORT/api/tokens?limit=100"; WRK=(); GEN=()
fi
for round in 1 2 3; do
  peak=$(wrk -t1 -c16 -d8s "${WRK[@]}" "$URL" | awk '/Requests\/sec/ {print int($2)}')
  half=$((peak / 2))
  .venv/bin/python bench/loadgen.py --rate "$half" --duration 10 "${GEN[@]}" "$URL" | python3 -c "
import json, sys
d = json.load(sys.stdin)
l = d['latency_ms']
print(f'round $round: peak $peak req/s; at {d[\"target_rate\"]:.0f}/s achieved {d[\"achieved_rate\"]:.0f}/s '
      f'p50 {l[\"p50\"]:.1f} ms p99 {l[\"p99\"]:.1f} ms max {l[\"max\"]:.1f} ms statuses {d[\"statuses\"]}')"
done
