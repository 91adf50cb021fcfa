-- Appended to every workload script by run.py: at the end of a run, print
-- one line of JSON (after the "BENCH_JSON " marker) with the request count,
-- errors and latency percentiles in microseconds, and, when the workload's
-- script counts responses per worker (workers.lua), those counts.
local threads = {}
setup = function(thread)
  table.insert(threads, thread)
end
worker_counts = {}

done = function(summary, latency, requests)
  local parts = {}
  for _, thread in ipairs(threads) do
    for pid, n in pairs(thread:get("worker_counts") or {}) do
      table.insert(parts, string.format('"%s": %d', pid, n))
    end
  end
  local e = summary.errors
  local p = function(q) return latency:percentile(q) end
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, "non2xx": %d, ' ..
    '"latency_us": {"mean": %.1f, "stdev": %.1f, "max": %d, "p50": %d, "p90": %d, "p99": %d, "p99.9": %d}, ' ..
    '"workers": {%s}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.timeout, e.status,
    latency.mean, latency.stdev, latency.max, p(50), p(90), p(99), p(99.9),
    table.concat(parts, ", ")))
end
