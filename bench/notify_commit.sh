#!/bin/bash
# What a NOTIFY in every activation costs the database: the activation function in a transaction
# with and without `NOTIFY tokenpool_events` (what migration 0011's trigger sent and 0013 dropped),
# pgbench at a fixed rate (latency counted from each transaction's scheduled start), alternated.
#   bash bench/notify_commit.sh            # RATE=500 CLIENTS=8 DURATION=15 ROUNDS=3
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-500}; CLIENTS=${CLIENTS:-8}; DURATION=${DURATION:-15}; ROUNDS=${ROUNDS:-3}
DB=tokenpool_notify_$$
WORK=$(mktemp -d)
psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE $DB"
trap 'psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)"; rm -rf "$WORK"' EXIT
export DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1/$DB APP_ENV=production SECRET_KEY=bench LOG_LEVEL=WARNING
.venv/bin/flask --app wsgi db upgrade >/dev/null 2>&1
.venv/bin/flask --app wsgi tokens seed --size 100 >/dev/null
psql -h 127.0.0.1 -U postgres -d $DB -qc "VACUUM ANALYZE"
ACTIVATE="SELECT token_id FROM tokenpool_activate(gen_random_uuid(), NULL, make_interval(secs => 120));"
printf 'BEGIN;\n%s\nCOMMIT;\n' "$ACTIVATE" > "$WORK/plain.sql"
printf 'BEGIN;\n%s\nNOTIFY tokenpool_events;\nCOMMIT;\n' "$ACTIVATE" > "$WORK/notify.sql"
for round in $(seq "$ROUNDS"); do
  for variant in plain notify; do
    rm -f "$WORK"/pgbench_log.*
    # as make bench before each activation case: this machine's PostgreSQL runs without autovacuum
    psql -h 127.0.0.1 -U postgres -d $DB -qc "VACUUM ANALYZE tokens"
    (cd "$WORK" && pgbench -h 127.0.0.1 -U postgres -n -M prepared -c "$CLIENTS" -j 2 -R "$RATE" \
        -T "$DURATION" -f "$variant.sql" -l "$DB" > /dev/null 2>&1)
    .venv/bin/python - "$WORK" "$variant" "$round" <<'PY'
import glob, sys
sys.path.insert(0, "bench")
from loadgen import percentile
work, variant, round_ = sys.argv[1:]
latencies = sorted(int(line.split()[2]) / 1000 for f in glob.glob(f"{work}/pgbench_log.*") for line in open(f))
at = lambda q: percentile(latencies, q)
print(f"round {round_} {variant:6s} {len(latencies):6d} tx  p50 {at(50):6.2f}  p99 {at(99):7.2f}"
      f"  p99.9 {at(99.9):7.2f}  max {latencies[-1]:7.2f} ms")
PY
  done
done
