-- POST a 1 MiB body to / (wrk adds Content-Length); run.py appends report.lua.
wrk.method = "POST"
wrk.body = string.rep("x", 1024 * 1024)
wrk.headers["Content-Type"] = "application/octet-stream"
