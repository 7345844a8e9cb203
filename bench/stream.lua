-- wrk script: event stream clients. Each connection asks /api/events/stream with the
-- Last-Event-ID it has seen, reads the answer, waits the stream's retry interval and asks
-- again: a browser's EventSource against the default (sync workers, EVENT_STREAM_SECONDS=0).
-- wrk -t1 -c100 -d12s -s bench/stream.lua http://127.0.0.1:PORT/api/events/stream

-- The first request starts "from now" (no Last-Event-ID); every answer ends with the id the
-- stream has reached, which the next request sends (one value for all connections of a thread:
-- they read the same events).
local last = nil
local retry_ms = 1000

function request()
  local headers = { ["Accept"] = "text/event-stream" }
  if last ~= nil then
    headers["Last-Event-ID"] = last
  end
  return wrk.format("GET", nil, headers)
end

function response(status, headers, body)
  local id
  for value in body:gmatch("id: (%d+)\n") do
    id = value
  end
  if id ~= nil and (last == nil or tonumber(id) > tonumber(last)) then
    last = id
  end
  local retry = body:match("^retry: (%d+)")
  if retry ~= nil then
    retry_ms = tonumber(retry)
  end
end

function delay()
  return retry_ms
end

-- the BENCH_JSON summary line, shared with the other scripts (loaded from this script's folder)
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "report.lua")
