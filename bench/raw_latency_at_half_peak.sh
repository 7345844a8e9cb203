#!/bin/bash
# The raw-SQL activation app (bench/raw_app.py) under the protocol of latency_at_half_peak.sh:
# wrk peak, then open-loop at half of it. Shows the p99 stalls after a burst are the database's.
set -euo pipefail
cd "$(dirname "$0")/.."
DB=tokenpool_rawlat_$$; PORT=8131
psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE $DB"
trap 'kill $SERVER 2>/dev/null; wait 2>/dev/null; psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)"' EXIT
export DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1/$DB
.venv/bin/flask --app wsgi db upgrade >/dev/null 2>&1
.venv/bin/flask --app wsgi tokens seed --size 100 >/dev/null
psql -h 127.0.0.1 -U postgres -d $DB -qc "VACUUM ANALYZE"
.venv/bin/gunicorn -c bench/gunicorn_bare.conf.py -w 2 -k sync -b 127.0.0.1:$PORT bench.raw_app:app > /tmp/rawlat.log 2>&1 &
SERVER=$!
sleep 2
URL=http://127.0.0.1:$PORT/activate
for round in 1 2 3; do
  peak=$(wrk -t1 -c16 -d8s -s bench/activate.lua "$URL" | awk '/Requests\/sec/ {print int($2)}')
  half=$((peak / 2))
  .venv/bin/python bench/loadgen.py --rate "$half" --duration 10 --activate "$URL" | python3 -c "
import json, sys
d = json.load(sys.stdin); l = d['latency_ms']
print(f'raw round $round: peak $peak; at {d[\"target_rate\"]:.0f}/s p50 {l[\"p50\"]:.1f} p99 {l[\"p99\"]:.1f} max {l[\"max\"]:.1f} {d[\"statuses\"]}')"
done
