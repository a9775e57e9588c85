-- POSTs to PATH (a chat create, or a message create with a JSON body when
-- BODY is set) and prints one key=value line: requests/s, latency
-- percentiles in ms, the count of non-2xx answers and socket errors, and
-- the answered 2xx (`acknowledged`). With CHATS set, `{chat}` in PATH
-- takes the values 1..CHATS in turn, spreading the load over that many
-- chats. With WRK_KEYS=1 every request carries an Idempotency-Key of its
-- own.
wrk.method = "POST"
wrk.path = os.getenv("WRK_PATH")
local body = os.getenv("WRK_BODY")
if body and body ~= "" then
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
end

local chats = tonumber(os.getenv("WRK_CHATS") or "")
local keyed = os.getenv("WRK_KEYS") == "1"
if chats or keyed then
  local turn = 0
  local run = tostring(os.time())
  function setup(thread)
    thread:set("first", turn)
    thread:set("run", run)
    turn = turn + 1
  end
  local next_chat
  local sent = 0
  function request()
    local path = wrk.path
    if chats then
      next_chat = ((next_chat or first) % chats) + 1
      path = path:gsub("{chat}", next_chat)
    end
    local headers = nil
    if keyed then
      sent = sent + 1
      headers = {}
      for name, value in pairs(wrk.headers) do headers[name] = value end
      headers["Idempotency-Key"] = string.format("%s-%d-%d", run, first, sent)
    end
    return wrk.format(nil, path, headers)
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
