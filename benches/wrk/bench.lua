-- wrk script shared by every scenario of benches/run.sh.
--
-- * Always: done() prints one line "BENCHJSON {...}" with exact latency
--   percentiles (microseconds) and the error counters, for benches/bench.py.
-- * BENCH_DELAY_MS > 0: paced mode. Each connection waits that many
--   milliseconds on average (uniform in [d/2, 3d/2]) after a response before
--   sending its next request, so the offered rate is about
--   connections * 1000 / (BENCH_DELAY_MS + latency).
--   wrk starts a request's latency clock when it writes the request, after
--   the delay, so the pause is not counted as latency.
-- * BENCH_PUT_IDS > 0: Admin API write mode. Every request is a PUT of a
--   route, cycling over that many ids (w0, w1, ...); needs BENCH_ADMIN_KEY
--   and BENCH_NODE (host:port of the upstream the routes point at).

local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "0") or 0
if delay_ms > 0 then
  -- Uniform in [d/2, 3d/2] (wrk's timers have millisecond resolution): the
  -- jitter keeps connections from marching in step, which would turn a
  -- steady rate into bursts of `connections` requests at once.
  local lo, hi = math.max(1, math.floor(delay_ms / 2)), math.ceil(delay_ms * 3 / 2)
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
  function delay()
    return math.random(lo, hi)
  end
end

local put_ids = tonumber(os.getenv("BENCH_PUT_IDS") or "0") or 0
if put_ids > 0 then
  local key = os.getenv("BENCH_ADMIN_KEY") or ""
  local node = os.getenv("BENCH_NODE") or "127.0.0.1:1"
  local n = 0
  function request()
    n = n + 1
    local id = "w" .. (n % put_ids)
    local body = '{"uri":"/w/' .. id .. '/*","desc":"write ' .. n ..
      '","upstream":{"type":"roundrobin","nodes":{"' .. node .. '":1}}}'
    return wrk.format("PUT", "/apisix/admin/routes/" .. id,
      { ["X-API-KEY"] = key, ["Content-Type"] = "application/json" }, body)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,' ..
    '"lat_mean_us":%.1f,"lat_max_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
