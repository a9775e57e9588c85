-- POSTs to PATH (a chat create, or a message create with a JSON body when
-- BODY is set) and prints one key=value line: requests/s, latency
-- percentiles in ms, the count of non-2xx answers and socket errors, and
-- the answered 2xx (`acknowledged`). With CHATS set, `{chat}` in PATH
-- takes the values 1..CHATS in turn, spreading the load over that many
-- chats.
wrk.method = "POST"
wrk.path = os.getenv("WRK_PATH")
local body = os.getenv("WRK_BODY")
if body and body ~= "" then
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
end

local chats = tonumber(os.getenv("WRK_CHATS") or "")
if chats then
  local turn = 0
  function setup(thread)
    thread:set("first", turn)
    turn = turn + 1
  end
  local next_chat
  function request()
    next_chat = ((next_chat or first) % chats) + 1
    return wrk.format(nil, (wrk.path:gsub("{chat}", next_chat)))
  end
end

function done(summary, latency, requests)
  local errors = summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout
  io.write(string.format(
    "wrk requests=%d rps=%.0f p50_ms=%.2f p99_ms=%.2f p999_ms=%.2f errors=%d acknowledged=%d\n",
    summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency:percentile(99.9) / 1000, errors, summary.requests - summary.errors.status))
end
