-- Count responses per worker process: GET /pid answers with X-Worker: PID.
-- run.py appends report.lua, whose done() adds the counts to its JSON.
response = function(status, headers, body)
  local pid = headers["X-Worker"] or "none"
  worker_counts[pid] = (worker_counts[pid] or 0) + 1
end
