-- wrk: POST a task workflow to /api/workflow/execute with a unique trace id per request (a replay
-- would be cheaper than an execution). Used by scripts/bench.sh and scripts/bench-otel.sh.
local threads = 0
function setup(thread) threads = threads + 1; thread:set("tid", threads) end
counter = 0
request = function()
  counter = counter + 1
  local body = '{"trace_id":"wrk-' .. tid .. '-' .. counter .. '-' .. os.time() .. '","decision":"workflow","data":{"workflow_type":"workflow","payload":{"action_type":"task","title":"Follow up","user_id":"u1"}}}'
  return wrk.format("POST", "/api/workflow/execute", {["Content-Type"]="application/json"}, body)
end
