#!/usr/bin/env python3
"""Helper for benches/run.sh (Python 3 standard library only).

Subcommands (all talk to loopback addresses only):
  ports N                         print N free TCP ports on 127.0.0.1
  wait URL SECONDS                wait until URL answers HTTP (any status)
  token ISSUER [RESOURCE]         client-credentials token from cc-client
  routes ADMIN KEY FIRST LAST NODE [CONC]
                                  PUT routes r<FIRST>..r<LAST> (uri /svc/<i>/*)
                                  concurrently over keep-alive connections
  delete ADMIN KEY ID...          DELETE routes (404 is fine)
  reload NAME ADMIN KEY PROXY NODE_A NODE_B WRITES
                                  hot-reload latency: PUT a route alternating
                                  between two upstreams that answer
                                  X-Version: a / b, then poll the proxy until
                                  the new version answers; prints a record
  wrk NAME [k=v ...]              read wrk output on stdin, print a record
  get RESULTS.jsonl NAME FIELD    print one field of a record
  rebuild NAME LOG MIN_ROUTES     snapshot rebuild times from the gateway log
  report RESULTS.jsonl OUTDIR     print the table, write OUTDIR/<ts>.json and
                                  OUTDIR/latest.json

Records are JSON lines appended by run.sh to one results file.
"""

import http.client
import json
import os
import socket
import sys
import threading
import time
import urllib.parse
import urllib.request
import base64


def fail(msg):
    print(f"bench.py: {msg}", file=sys.stderr)
    sys.exit(1)


# ---------------------------------------------------------------- utilities

def cmd_ports(n):
    socks, ports = [], []
    for _ in range(int(n)):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    print(" ".join(map(str, ports)))


def cmd_wait(url, seconds):
    deadline = time.monotonic() + float(seconds)
    u = urllib.parse.urlsplit(url)
    while True:
        try:
            c = http.client.HTTPConnection(u.hostname, u.port, timeout=2)
            c.request("GET", u.path or "/")
            c.getresponse().read()
            c.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                fail(f"{url} did not answer within {seconds} s")
            time.sleep(0.1)


def cmd_token(issuer, resource=None):
    form = {"grant_type": "client_credentials", "scope": "api:read"}
    if resource:
        form["resource"] = resource
    req = urllib.request.Request(
        issuer.rstrip("/") + "/token",
        data=urllib.parse.urlencode(form).encode(),
        headers={
            "Authorization": "Basic " + base64.b64encode(b"cc-client:cc-secret-456").decode(),
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        print(json.load(r)["access_token"])


class Conn:
    """One keep-alive HTTP/1.1 connection, reopened if the server closes it."""

    def __init__(self, base, timeout=None):
        u = urllib.parse.urlsplit(base)
        self.host, self.port = u.hostname, u.port
        self.timeout = timeout or float(os.environ.get("BENCH_HTTP_TIMEOUT", "5"))
        self.c = None

    def request(self, method, path, body=None, headers=None):
        for attempt in range(2):
            if self.c is None:
                self.c = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.c.request(method, path, body=body, headers=headers or {})
                r = self.c.getresponse()
                data = r.read()
                if r.getheader("connection", "").lower() == "close":
                    self.c.close()
                    self.c = None
                return r.status, r, data
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A keep-alive connection the server closed: retry once.
                self.c.close()
                self.c = None
                if attempt:
                    raise
            except (http.client.HTTPException, OSError):
                # Timeouts included: no retry, the caller reports it.
                self.c.close()
                self.c = None
                raise
        raise AssertionError("unreachable")


def route_body(uri, node, desc=None):
    body = {"uri": uri, "upstream": {"type": "roundrobin", "nodes": {node: 1}}}
    if desc:
        body["desc"] = desc
    return json.dumps(body)


def cmd_routes(admin, key, first, last, node, conc="16"):
    first, last, conc = int(first), int(last), int(conc)
    ids = list(range(first, last + 1))
    errors, lock = [], threading.Lock()
    hdr = {"X-API-KEY": key, "Content-Type": "application/json"}

    def work(part):
        c = Conn(admin)
        for i in part:
            try:
                st, _, data = c.request("PUT", f"/apisix/admin/routes/r{i}",
                                        route_body(f"/svc/{i}/*", node), hdr)
            except (OSError, http.client.HTTPException) as e:
                st, data = repr(e), b""
            if st not in (200, 201):
                with lock:
                    errors.append((i, st, data[:200]))
                return

    t0 = time.monotonic()
    threads = [threading.Thread(target=work, args=(ids[k::conc],)) for k in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        fail(f"route writes failed: {errors[:3]}")
    dt = time.monotonic() - t0
    print(f"{len(ids)} routes written in {dt:.1f} s ({len(ids) / dt:.0f}/s)", file=sys.stderr)


def cmd_delete(admin, key, *ids):
    c = Conn(admin)
    for i in ids:
        st, _, data = c.request("DELETE", f"/apisix/admin/routes/{i}", None, {"X-API-KEY": key})
        if st not in (200, 404):
            fail(f"DELETE {i}: {st} {data[:200]!r}")


def pct(values, p):
    """Nearest-rank percentile."""
    s = sorted(values)
    if not s:
        return None
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


def cmd_reload(name, admin, key, proxy, node_a, node_b, writes):
    writes = int(writes)
    a, p = Conn(admin), Conn(proxy)
    hdr = {"X-API-KEY": key, "Content-Type": "application/json"}
    live_ms, ack_ms, polls, missed = [], [], [], 0
    for i in range(writes):
        version, node = ("a", node_a) if i % 2 == 0 else ("b", node_b)
        t0 = time.perf_counter()
        st, _, data = a.request("PUT", "/apisix/admin/routes/reload",
                                route_body("/reload/*", node, f"v{i}"), hdr)
        t_ack = time.perf_counter()
        if st not in (200, 201):
            fail(f"reload PUT: {st} {data[:200]!r}")
        n = 0
        while True:
            n += 1
            st, r, _ = p.request("GET", "/reload/x")
            now = time.perf_counter()
            if st == 200 and r.getheader("x-version") == version:
                break
            if now - t_ack > 2.0:
                missed += 1
                break
        ack_ms.append((t_ack - t0) * 1e3)
        live_ms.append((now - t_ack) * 1e3)
        polls.append(n)
    rec = {
        "name": name, "type": "reload", "writes": writes, "missed": missed,
        "live_p50_ms": pct(live_ms, 50), "live_p99_ms": pct(live_ms, 99),
        "live_max_ms": max(live_ms),
        "write_p50_ms": pct(ack_ms, 50), "write_p99_ms": pct(ack_ms, 99),
        "first_poll_hits": sum(1 for n in polls if n == 1),
        "max_polls": max(polls),
    }
    print(json.dumps(rec))


def cmd_wrk(name, *kv):
    text = sys.stdin.read()
    line = next((l for l in text.splitlines() if l.startswith("BENCHJSON ")), None)
    if line is None:
        fail(f"no BENCHJSON line in wrk output for {name}:\n{text}")
    rec = json.loads(line[len("BENCHJSON "):])
    rec.update(name=name, type="wrk")
    for item in kv:
        k, _, v = item.partition("=")
        try:
            rec[k] = json.loads(v)
        except ValueError:
            rec[k] = v
    secs = rec["duration_us"] / 1e6
    rec["rps"] = rec["requests"] / secs if secs else 0.0
    if "cpu_ticks" in rec and rec["requests"]:
        rec["cpu_us_per_req"] = round(rec["cpu_ticks"] / rec["clk_tck"] * 1e6 / rec["requests"], 2)
        rec["cpu_share"] = round(rec["cpu_ticks"] / rec["clk_tck"] / secs, 3) if secs else None
    rec["errors"] = sum(rec[k] for k in ("err_connect", "err_read", "err_write",
                                          "err_status", "err_timeout"))
    print(json.dumps(rec))


# ---------------------------------------------------------------- report

def cmd_report(results, outdir):
    recs, info = {}, {}
    with open(results) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            if r.get("type") == "info":
                info.update(r)
            else:
                recs[r["name"]] = r

    def g(name, field):
        r = recs.get(name)
        return None if r is None else r.get(field)

    def ms(us):
        return None if us is None else us / 1000.0

    rows = []
    big = f"{int(info.get('routes', 10000)):,} routes".replace(",", " ")

    def row(metric, value, unit, ref=None, ref_label="", target=None, ok=None,
            ratio=None, note=""):
        if ratio is None and value is not None and ref not in (None, 0):
            ratio = value / ref
        status = "-" if ok is None else ("pass" if ok else "FAIL")
        rows.append({
            "metric": metric, "value": value, "unit": unit,
            "reference": ref, "reference_of": ref_label,
            "ratio": ratio, "target": target or "-", "result": status, "note": note,
        })

    def bad(name):
        """A wrk scenario whose run had errors or non-2xx answers."""
        r = recs.get(name)
        return r is None or r.get("errors", 0) > 0

    def rps_row(metric, name, ref_name, ref_label, minimum):
        v, ref = g(name, "rps"), g(ref_name, "rps")
        ok = None
        if minimum is not None and v is not None and ref:
            ok = (v / ref) >= minimum and not bad(name) and not bad(ref_name)
        note = "errors in run" if recs.get(name, {}).get("errors") else ""
        row(metric, v, "req/s", ref, ref_label,
            f">= {minimum:.2f}" if minimum is not None else None, ok, note=note)

    def cpu_row(label, name, ref_name, ref_label):
        v, ref = g(name, "cpu_us_per_req"), g(ref_name, "cpu_us_per_req") if ref_name else None
        row(f"{label} CPU/request", v, "us", ref, ref_label,
            note="" if name != "direct" else "CPU time of the server under test / requests")

    def lat_rows(label, name, ref_name, ref_label):
        for p in ("p50", "p99"):
            row(f"{label} {p}", ms(g(name, p + "_us")), "ms",
                ms(g(ref_name, p + "_us")) if ref_name else None, ref_label)

    rps_row("direct to upstream", "direct", None, "", None)
    lat_rows("direct to upstream", "direct", None, "")
    cpu_row("direct to upstream", "direct", None, "")
    rps_row("nginx proxy", "nginx", "direct", "direct", None)
    lat_rows("nginx proxy", "nginx", "direct", "direct")
    cpu_row("nginx proxy", "nginx", None, "")
    rps_row("Portcullis plain route", "plain", "nginx", "nginx", 1.0)
    lat_rows("Portcullis plain route", "plain", "nginx", "nginx")
    cpu_row("Portcullis plain route", "plain", "nginx", "nginx")
    rps_row("Portcullis JWT (RS256, JWKS)", "jwt", "plain", "plain", 0.90)
    lat_rows("Portcullis JWT (RS256, JWKS)", "jwt", "plain", "plain")
    cpu_row("Portcullis JWT (RS256, JWKS)", "jwt", "plain", "plain")
    rps_row("Portcullis introspection (cached)", "introspection", "plain", "plain", 0.90)
    lat_rows("Portcullis introspection (cached)", "introspection", "plain", "plain")
    cpu_row("Portcullis introspection (cached)", "introspection", "plain", "plain")
    rps_row("Portcullis 10 routes", "routes10", None, "", None)
    cpu_row("Portcullis 10 routes", "routes10", None, "")
    rps_row(f"Portcullis {big}", "routes10k", "routes10", "10 routes", 0.95)
    lat_rows(f"Portcullis {big}", "routes10k", "routes10", "10 routes")
    cpu_row(f"Portcullis {big}", "routes10k", "routes10", "10 routes")

    # Same work twice in one run (a plain route, in a table of 4 or of 10
    # routes): how far apart they land shows how noisy the machine was.
    if g("routes10", "rps") and g("plain", "rps"):
        row("noise check: 10 routes vs plain (same work)", g("routes10", "rps"), "req/s",
            g("plain", "rps"), "plain",
            note="should be close to 1.00; far from it, other load on the machine "
                 "(or a gateway restart in between) moved the numbers")

    # Added latency at half the saturating load.
    d99, p99, n99 = g("half_direct", "p99_us"), g("half_plain", "p99_us"), g("half_nginx", "p99_us")
    if None not in (d99, p99):
        added = (p99 - d99) / 1000.0
        ref = (n99 - d99) / 1000.0 if n99 is not None else None
        rate = g("half_plain", "rps")
        note = (f"paced wrk at {rate:.0f} req/s (target {g('half_plain', 'target_rps'):.0f}), "
                f"{g('half_plain', 'connections')} conns x {g('half_plain', 'delay_ms')} ms")
        row("added p99 vs direct, half load", added, "ms", ref, "nginx added p99",
            "<= 1 ms", added <= 1.0 and not bad("half_plain") and not bad("half_direct"),
            note=note)
        added50 = (g("half_plain", "p50_us") - g("half_direct", "p50_us")) / 1000.0
        ref50 = ((g("half_nginx", "p50_us") - g("half_direct", "p50_us")) / 1000.0
                 if n99 is not None else None)
        row("added p50 vs direct, half load", added50, "ms", ref50, "nginx added p50")

    for name, label in (("reload", "Admin write -> live"),
                        ("reload10k", f"Admin write -> live ({big})")):
        r = recs.get(name)
        if not r:
            continue
        note = (f"{r['writes']} writes, {r['first_poll_hits']} live on the first request, "
                f"{r['missed']} missed")
        row(f"{label} p50", r["live_p50_ms"], "ms")
        row(f"{label} p99", r["live_p99_ms"], "ms", target="< 50 ms",
            ok=r["live_p99_ms"] < 50 and r["missed"] == 0, note=note)
        row(f"{label.split(' ->')[0]} PUT->ack p50{label[len('Admin write -> live'):]}",
            r["write_p50_ms"], "ms")
        row(f"{label.split(' ->')[0]} PUT->ack p99{label[len('Admin write -> live'):]}",
            r["write_p99_ms"], "ms")

    w1 = recs.get("admin_writes_1")
    if w1:
        row("durable Admin API writes, 1 connection", w1["rps"], "writes/s",
            note=f"sequential PUTs, p50 {w1['p50_us'] / 1000:.2f} ms, p99 {w1['p99_us'] / 1000:.2f} ms, "
                 f"{w1['errors']} errors")
    w = recs.get("admin_writes")
    if w:
        hung = any(r.get("where") == "admin_writes" for r in recs.values()
                   if r.get("type") == "deadlock")
        row(f"durable Admin API writes, {w.get('connections')} connections", w["rps"], "writes/s",
            w1["rps"] if w1 else None, "1 connection", target=">= 1000",
            ok=w["rps"] >= 1000 and w["errors"] == 0 and not hung,
            note=f"{w.get('connections')} concurrent PUTs, p99 {w['p99_us'] / 1000:.1f} ms, "
                 f"{w['errors']} errors (timeouts {w['err_timeout']})"
                 + ("; the Admin API hung and the gateway was restarted" if hung else ""))
    c = recs.get("create")
    if c:
        row("routes created through the Admin API", c["routes"] / c["seconds"], "writes/s",
            note=f"{c['routes']} routes in {c['seconds']:.1f} s, {c['concurrency']} concurrent writes")
    rb = recs.get("rebuild10k")
    if rb:
        row(f"snapshot rebuild, {big}, p50", rb["p50_ms"], "ms",
            note=f"reloader log, {rb['samples']} rebuilds, max {rb['max_ms']:.1f} ms")
    d = recs.get("deadlocks")
    if d:
        where = [r["where"] for r in recs.values() if r.get("type") == "deadlock"]
        row("Admin API hangs (gateway restarts)", d["count"], "", target="0",
            ok=d["count"] == 0, note="; ".join(where))

    def rss(name):
        r = recs.get(name)
        return None if r is None else r["kb"] / 1024.0

    row("RSS idle", rss("rss_idle"), "MB", target="<= 30 MB",
        ok=None if rss("rss_idle") is None else rss("rss_idle") <= 30)
    row("RSS during the plain-route run", rss("rss_plain_load"), "MB")
    row(f"RSS {big}, idle", rss("rss_10k_idle"), "MB")
    row(f"RSS {big}, under load", rss("rss_10k_load"), "MB", target="<= 120 MB",
        ok=None if rss("rss_10k_load") is None else rss("rss_10k_load") <= 120,
        note=f"max VmRSS sampled every 0.2 s during the {big} run")

    # ---- print
    def fmt(v, unit=""):
        if v is None:
            return "-"
        if isinstance(v, str):
            return v
        if unit in ("req/s", "writes/s"):
            return f"{v:,.0f}".replace(",", " ")
        if unit == "ms":
            return f"{v:.3f}"
        if unit == "us":
            return f"{v:.1f}"
        if unit == "MB":
            return f"{v:.1f}"
        if isinstance(v, int):
            return str(v)
        return f"{v:.2f}"

    header = ["metric", "value", "reference", "ratio", "target", "result"]
    table = []
    for r in rows:
        ref = "-" if r["reference"] is None else f"{fmt(r['reference'], r['unit'])} ({r['reference_of']})"
        table.append([
            r["metric"], f"{fmt(r['value'], r['unit'])} {r['unit']}", ref,
            "-" if r["ratio"] is None else f"{r['ratio']:.2f}", r["target"], r["result"],
        ])
    widths = [max(len(header[i]), *(len(t[i]) for t in table)) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(c.ljust(widths[i]) for i, c in enumerate(cells)) + " |"
    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(t) for t in table]
    print("\n".join(out))
    notes = [f"- {r['metric']}: {r['note']}" for r in rows if r["note"]]
    if notes:
        print("\n" + "\n".join(notes))
    fails = [r["metric"] for r in rows if r["result"] == "FAIL"]
    print(f"\n{sum(r['result'] == 'pass' for r in rows)} targets met, {len(fails)} missed"
          + (": " + "; ".join(fails) if fails else ""))

    os.makedirs(outdir, exist_ok=True)
    stamp = info.get("timestamp") or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    doc = {"info": info, "table": rows, "raw": recs}
    for fname in (f"{stamp}.json", "latest.json"):
        with open(os.path.join(outdir, fname), "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    print(f"\nwrote {os.path.join(outdir, stamp + '.json')} and latest.json")


def cmd_rebuild(name, log, min_routes):
    """Median/max snapshot rebuild time from the reloader's log lines, for
    rebuilds of at least MIN_ROUTES routes."""
    import re
    pat = re.compile(r"configuration applied.*?routes=(\d+).*?elapsed_us=(\d+)")
    times = []
    with open(log, errors="replace") as f:
        for line in f:
            m = pat.search(line)
            if m and int(m.group(1)) >= int(min_routes):
                times.append(int(m.group(2)) / 1000.0)
    if not times:
        return
    times = times[-400:]
    print(json.dumps({"name": name, "type": "rebuild", "samples": len(times),
                      "p50_ms": pct(times, 50), "max_ms": max(times)}))


def cmd_get(results, name, field):
    """Print one field of the last record called NAME."""
    val = None
    with open(results) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                if r.get("name") == name:
                    val = r.get(field)
    if val is None:
        fail(f"no {field} for {name} in {results}")
    print(val)


COMMANDS = {
    "get": cmd_get, "rebuild": cmd_rebuild,
    "ports": cmd_ports, "wait": cmd_wait, "token": cmd_token, "routes": cmd_routes,
    "delete": cmd_delete, "reload": cmd_reload, "wrk": cmd_wrk, "report": cmd_report,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    COMMANDS[sys.argv[1]](*sys.argv[2:])
