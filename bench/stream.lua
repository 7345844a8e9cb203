-- wrk script: event stream clients. Each connection asks /api/events/stream with the
-- Last-Event-ID it has seen, reads the answer, waits the stream's retry interval and asks
-- again: a browser's EventSource against the default (sync workers, EVENT_STREAM_SECONDS=0).
-- wrk -t1 -c100 -d12s -s bench/stream.lua http://127.0.0.1:PORT/api/events/stream

local last = "0"
local retry_ms = 1000

function request()
  return wrk.format("GET", nil, { ["Accept"] = "text/event-stream", ["Last-Event-ID"] = last })
end

function response(status, headers, body)
  local id
  for value in body:gmatch("id: (%d+)\n") do
    id = value
  end
  if id ~= nil and tonumber(id) > tonumber(last) then
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
