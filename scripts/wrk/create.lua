-- POSTs to PATH (a chat create, or a message create with a JSON body when
-- BODY is set) and prints one key=value line: requests/s, latency
-- percentiles in ms, the count of non-2xx answers and socket errors, the
-- answered 2xx (`acknowledged`), and with WRK_STATUSES=1 the 429 and 5xx
-- answers apart.
--
-- With WRK_TOKENS (comma-separated application tokens), `{token}` in PATH
-- takes each token in turn, spreading the load over those applications;
-- with WRK_CHATS, `{chat}` takes 1..WRK_CHATS (for every token); with
-- WRK_MESSAGES, `{message}` takes 1..WRK_MESSAGES in turn (an edit's
-- message; WRK_METHOD=PUT). With WRK_KEYS=1 every request carries an
-- Idempotency-Key of its own.
wrk.method = os.getenv("WRK_METHOD") or "POST"
wrk.path = os.getenv("WRK_PATH")
local body = os.getenv("WRK_BODY")
if body and body ~= "" then
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
end

local tokens = {}
for token in string.gmatch(os.getenv("WRK_TOKENS") or "", "[^,]+") do
  table.insert(tokens, token)
end
local chats = tonumber(os.getenv("WRK_CHATS") or "") or 1
local messages = tonumber(os.getenv("WRK_MESSAGES") or "") or 1
local keyed = os.getenv("WRK_KEYS") == "1"

local threads = {}
local turn = 0
local run = tostring(os.time())
function setup(thread)
  thread:set("first", turn)
  thread:set("run", run)
  turn = turn + 1
  table.insert(threads, thread)
end

local sent = 0
local target = nil
local edited = 0
function request()
  local path = wrk.path
  if path:find("{message}", 1, true) then
    edited = edited + 1
    path = path:gsub("{message}", tostring(edited % messages + 1))
  end
  if #tokens > 0 or path:find("{chat}", 1, true) then
    -- Threads start at different places of the token x chat table.
    target = ((target or (first * 7919)) + 1) % (math.max(#tokens, 1) * chats)
    if #tokens > 0 then
      path = path:gsub("{token}", tokens[(target % #tokens) + 1])
    end
    path = path:gsub("{chat}", tostring(math.floor(target / math.max(#tokens, 1)) % chats + 1))
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

-- Counting statuses costs wrk a Lua call per answer: only when asked
-- (WRK_STATUSES=1).
too_many = 0
server_errors = 0
if os.getenv("WRK_STATUSES") == "1" then
  function response(status, headers, body)
    if status == 429 then
      too_many = too_many + 1
    elseif status >= 500 then
      server_errors = server_errors + 1
    end
  end
end

function done(summary, latency, requests)
  local errors = summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout
  local limited, failed = 0, 0
  for _, thread in ipairs(threads) do
    limited = limited + (thread:get("too_many") or 0)
    failed = failed + (thread:get("server_errors") or 0)
  end
  io.write(string.format(
    "wrk requests=%d rps=%.0f p50_ms=%.2f p99_ms=%.2f p999_ms=%.2f errors=%d acknowledged=%d status_429=%d status_5xx=%d\n",
    summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency:percentile(99.9) / 1000, errors, summary.requests - summary.errors.status,
    limited, failed))
end
