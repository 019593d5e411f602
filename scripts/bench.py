#!/usr/bin/env python3
"""End-to-end benchmark of patgate against nginx (issue 5). Run through `scripts/bench`.

Layout (2 CPUs): the system under test (SUT) is pinned to CPU 1; wrk, the upstream
(a second nginx answering `200 "ok"` with keep-alive) and Redis to CPU 0. Every
scenario's SUT is a freshly started process, warmed for `--warmup` seconds, then
measured with `wrk -t1 -c<conns> -d<duration>s --latency`; scenarios are interleaved
round by round (D N G0 G1 G2 G3 G4, D N G0 ...) so that machine noise lands on all of
them alike. CPU per request = (utime+stime of the SUT's processes across the measured
run) / requests, from /proc/<pid>/stat.

Scenarios:
  D   wrk -> upstream directly (no SUT; "CPU" column is the upstream's)
  N   nginx (Debian) proxy_pass, upstream keepalive, 1 worker, access_log off
  G0  patgate, route `auth: none`, access log off
  G1  patgate, auth required (scope check), rate limit 1e9/s, identity headers,
      1000 distinct valid tokens round-robin, all cache hits (warmed)
  G2  as G1 with `cache.max_entries: 1`: 1000 tokens cycling through a 1-entry cache,
      so (almost) every request is a cache miss answered by Redis (ratio measured
      from the gateway's own cache_hits/cache_misses counters)
  G3  as G1, but Redis is shut down after warming: cached tokens only
  G4  as G1 config, invalid tokens: 500 with a broken checksum + 500 well-formed
      unknown ones (negative-cached for `negative_ttl`, default 5 s)

Then the fixed-rate phase (`--rates`, default 25,50,75 % of N's median max req/s from
the phase above; `--rate-scenarios`, default D,N,G1,G2): open-loop load from `oha -q`
with `--latency-correction` (latency counted from each request's scheduled send time,
so no coordinated omission), split over `--rate-streams` oha processes with one token
each (oha sends one fixed header set), interleaved round by round like the first phase.
Reported: p50/p99/p99.9 and the same percentiles added over D at the same rate in the
same round; a run whose achieved rate is below 97 % of the target is marked saturated.

Python stdlib only; matplotlib (optional) for the plot.
"""

import argparse
import atexit
import contextlib
import ctypes
import datetime
import hashlib
import http.client
import json
import os
import platform
import random
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# PATGATE_BIN: another build to measure (e.g. an allocator or runtime variant).
BIN = os.environ.get("PATGATE_BIN") or os.path.join(ROOT, "target", "release", "patgate")
SUT_CPU = "1"
LOAD_CPU = "0"
SCENARIOS = ["D", "N", "G0", "G1", "G2", "G3", "G4"]
OHA = shutil.which("oha") or os.path.expanduser("~/.cargo/bin/oha")
PREFIX = "pat_"
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
CLK_TCK = os.sysconf("SC_CLK_TCK")

PROCS = []  # every Popen this script started


def log(*a):
    print("[bench]", *a, file=sys.stderr, flush=True)


def _pdeathsig():
    # Children die with us even if we are SIGKILLed.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def spawn(cmd, cpu, logpath, env=None):
    f = open(logpath, "ab")
    p = subprocess.Popen(
        ["taskset", "-c", cpu] + cmd,
        stdout=f,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        preexec_fn=_pdeathsig,
    )
    f.close()
    PROCS.append(p)
    return p


def stop(p, timeout=10):
    if p is None or p.poll() is not None:
        return
    p.terminate()
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)


def cleanup():
    for p in reversed(PROCS):
        try:
            stop(p, 5)
        except Exception:
            pass


def _on_signal(sig, _frame):
    log(f"signal {sig}: stopping everything")
    sys.exit(128 + sig)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open within {timeout}s")


# ---------------------------------------------------------------- /proc accounting

def children(pid):
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def cpu_ticks(pid):
    """utime+stime of pid and its (direct) children, in clock ticks."""
    total = 0
    for p in [pid] + children(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        except (OSError, IndexError):
            pass
    return total


def cpu_stat(cpu):
    """(busy, total) ticks of one CPU from /proc/stat."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                idle = v[3] + v[4]  # idle + iowait
                return sum(v[:8]) - idle, sum(v[:8])
    return 0, 0


# ---------------------------------------------------------------- Redis (raw RESP)

def redis_cmd(port, *args, timeout=2.0):
    payload = f"*{len(args)}\r\n".encode()
    for a in args:
        b = str(a).encode()
        payload += b"$%d\r\n%s\r\n" % (len(b), b)
    with socket.create_connection(("127.0.0.1", port), timeout) as s:
        s.sendall(payload)
        try:
            return s.recv(4096).decode(errors="replace").strip()
        except OSError:
            return ""


class Redis:
    def __init__(self, work, port):
        self.work, self.port, self.proc = work, port, None

    def start(self):
        self.proc = spawn(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.work,
             "--dbfilename", "dump.rdb", "--protected-mode", "no", "--daemonize", "no"],
            LOAD_CPU, os.path.join(self.work, "redis.log"))
        wait_port(self.port, self.proc)
        deadline = time.time() + 10
        while "PONG" not in redis_cmd(self.port, "PING") and time.time() < deadline:
            time.sleep(0.05)

    def shutdown_save(self):
        try:
            redis_cmd(self.port, "SHUTDOWN", "SAVE")
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            stop(self.proc)

    def dbsize(self):
        r = redis_cmd(self.port, "DBSIZE")
        return int(r[1:]) if r.startswith(":") else -1


# ---------------------------------------------------------------- nginx

NGINX_COMMON = """
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  {body}
}}
"""


def nginx(work, name, body, cpu):
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_COMMON.format(dir=d, body=body))
    return spawn(["nginx", "-p", d, "-e", os.path.join(d, "error.log"), "-c", conf],
                 cpu, os.path.join(d, "stdout.log"))


def upstream_body(port):
    return f"""server {{
    listen 127.0.0.1:{port};
    location / {{ default_type text/plain; return 200 "ok"; }}
  }}"""


def proxy_body(port, up):
    return f"""upstream up {{
    server 127.0.0.1:{up};
    keepalive 64;
    keepalive_requests 100000000;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}"""


# ---------------------------------------------------------------- patgate

def gateway_yaml(port, admin_port, admin_sha, redis_port, up, auth, max_entries=None):
    route = f"""  - name: api
    path_prefix: /
    upstream: http://127.0.0.1:{up}
"""
    if auth:
        route += "    require:\n      scopes: [bench]\n"
    else:
        route += "    auth: none\n"
    cache = f"cache:\n  max_entries: {max_entries}\n" if max_entries else ""
    return f"""listen: 127.0.0.1:{port}
admin:
  listen: 127.0.0.1:{admin_port}
  api_keys:
    - name: bench
      sha256: "{admin_sha}"
store:
  backend: redis
  redis:
    url: redis://127.0.0.1:{redis_port}
{cache}tokens:
  prefix: {PREFIX}
  default_expiry: never
  creation_limit: 0
rate_limit:
  mode: local
  default:
    requests: 1000000000
    per_seconds: 1
    burst: 1000000000
routes:
{route}logging:
  format: json
  level: warn
  access_log: false
"""


class Gateway:
    def __init__(self, work, tag, yaml_fn):
        self.port, self.admin_port = free_port(), free_port()
        self.path = os.path.join(work, f"patgate-{tag}.yaml")
        with open(self.path, "w") as f:
            f.write(yaml_fn(self.port, self.admin_port))
        self.proc = spawn([BIN, "serve", "--config", self.path], SUT_CPU,
                          os.path.join(work, f"patgate-{tag}.log"),
                          env={k: v for k, v in os.environ.items() if k != "RUST_LOG"})
        wait_port(self.port, self.proc)
        wait_port(self.admin_port, self.proc)

    def metrics(self):
        c = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=5)
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
        c.close()
        out = {}
        for line in text.splitlines():
            m = re.match(r"^(patgate_(?:cache_\w+|store_errors\w*))\s+([0-9.eE+-]+)$", line)
            if m:
                out[m.group(1)] = float(m.group(2))
        return out


def get(port, token, path="/bench"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    r = c.getresponse()
    body = r.read().decode(errors="replace")
    c.close()
    return r.status, body


def create_tokens(admin_port, admin_key, n):
    c = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=10)
    out = []
    for i in range(n):
        body = json.dumps({"name": f"bench-{i}", "ownerId": f"bench-owner-{i % 50}",
                           "scopes": ["bench"], "permissions": ["read"]})
        c.request("POST", "/v1/tokens", body=body,
                  headers={"Authorization": f"Bearer {admin_key}",
                           "Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        if r.status not in (200, 201):
            raise RuntimeError(f"token create failed: {r.status} {data[:300]!r}")
        out.append(json.loads(data)["token"])
    c.close()
    return out


def wellformed_unknown(rng):
    rand = "".join(rng.choice(ALPHABET) for _ in range(37))
    n = zlib.crc32((PREFIX + rand).encode())
    chk = ""
    for _ in range(6):
        chk = ALPHABET[n % 62] + chk
        n //= 62
    return PREFIX + rand + chk


def broken_checksum(tok, rng):
    i = rng.randrange(len(PREFIX), len(PREFIX) + 37)
    c = rng.choice([a for a in ALPHABET if a != tok[i]])
    return tok[:i] + c + tok[i + 1:]


# ---------------------------------------------------------------- wrk

WRK_LUA = r"""
local tokens = {}
for line in io.lines(os.getenv("BENCH_TOKENS")) do
  if #line > 0 then tokens[#tokens + 1] = "Bearer " .. line end
end
local n = #tokens
local i = 0
request = function()
  i = i + 1
  if i > n then i = 1 end
  return wrk.format("GET", "/bench", { ["Authorization"] = tokens[i] })
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCHJSON {\"requests\":%d,\"duration_us\":%d,\"bytes\":%d," ..
    "\"err_connect\":%d,\"err_read\":%d,\"err_write\":%d,\"err_status\":%d,\"err_timeout\":%d," ..
    "\"lat_mean_us\":%.2f,\"lat_stdev_us\":%.2f,\"lat_max_us\":%d," ..
    "\"p50_us\":%d,\"p90_us\":%d,\"p99_us\":%d,\"p999_us\":%d}\n",
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
"""


def wrk(port, seconds, conns, script, tokens_file):
    env = dict(os.environ, BENCH_TOKENS=tokens_file)
    cmd = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{conns}", f"-d{seconds}s",
           "--latency", "--timeout", "5s", "-s", script, f"http://127.0.0.1:{port}/bench"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                         stdin=subprocess.DEVNULL, preexec_fn=_pdeathsig, text=True)
    PROCS.append(p)
    try:
        out, _ = p.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        p.kill()
        raise RuntimeError("wrk hung")
    m = re.search(r"^BENCHJSON (.*)$", out, re.M)
    if not m:
        raise RuntimeError(f"wrk failed:\n{out}")
    return json.loads(m.group(1)), out


# ---------------------------------------------------------------- one measured run

@contextlib.contextmanager
def running(sc, rnd, ctx, args, tag=""):
    """Starts scenario `sc`'s system under test (none for D), checks its first answer,
    warms it with `--warmup` seconds of wrk over the scenario's token list (for G3 then
    stops Redis), and stops it on exit. Yields (port, SUT pid or None, Gateway or None)."""
    work = ctx["work"]
    redis = ctx["redis"]
    tokens_file = ctx["invalid_file"] if sc == "G4" else ctx["valid_file"]
    sut = gw = None
    sut_pid = None
    if sc == "D":
        port = ctx["up_port"]
    elif sc == "N":
        port = free_port()
        sut = nginx(work, f"proxy-r{rnd}{tag}", proxy_body(port, ctx["up_port"]), SUT_CPU)
        wait_port(port, sut)
        sut_pid = sut.pid
    else:
        auth = sc != "G0"
        max_entries = 1 if sc == "G2" else None
        gw = Gateway(work, f"{sc}-r{rnd}{tag}", lambda p, a: gateway_yaml(
            p, a, ctx["admin_sha"], ctx["redis_port"], ctx["up_port"], auth, max_entries))
        sut, port, sut_pid = gw.proc, gw.port, gw.proc.pid
        # First request: waits until the disabled-owner set is loaded (fail-closed 503).
        expect = 401 if sc == "G4" else 200
        tok = ctx["invalid"][1] if sc == "G4" else ctx["valid"][0]
        deadline = time.time() + 10
        while True:
            st, body = get(port, tok)
            if st == expect:
                break
            if time.time() > deadline:
                raise RuntimeError(f"{sc}: first request got {st} {body}")
            time.sleep(0.05)
    try:
        wrk(port, args.warmup, args.connections, ctx["lua"], tokens_file)
        if sc == "G3":
            redis.shutdown_save()
            time.sleep(0.2)
        yield port, sut_pid, gw
    finally:
        if sut is not None:
            stop(sut)
        if sc == "G3":
            redis.start()
            n = redis.dbsize()
            if n < len(ctx["valid"]):
                raise RuntimeError(f"Redis restarted with only {n} keys")


def run_one(sc, rnd, ctx, args):
    """One maximum-throughput run (closed loop: wrk, `--connections` connections)."""
    up_pid = ctx["upstream"].pid
    tokens_file = ctx["invalid_file"] if sc == "G4" else ctx["valid_file"]
    with running(sc, rnd, ctx, args) as (port, sut_pid, gw):
        m0 = gw.metrics() if gw else {}
        t0 = time.monotonic()
        c0 = cpu_ticks(sut_pid) if sut_pid else 0
        u0 = cpu_ticks(up_pid)
        s0, l0 = cpu_stat(SUT_CPU), cpu_stat(LOAD_CPU)
        res, raw = wrk(port, args.duration, args.connections, ctx["lua"], tokens_file)
        c1 = cpu_ticks(sut_pid) if sut_pid else 0
        u1 = cpu_ticks(up_pid)
        s1, l1 = cpu_stat(SUT_CPU), cpu_stat(LOAD_CPU)
        t1 = time.monotonic()
        m1 = gw.metrics() if gw else {}
    reqs = res["requests"]
    dur = res["duration_us"] / 1e6
    sut_s = (c1 - c0) / CLK_TCK
    up_s = (u1 - u0) / CLK_TCK
    row = {
        "scenario": sc, "round": rnd,
        "requests": reqs, "duration_s": dur, "rps": reqs / dur,
        "p50_ms": res["p50_us"] / 1e3, "p90_ms": res["p90_us"] / 1e3,
        "p99_ms": res["p99_us"] / 1e3, "p999_ms": res["p999_us"] / 1e3,
        "max_ms": res["lat_max_us"] / 1e3, "mean_ms": res["lat_mean_us"] / 1e3,
        "non2xx": res["err_status"],
        "socket_errors": res["err_connect"] + res["err_read"] + res["err_write"] + res["err_timeout"],
        "sut_cpu_s": sut_s if sut_pid else None,
        "sut_cpu_us_per_req": (sut_s / reqs * 1e6) if (sut_pid and reqs) else None,
        "sut_cpu_util": (sut_s / (t1 - t0)) if sut_pid else None,
        "upstream_cpu_us_per_req": up_s / reqs * 1e6 if reqs else None,
        # Noise indicators: how busy each CPU was, and how much of CPU 1 was not the SUT.
        "cpu1_busy": (s1[0] - s0[0]) / max(1, s1[1] - s0[1]),
        "cpu0_busy": (l1[0] - l0[0]) / max(1, l1[1] - l0[1]),
        "cpu1_foreign_share": ((s1[0] - s0[0]) - (c1 - c0)) / max(1, s1[1] - s0[1]),
        "loadavg_1m": os.getloadavg()[0],
        "gateway_counters": {k: m1.get(k, 0) - m0.get(k, 0) for k in m1},
    }
    if sc != "G4" and row["non2xx"]:
        log(f"WARNING {sc} r{rnd}: {row['non2xx']} non-2xx responses")
    return row


# ---------------------------------------------------------------- fixed-rate latency

def oha_streams(port, rate, seconds, tokens, conns):
    """Open-loop load: one `oha -q` process per token, each at rate/len(tokens) with
    `--latency-correction` (latency counted from each request's scheduled start, so a
    stalled server is charged for the requests it delayed: no coordinated omission).
    Returns each stream's JSON report."""
    procs = []
    for tok in tokens:
        cmd = ["taskset", "-c", LOAD_CPU, OHA, "-z", f"{seconds}s",
               "-q", f"{rate / len(tokens):.1f}", "-c", str(conns),
               "--latency-correction", "--no-tui", "--output-format", "json",
               "--worker-threads", "1", "-H", f"Authorization: Bearer {tok}",
               f"http://127.0.0.1:{port}/bench"]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, preexec_fn=_pdeathsig, text=True)
        PROCS.append(p)
        procs.append(p)
    out = []
    for p in procs:
        try:
            o, e = p.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            p.kill()
            raise RuntimeError("oha hung")
        if p.returncode != 0:
            raise RuntimeError(f"oha failed ({p.returncode}): {e[-500:]}")
        out.append(json.loads(o))
    return out


def rate_one(sc, rnd, pct, rate, ctx, args):
    """One fixed-rate run: `rate` requests/s in all, split over `--rate-streams` oha
    processes with one token each (oha cannot vary a header per request)."""
    tokens = ctx["valid"][:args.rate_streams]
    with running(sc, rnd, ctx, args, tag=f"-q{pct}") as (port, sut_pid, gw):
        m0 = gw.metrics() if gw else {}
        c0 = cpu_ticks(sut_pid) if sut_pid else 0
        streams = oha_streams(port, rate, args.rate_duration, tokens, args.rate_connections)
        c1 = cpu_ticks(sut_pid) if sut_pid else 0
        m1 = gw.metrics() if gw else {}
    # Each stream is an independent sample of the same latency distribution; the
    # percentile reported is the mean of the streams' percentiles.
    def pctl(key):
        return statistics.fmean(st["latencyPercentiles"][key] for st in streams) * 1e3
    ok = sum(st["statusCodeDistribution"].get("200", 0) for st in streams)
    total = sum(sum(st["statusCodeDistribution"].values()) for st in streams)
    errors = sum(sum(st["errorDistribution"].values()) for st in streams)
    achieved = sum(st["summary"]["requestsPerSec"] or 0 for st in streams)
    return {
        "scenario": sc, "round": rnd, "load_pct": pct, "target_rps": rate,
        "achieved_rps": achieved, "saturated": achieved < 0.97 * rate,
        "p50_ms": pctl("p50"), "p99_ms": pctl("p99"), "p999_ms": pctl("p99.9"),
        "responses": total, "non200": total - ok, "errors": errors,
        "sut_cpu_us_per_req": ((c1 - c0) / CLK_TCK / total * 1e6) if (sut_pid and total) else None,
        "gateway_counters": {k: m1.get(k, 0) - m0.get(k, 0) for k in m1},
    }


def summarize_rates(rows):
    """Per scenario and load level: medians over rounds, and latency added over D
    (same round, same load level)."""
    out = {}
    for r in rows:
        d = [x for x in rows if x["scenario"] == "D" and x["round"] == r["round"]
             and x["load_pct"] == r["load_pct"]]
        for key in ("p50_ms", "p99_ms", "p999_ms"):
            r[key.replace("_ms", "_added_ms")] = (r[key] - d[0][key]) if d else None
    for sc in SCENARIOS:
        for pct in sorted({r["load_pct"] for r in rows}):
            rs = [r for r in rows if r["scenario"] == sc and r["load_pct"] == pct]
            if not rs:
                continue
            s = {k: med_range([r[k] for r in rs]) for k in
                 ("target_rps", "achieved_rps", "p50_ms", "p99_ms", "p999_ms",
                  "p50_added_ms", "p99_added_ms", "p999_added_ms", "sut_cpu_us_per_req")}
            s["saturated_runs"] = sum(r["saturated"] for r in rs)
            s["non200_total"] = sum(r["non200"] for r in rs)
            s["errors_total"] = sum(r["errors"] for r in rs)
            ctr = {}
            for r in rs:
                for k, v in r["gateway_counters"].items():
                    ctr[k] = ctr.get(k, 0) + v
            s["gateway_counters_total"] = ctr
            out.setdefault(sc, {})[str(pct)] = s
    return out


def rate_table(rsum):
    lines = [
        "| scenario | load (% of N max) | target req/s | achieved req/s | p50 ms | p99 ms | p99.9 ms | p50 added over D | p99 added | p99.9 added | SUT CPU µs/req |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for sc in SCENARIOS:
        for pct, s in sorted(rsum.get(sc, {}).items(), key=lambda kv: int(kv[0])):
            sat = f" ({s['saturated_runs']} runs saturated)" if s["saturated_runs"] else ""
            lines.append("| {} | {} % | {} | {}{} | {} | {} | {} | {} | {} | {} | {} |".format(
                sc, pct, fmt_mr(s["target_rps"]), fmt_mr(s["achieved_rps"]), sat,
                fmt_mr(s["p50_ms"], "{:.3f}"), fmt_mr(s["p99_ms"], "{:.3f}"),
                fmt_mr(s["p999_ms"], "{:.3f}"),
                fmt_mr(s["p50_added_ms"], "{:+.3f}") if sc != "D" else "–",
                fmt_mr(s["p99_added_ms"], "{:+.3f}") if sc != "D" else "–",
                fmt_mr(s["p999_added_ms"], "{:+.3f}") if sc != "D" else "–",
                fmt_mr(s["sut_cpu_us_per_req"], "{:.1f}") if sc != "D" else "–"))
    return "\n".join(lines)


# ---------------------------------------------------------------- summary

def med_range(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def summarize(rows, rounds):
    by = {sc: [r for r in rows if r["scenario"] == sc] for sc in SCENARIOS}
    summ = {}
    for sc, rs in by.items():
        if not rs:
            continue
        s = {k: med_range([r[k] for r in rs]) for k in
             ("rps", "p50_ms", "p99_ms", "p999_ms", "sut_cpu_us_per_req", "sut_cpu_util",
              "upstream_cpu_us_per_req", "cpu1_foreign_share", "cpu0_busy", "loadavg_1m")}
        s["non2xx_total"] = sum(r["non2xx"] for r in rs)
        s["requests_total"] = sum(r["requests"] for r in rs)
        s["socket_errors_total"] = sum(r["socket_errors"] for r in rs)
        ctr = {}
        for r in rs:
            for k, v in r["gateway_counters"].items():
                ctr[k] = ctr.get(k, 0) + v
        s["gateway_counters_total"] = ctr
        # Per-round ratios (same round = same machine conditions), then median/min/max.
        for ref in ("N", "D"):
            for key in ("rps", "sut_cpu_us_per_req", "p50_ms", "p99_ms"):
                vals = []
                for r in rs:
                    o = [x for x in by.get(ref, []) if x["round"] == r["round"]]
                    if o and r[key] and o[0][key]:
                        vals.append(r[key] / o[0][key])
                s[f"{key}_vs_{ref}"] = med_range(vals)
        summ[sc] = s
    # G3 relative to G1, per round
    vals = {}
    for key in ("rps", "sut_cpu_us_per_req", "p99_ms"):
        v = []
        for r in by.get("G3", []):
            o = [x for x in by.get("G1", []) if x["round"] == r["round"]]
            if o and o[0][key]:
                v.append(r[key] / o[0][key])
        vals[key] = med_range(v)
    return summ, {"G3_vs_G1": vals}


def fmt_mr(d, f="{:.0f}", scale=1.0):
    if not d:
        return "–"
    return (f.format(d["median"] * scale) + " (" + f.format(d["min"] * scale) + "–"
            + f.format(d["max"] * scale) + ")")


def table(summ):
    lines = [
        "| scenario | req/s median (min–max) | req/s ÷ N | req/s ÷ D | p50 ms | p99 ms | SUT CPU µs/req | CPU/req ÷ N | SUT CPU busy | non-2xx |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for sc in SCENARIOS:
        s = summ.get(sc)
        if not s:
            continue
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            sc, fmt_mr(s["rps"]),
            fmt_mr(s["rps_vs_N"], "{:.2f}"), fmt_mr(s["rps_vs_D"], "{:.2f}"),
            fmt_mr(s["p50_ms"], "{:.2f}"), fmt_mr(s["p99_ms"], "{:.2f}"),
            fmt_mr(s["sut_cpu_us_per_req"], "{:.1f}") if sc != "D" else "(upstream) " + fmt_mr(s["upstream_cpu_us_per_req"], "{:.1f}"),
            fmt_mr(s["sut_cpu_us_per_req_vs_N"], "{:.2f}"),
            fmt_mr(s["sut_cpu_util"], "{:.0f}%", 100) if sc != "D" else "–",
            f"{s['non2xx_total']}/{s['requests_total']}"))
    return "\n".join(lines)


def plot(summ, rsum, path, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not available: no plot")
        return False
    scs = [s for s in SCENARIOS if s in summ]
    fig, axes = plt.subplots(1, 3 if rsum else 2, figsize=(18 if rsum else 12, 4.5))
    a1, a2 = axes[0], axes[1]
    med = [summ[s]["rps"]["median"] for s in scs]
    lo = [summ[s]["rps"]["median"] - summ[s]["rps"]["min"] for s in scs]
    hi = [summ[s]["rps"]["max"] - summ[s]["rps"]["median"] for s in scs]
    a1.bar(scs, med, yerr=[lo, hi], capsize=4, color="#4c72b0")
    a1.set_ylabel("requests/s (median, bars = min–max)")
    a1.set_title("Throughput, wrk -t1 -c32")
    x = range(len(scs))
    w = 0.38
    for off, key, col in ((-w / 2, "p50_ms", "#55a868"), (w / 2, "p99_ms", "#c44e52")):
        m = [summ[s][key]["median"] for s in scs]
        lo = [summ[s][key]["median"] - summ[s][key]["min"] for s in scs]
        hi = [summ[s][key]["max"] - summ[s][key]["median"] for s in scs]
        a2.bar([i + off for i in x], m, w, yerr=[lo, hi], capsize=3, color=col,
               label=key.replace("_ms", ""))
    a2.set_xticks(list(x))
    a2.set_xticklabels(scs)
    a2.set_ylabel("latency ms (median, bars = min–max)")
    a2.set_title("Latency at max throughput")
    a2.legend()
    if rsum:
        a3 = axes[2]
        for i, sc in enumerate(SCENARIOS):
            levels = sorted(rsum.get(sc, {}), key=int)
            if not levels:
                continue
            for key, style in (("p99_ms", "-o"), ("p999_ms", ":x")):
                a3.plot([int(p) for p in levels],
                        [rsum[sc][p][key]["median"] for p in levels], style, color=f"C{i}",
                        label=f"{sc} {key.replace('_ms', '').replace('p999', 'p99.9')}")
        a3.set_xlabel("load, % of N's max req/s (oha -q, latency-corrected)")
        a3.set_ylabel("latency ms (median of rounds)")
        a3.set_yscale("log")
        a3.set_title("Latency at fixed rates")
        a3.legend(fontsize=7, ncol=2)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except Exception:
        return None


def machine():
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = f.readline().split(":", 1)[1].strip()
    except OSError:
        pass
    return {
        "cpu_model": model, "cpus": os.cpu_count(), "mem_total": mem,
        "kernel": platform.release(), "os": sh(". /etc/os-release && echo $PRETTY_NAME"),
        "nginx": sh("nginx -v 2>&1"), "wrk": sh("wrk --version 2>&1 | head -1"),
        "redis": sh("redis-server --version"), "rustc": sh("rustc --version"),
        "loadavg_start": os.getloadavg(),
    }


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=5, help="seconds per measured wrk run")
    ap.add_argument("--warmup", type=int, default=1, help="seconds of wrk before each run")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench-results"))
    ap.add_argument("--rates", default="25,50,75",
                    help="fixed-rate phase: load levels in %% of N's max req/s ('' = skip)")
    ap.add_argument("--rate-rounds", type=int, default=3)
    ap.add_argument("--rate-duration", type=int, default=5, help="seconds per oha run")
    ap.add_argument("--rate-scenarios", default="D,N,G1,G2")
    ap.add_argument("--rate-streams", type=int, default=4,
                    help="oha processes per run, one token each")
    ap.add_argument("--rate-connections", type=int, default=8, help="connections per stream")
    ap.add_argument("--rate-base", type=float,
                    help="req/s that 100%% stands for (default: N's median max in this run)")
    args = ap.parse_args()
    scenarios = [s for s in args.scenarios.split(",") if s]
    rate_scenarios = [s for s in args.rate_scenarios.split(",") if s]
    rates = [int(x) for x in args.rates.split(",") if x]
    for s in scenarios + rate_scenarios:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s}")
    if rates and not args.rate_base and "N" not in scenarios:
        ap.error("the fixed-rate phase needs N in --scenarios, or --rate-base")
    if rates and not os.access(OHA, os.X_OK):
        ap.error("oha not found (cargo install --locked oha), or pass --rates ''")

    atexit.register(cleanup)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)

    work = tempfile.mkdtemp(prefix="patgate-bench-")
    atexit.register(lambda: shutil.rmtree(work, ignore_errors=True)
                    if not os.environ.get("BENCH_KEEP") else None)
    log(f"work dir {work}")
    started = datetime.datetime.now(datetime.timezone.utc)
    ctx = {"work": work}

    # Load side (CPU 0): upstream nginx, Redis.
    ctx["up_port"] = free_port()
    ctx["upstream"] = nginx(work, "upstream", upstream_body(ctx["up_port"]), LOAD_CPU)
    wait_port(ctx["up_port"], ctx["upstream"])
    ctx["redis_port"] = free_port()
    ctx["redis"] = Redis(work, ctx["redis_port"])
    ctx["redis"].start()

    # Tokens, created through a setup gateway's admin API.
    admin_key = "pgadm_bench-" + secrets.token_urlsafe(24)
    ctx["admin_sha"] = hashlib.sha256(admin_key.encode()).hexdigest()
    setup = Gateway(work, "setup", lambda p, a: gateway_yaml(
        p, a, ctx["admin_sha"], ctx["redis_port"], ctx["up_port"], True))
    t = time.time()
    ctx["valid"] = create_tokens(setup.admin_port, admin_key, args.tokens)
    log(f"created {len(ctx['valid'])} tokens in {time.time() - t:.1f}s")
    rng = random.Random(5)
    invalid = []
    for i in range(args.tokens // 2):
        invalid.append(broken_checksum(ctx["valid"][i], rng))
        invalid.append(wellformed_unknown(rng))
    ctx["invalid"] = invalid
    # Sanity: the three kinds are answered as intended.
    st = [get(setup.port, ctx["valid"][0]), get(setup.port, invalid[0]),
          get(setup.port, invalid[1])]
    log("sanity:", [(s, b[:70]) for s, b in st])
    if st[0][0] != 200 or st[1][0] != 401 or "Expected" not in st[1][1] \
            or st[2][0] != 401 or st[2][1].strip() != '{"error":"Invalid PAT"}':
        raise RuntimeError(f"sanity check failed: {st}")
    stop(setup.proc)
    ctx["valid_file"] = os.path.join(work, "valid.txt")
    ctx["invalid_file"] = os.path.join(work, "invalid.txt")
    with open(ctx["valid_file"], "w") as f:
        f.write("\n".join(ctx["valid"]) + "\n")
    with open(ctx["invalid_file"], "w") as f:
        f.write("\n".join(invalid) + "\n")
    ctx["lua"] = os.path.join(work, "tokens.lua")
    with open(ctx["lua"], "w") as f:
        f.write(WRK_LUA)

    rows = []
    for rnd in range(1, args.rounds + 1):
        for sc in scenarios:
            row = run_one(sc, rnd, ctx, args)
            rows.append(row)
            cpu = row["sut_cpu_us_per_req"]
            log(f"round {rnd} {sc:>2}: {row['rps']:9.0f} req/s  p50 {row['p50_ms']:.2f} ms  "
                f"p99 {row['p99_ms']:.2f} ms  "
                + (f"SUT {cpu:.1f} µs/req busy {row['sut_cpu_util'] * 100:.0f}%  " if cpu else "")
                + f"cpu1-foreign {row['cpu1_foreign_share'] * 100:.0f}% cpu0 {row['cpu0_busy'] * 100:.0f}%  "
                + f"non-2xx {row['non2xx']}  {row['gateway_counters'] or ''}")

    summ, extra = summarize(rows, args.rounds)

    # Fixed-rate phase: latency at 25/50/75 % of N's maximum, open loop (oha -q with
    # latency correction), interleaved the same way.
    rate_rows, rsum, base = [], {}, None
    if rates:
        base = args.rate_base or summ["N"]["rps"]["median"]
        for rnd in range(1, args.rate_rounds + 1):
            for pct in rates:
                for sc in rate_scenarios:
                    row = rate_one(sc, rnd, pct, base * pct / 100, ctx, args)
                    rate_rows.append(row)
                    log(f"rate round {rnd} {pct:>3}% {sc:>2}: target {row['target_rps']:8.0f} "
                        f"achieved {row['achieved_rps']:8.0f} req/s  p50 {row['p50_ms']:.3f} "
                        f"p99 {row['p99_ms']:.3f} p99.9 {row['p999_ms']:.3f} ms  "
                        f"non-200 {row['non200']} errors {row['errors']}  "
                        f"{row['gateway_counters'] or ''}")
        rsum = summarize_rates(rate_rows)
    meta = {
        "started": started.isoformat(), "finished": datetime.datetime.now(
            datetime.timezone.utc).isoformat(),
        "git_commit": sh(f"git -C {ROOT} rev-parse HEAD"),
        "git_dirty": bool(sh(f"git -C {ROOT} status --porcelain -- src Cargo.toml Cargo.lock")),
        "machine": dict(machine(), loadavg_end=os.getloadavg()),
        "params": vars(args), "scenarios": scenarios,
        "pinning": {"sut": SUT_CPU, "wrk_upstream_redis": LOAD_CPU},
        "command": "scripts/bench " + " ".join(sys.argv[1:]),
    }
    result = {"meta": meta, "runs": rows, "summary": summ, "derived": extra,
              "table_markdown": table(summ),
              "rate_base_rps": base, "rate_runs": rate_rows, "rate_summary": rsum,
              "rate_table_markdown": rate_table(rsum) if rsum else None}
    os.makedirs(args.out, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    path = os.path.join(args.out, f"{stamp}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    shutil.copyfile(path, os.path.join(args.out, "latest.json"))
    title = (f"patgate e2e {stamp}, {args.rounds} rounds × {args.duration}s, "
             f"SUT on CPU {SUT_CPU}, wrk+upstream+Redis on CPU {LOAD_CPU}")
    if plot(summ, rsum, os.path.join(args.out, f"{stamp}.png"), title):
        shutil.copyfile(os.path.join(args.out, f"{stamp}.png"),
                        os.path.join(args.out, "latest.png"))
    print()
    print(table(summ))
    print()
    g = extra["G3_vs_G1"]
    print("G3 ÷ G1 (per-round): req/s " + fmt_mr(g["rps"], "{:.2f}")
          + ", CPU/req " + fmt_mr(g["sut_cpu_us_per_req"], "{:.2f}")
          + ", p99 " + fmt_mr(g["p99_ms"], "{:.2f}"))
    for sc in ("G1", "G2", "G3", "G4"):
        if sc in summ:
            print(f"{sc} gateway counters over measured runs: "
                  + json.dumps({k.replace('patgate_', ''): int(v) for k, v in
                                summ[sc]["gateway_counters_total"].items()}))
    if rsum:
        print(f"\nFixed rate (oha -q, latency-corrected; 100 % = {base:.0f} req/s):\n")
        print(rate_table(rsum))
        print()
        for pct in rates:
            g1 = rsum.get("G1", {}).get(str(pct), {}).get("p99_added_ms")
            n = rsum.get("N", {}).get(str(pct), {}).get("p99_added_ms")
            g2 = rsum.get("G2", {}).get(str(pct), {}).get("p99_added_ms")
            if g1 and n:
                print(f"{pct} %: G1 p99 added {g1['median']:+.3f} ms vs N {n['median']:+.3f} ms"
                      + (f"; G2 p99 added {g2['median']:+.3f} ms (goal ≤ 0.5)" if g2 else ""))
    print(f"\nwrote {path} (and latest.json/latest.png)")


if __name__ == "__main__":
    main()
