-- wrk script: POST {"user_id": <random UUID v4>} to the URL's path, one new user per request.
-- wrk -t1 -c16 -d10s --latency -s bench/activate.lua http://127.0.0.1:PORT/api/tokens/activate

local thread_seed = 0

function setup(thread)
  thread_seed = thread_seed + 1
  thread:set("seed", thread_seed)
end

function init(args)
  math.randomseed(os.time() * 1000 + (seed or 0) * 7919 + math.floor(os.clock() * 1e6))
end

local hex = "0123456789abcdef"
local variants = "89ab"

local function hexdigits(n)
  local t = {}
  for i = 1, n do
    local r = math.random(1, 16)
    t[i] = hex:sub(r, r)
  end
  return table.concat(t)
end

function uuid4()  -- global: bench/activate_pools.lua uses it too
  local v = math.random(1, 4)
  return hexdigits(8) .. "-" .. hexdigits(4) .. "-4" .. hexdigits(3) .. "-"
    .. variants:sub(v, v) .. hexdigits(3) .. "-" .. hexdigits(12)
end

local headers = { ["Content-Type"] = "application/json" }

function request()
  return wrk.format("POST", nil, headers, '{"user_id": "' .. uuid4() .. '"}')
end

-- the BENCH_JSON summary line, shared with the other scripts (loaded from this script's folder)
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "report.lua")
