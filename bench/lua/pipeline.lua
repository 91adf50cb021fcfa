-- Pipelining: DEPTH GET requests in one write (wrk -s pipeline.lua URL -- DEPTH,
-- 16 by default). wrk counts each response and records one latency per batch.
-- run.py appends report.lua.
init = function(args)
  local depth = tonumber(args[1]) or 16
  local batch = {}
  for i = 1, depth do
    batch[i] = wrk.format(nil, wrk.path)
  end
  pipelined = table.concat(batch)
end

request = function()
  return pipelined
end
