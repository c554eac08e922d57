-- wrk script for bench/webhook.py: each wrk thread sends its own file of pre-signed Stripe
-- deliveries (one per line: signature, a tab, the JSON body), each once, in order. A thread
-- that runs out starts again and counts it (the benchmark then fails its checks), and any
-- answer that is not 200 {"duplicate":false,...} is counted as bad.
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  requests, n, bad, wrapped = {}, 0, 0, 0
  for line in io.lines(args[1] .. "/" .. id .. ".tsv") do
    local signature, body = line:match("^([^\t]*)\t(.*)$")
    requests[#requests + 1] = wrk.format("POST", "/stripe/webhook",
      {["Content-Type"] = "application/json", ["Stripe-Signature"] = signature}, body)
  end
end

function request()
  n = n + 1
  if n > #requests then
    n, wrapped = 1, wrapped + 1
  end
  return requests[n]
end

function response(status, headers, body)
  if status ~= 200 or not body:find('"duplicate":false', 1, true) then
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  local bad_total, wrapped_total = 0, 0
  for _, thread in ipairs(threads) do
    bad_total = bad_total + thread:get("bad")
    wrapped_total = wrapped_total + thread:get("wrapped")
  end
  io.write(string.format("bad answers: %d\nran out: %d\n", bad_total, wrapped_total))
end
