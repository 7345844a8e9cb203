-- wrk script: POST {"user_id": <random UUID v4>} to the activation of a random pool p0..p999
-- (bench/run.py creates them: 1,000 pools of 100 tokens), one new user per request.
-- wrk -t1 -c16 -d10s --latency -s bench/activate_pools.lua http://127.0.0.1:PORT/

dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "activate.lua")

local pools = 1000
local headers = { ["Content-Type"] = "application/json" }

function request()
  local path = "/api/pools/p" .. math.random(0, pools - 1) .. "/tokens/activate"
  return wrk.format("POST", path, headers, '{"user_id": "' .. uuid4() .. '"}')
end
