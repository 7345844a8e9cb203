#!/bin/bash
# Observability overhead on activation: the same service, database and Redis,
# once with JSON logs + Prometheus metrics (multiprocess) and once without, alternating
# 3 rounds of wrk. Usage: bash bench/observability_overhead.sh (needs wrk).
set -e
cd "$(dirname "$0")/.."
DB=tp_obs
psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $DB" -qc "CREATE DATABASE $DB"
export DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1/$DB
.venv/bin/flask --app wsgi db upgrade >/dev/null 2>&1
.venv/bin/flask --app wsgi tokens seed --size 100 >/dev/null
common="APP_ENV=production SECRET_KEY=x DATABASE_URL=$DATABASE_URL REDIS_URL=redis://127.0.0.1:6379/14 RATE_LIMIT_PER_MINUTE=100000000 WEB_CONCURRENCY=2 SWEEPER_ENABLED=true DRAIN_SECONDS=0"
rm -rf /tmp/obs-prom; mkdir -p /tmp/obs-prom
env $common BIND=127.0.0.1:8101 LOG_FORMAT=json LOG_LEVEL=INFO METRICS_ENABLED=true PROMETHEUS_MULTIPROC_DIR=/tmp/obs-prom .venv/bin/gunicorn -c gunicorn.conf.py wsgi:app > /tmp/obs-on.log 2>&1 &
ON=$!
env $common BIND=127.0.0.1:8102 LOG_FORMAT=json LOG_LEVEL=ERROR METRICS_ENABLED=false .venv/bin/gunicorn -c gunicorn.conf.py wsgi:app > /tmp/obs-off.log 2>&1 &
OFF=$!
sleep 3
for r in 1 2 3; do
  for t in on:8101 off:8102; do
    name=${t%%:*}; port=${t##*:}
    rps=$(wrk -t1 -c16 -d6s -s bench/activate.lua http://127.0.0.1:$port/api/tokens/activate 2>/dev/null | awk '/Requests\/sec/ {print $2}')
    echo "round $r $name $rps"
    sleep 1
  done
done
kill $ON $OFF; wait 2>/dev/null || true
psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
redis-cli -n 14 flushdb >/dev/null
