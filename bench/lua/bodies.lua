-- wrk script: POST the bodies of a file (one JSON document per line) in turn, and print a summary
-- as one JSON line prefixed with BENCH_JSON for bench/run to parse.
-- Usage: wrk ... -s bench/lua/bodies.lua URL -- BODIES_FILE

local prepared = {}
local index = 0

function init(args)
   -- Requests are formatted once here: building them per request would cost wrk CPU on the core it
   -- shares with the fake upstream.
   local headers = {}
   for name, value in pairs(wrk.headers) do
      headers[name] = value
   end
   headers["Content-Type"] = "application/json"
   for line in io.lines(args[1]) do
      if #line > 0 then
         prepared[#prepared + 1] = wrk.format("POST", nil, headers, line)
      end
   end
   if #prepared == 0 then
      error("no bodies in " .. tostring(args[1]))
   end
end

function request()
   index = index % #prepared + 1
   return prepared[index]
end

function done(summary, latency, _)
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"mean":%.1f,"max":%d}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
