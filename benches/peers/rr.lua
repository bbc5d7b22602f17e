-- wrk script: round robin over a file of bearer tokens, one a line.
--   wrk ... -s rr.lua URL -- TOKENS_FILE
-- A token is reused only after the whole file has been sent once; done() prints how many
-- requests reused one (the `cold` load must report 0 for its figures to be cold).
-- Up to PREFORMAT tokens, each request is formatted once, in init: request() then costs
-- wrk about what a static `-H` request does, so `1k` and `warm` differ in what the proxy
-- does, not in how much Lua wrk runs. Bigger files (`cold`) are formatted per request.
tokens, n, sent = {}, 0, 0
PREFORMAT = 20000

function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then
      n = n + 1
      tokens[n] = "Bearer " .. line
    end
  end
  if n == 0 then error("no tokens in " .. tostring(args[1])) end
  if n <= PREFORMAT then
    for i = 1, n do
      tokens[i] = wrk.format(nil, nil, { ["Authorization"] = tokens[i] })
    end
    request = function()
      sent = sent + 1
      return tokens[(sent - 1) % n + 1]
    end
  end
end

function request()
  sent = sent + 1
  return wrk.format(nil, nil, { ["Authorization"] = tokens[(sent - 1) % n + 1] })
end

local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
end

function done(summary, latency, requests)
  local reused, total = 0, 0
  for _, t in ipairs(threads) do
    local s, k = t:get("sent"), t:get("n")
    total = total + k
    if s > k then reused = reused + (s - k) end
  end
  io.write(string.format("tokens: %d reused: %d\n", total, reused))
end
