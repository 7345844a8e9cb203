#!/bin/sh
# Container entrypoint for tokenpool.
#
# prometheus_client's multiprocess mode keeps one file per worker in
# PROMETHEUS_MULTIPROC_DIR. The variable must be set before Python starts
# and the directory must exist and be empty when gunicorn starts, or
# /metrics mixes in counters of workers from an earlier run (or is empty).
# With no arguments it starts gunicorn; any other command (flask db upgrade,
# flask tokens seed, a shell) runs as given.
set -eu

PROMETHEUS_MULTIPROC_DIR="${PROMETHEUS_MULTIPROC_DIR:-/tmp/prometheus}"
export PROMETHEUS_MULTIPROC_DIR

if [ "$#" -eq 0 ]; then
    set -- gunicorn -c gunicorn.conf.py wsgi:app
fi

mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
if [ "$1" = "gunicorn" ]; then
    # Only a fresh server wipes: a one-off command in the same container
    # must not delete the files of running workers.
    find "$PROMETHEUS_MULTIPROC_DIR" -mindepth 1 -delete
fi

exec "$@"
