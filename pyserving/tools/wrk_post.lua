-- wrk script for `pyserving bench` (pyserving/tools/loadgen.py): POST the file named by $BENCH_BODY as JSON, and end with one machine-readable
-- line: BENCH_JSON {...} (request count, error counts, latency percentiles in microseconds).
--   BENCH_BODY=body.json wrk -t1 -c32 -d10s --latency -s pyserving/tools/wrk_post.lua http://127.0.0.1:8501/v1/models/m:predict
local path = os.getenv("BENCH_BODY")
if path == nil then
  error("set BENCH_BODY to the file holding the request body")
end
local f = assert(io.open(path, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
-- BENCH_HEADER="Name: value" adds one request header (bench/security.py sends Authorization with it);
-- BENCH_HEADERS adds several, one "Name: value" a line (`pyserving bench`: credentials, V2's header length)
local function add_header(line)
  local name, value = line:match("^([^:]+):%s*(.*)$")
  if name ~= nil then
    wrk.headers[name] = value
  end
end
local extra = os.getenv("BENCH_HEADER")
if extra ~= nil and extra ~= "" then
  add_header(extra)
end
local several = os.getenv("BENCH_HEADERS")
if several ~= nil then
  for line in several:gmatch("[^\n]+") do
    add_header(line)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "mean_us": %.1f, "max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
