-- wrk script: GET the URL (path and query string as given on the command line).
-- wrk -t1 -c16 -d10s --latency -s bench/get.lua "http://127.0.0.1:PORT/api/tokens?limit=100"

wrk.method = "GET"
wrk.headers["Accept"] = "application/json"

-- the BENCH_JSON summary line, shared with the other scripts (loaded from this script's folder)
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "report.lua")
