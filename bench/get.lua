-- wrk script: GET the URL (path and query string as given on the command line).
-- wrk -t1 -c16 -d10s --latency -s bench/get.lua "http://127.0.0.1:PORT/api/tokens?limit=100"

wrk.method = "GET"
wrk.headers["Accept"] = "application/json"

-- one machine-readable line for bench/run.py (latencies in microseconds)
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"latency_us": {"mean": %.1f, "p50": %d, "p75": %d, "p90": %d, "p99": %d, "p999": %d, "max": %d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max))
end
