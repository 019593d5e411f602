#!/usr/bin/env python3
"""Soak test of patgate: hours-style mixed traffic, watching for leaks. Run through
`scripts/soak`.

Starts redis-server, an upstream (nginx answering 200 "ok" with keep-alive when
nginx is installed, else a threaded Python server) and `patgate serve`, creates
tokens through the admin API, then for --duration drives:

  - wrk (-t1 -c<connections>) cycling through valid, malformed (bad checksum),
    unknown well-formed, revoked and rate-limited tokens and an `auth: none` route;
  - slow clients: slowloris heads trickled in and abandoned, and requests whose
    response is never read before the connection is dropped.

Every --sample seconds it records the gateway's RSS (VmRSS) and open descriptors
(/proc/<pid>/fd). It fails (exit 1) if, after --warmup, either keeps growing:
  - RSS: the median of the last fifth of samples is above the median of the first
    fifth after warm-up by more than 25 % + 16 MiB;
  - descriptors: the same comparison with a slack of 16, and once the load has
    stopped and idle connections have timed out (6 s later, idle_seconds is 3) the
    count is back within 8 of what it was before the load.
Samples go to --csv if given. Python stdlib only; needs redis-server and wrk.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADMIN_KEY = "pgadm_soak-admin-key"
PROCS = []


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def spawn(cmd, logpath, **kw):
    f = open(logpath, "wb")
    p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, **kw)
    PROCS.append(p)
    return p


def cleanup():
    for p in reversed(PROCS):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()


def parse_duration(text):
    m = re.fullmatch(r"(\d+)([smh]?)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 600, 90s, 10m, 1h)")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


# ---------------------------------------------------------------- upstream

class OkHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *a):
        pass


def start_upstream(work):
    port = free_port()
    if shutil.which("nginx"):
        d = os.path.join(work, "nginx")
        os.makedirs(d, exist_ok=True)
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};
  uwsgi_temp_path {d}; scgi_temp_path {d};
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok"; }} }} }}
""")
        spawn(["nginx", "-p", d, "-c", conf], os.path.join(work, "nginx.log"))
        kind = "nginx"
    else:
        srv = ThreadingHTTPServer(("127.0.0.1", port), OkHandler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        kind = "python"
    wait_port(port)
    return port, kind


# ---------------------------------------------------------------- gateway

def start_gateway(binary, work, redis_port, up_port):
    import hashlib
    sha = hashlib.sha256(ADMIN_KEY.encode()).hexdigest()
    cfg = os.path.join(work, "patgate.yaml")
    with open(cfg, "w") as f:
        f.write(f"""listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
  api_keys:
    - name: soak
      sha256: "{sha}"
logging:
  format: json
  level: info
  access_log: false
store:
  backend: redis
  redis:
    url: redis://127.0.0.1:{redis_port}
tokens:
  prefix: pat_
  creation_limit: 0
rate_limit:
  mode: local
  default: {{requests: 1000000, per_seconds: 1, burst: 1000000}}
timeouts:
  header_read_seconds: 2
  idle_seconds: 3    # idle client and pooled upstream connections close soon after the load
routes:
  - name: api
    path_prefix: /api/
    upstream: http://127.0.0.1:{up_port}
  - name: health
    path_prefix: /health
    upstream: http://127.0.0.1:{up_port}
    auth: none
""")
    logpath = os.path.join(work, "patgate.log")
    env = {k: v for k, v in os.environ.items() if k != "RUST_LOG"}
    p = spawn([binary, "serve", "--config", cfg], logpath, env=env)
    deadline = time.time() + 30
    while time.time() < deadline:
        with open(logpath, "rb") as f:
            for line in f:
                if b'"listening"' in line:
                    v = json.loads(line)
                    return p, v["data.addr"], v["admin.addr"]
        if p.poll() is not None:
            with open(logpath, errors="replace") as f:
                raise RuntimeError(f"patgate exited:\n{f.read()[-2000:]}")
        time.sleep(0.1)
    with open(logpath, errors="replace") as f:
        tail = f.read()[-2000:]
    raise RuntimeError(f"patgate did not start:\n{tail}")


def admin(addr, method, path, body=None):
    req = urllib.request.Request(
        f"http://{addr}{path}", method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"null")


def make_tokens(addr):
    valid = [admin(addr, "POST", "/v1/tokens", {"name": f"v{i}", "ownerId": "soak"})["token"]
             for i in range(20)]
    revoked = []
    for i in range(2):
        c = admin(addr, "POST", "/v1/tokens", {"name": f"r{i}", "ownerId": "soak"})
        admin(addr, "POST", f"/v1/tokens/{c['record']['id']}/revoke")
        revoked.append(c["token"])
    limited = [admin(addr, "POST", "/v1/tokens", {
        "name": f"l{i}", "ownerId": "soak", "rateLimit": {"requests": 1, "perSeconds": 60}})["token"]
        for i in range(2)]
    broken = [t[:-1] + ("a" if t[-1] != "a" else "b") for t in valid[:5]]
    unknown = ["pat_" + "Z" * 43, "pat_short", "not-a-token"]
    return valid, revoked + limited + broken + unknown


WRK_LUA = """
local tokens = {}
for line in io.lines("%s") do tokens[#tokens + 1] = line end
local i = 0
request = function()
  i = i + 1
  local t = tokens[(i %% #tokens) + 1]
  local path = "/api/x"
  if i %% 9 == 0 then path = "/health" end
  return wrk.format("GET", path, { ["Authorization"] = "Bearer " .. t })
end
"""


# ---------------------------------------------------------------- slow clients

def slow_clients(host, port, token, stop):
    def slowloris():
        while not stop.is_set():
            try:
                s = socket.create_connection((host, port), timeout=5)
                s.sendall(b"GET /api/x HTTP/1.1\r\nHost: x\r\n")
                time.sleep(0.5)
                s.sendall(b"X-Slow: 1\r\n")
                time.sleep(0.5)
                s.close()
            except OSError:
                time.sleep(0.1)

    def abandon():
        while not stop.is_set():
            try:
                s = socket.create_connection((host, port), timeout=5)
                s.sendall(f"GET /api/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
                time.sleep(0.05)
                s.close()
            except OSError:
                time.sleep(0.1)

    threads = [threading.Thread(target=f, daemon=True) for f in (slowloris, slowloris, abandon)]
    for t in threads:
        t.start()
    return threads


def sample(pid):
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=parse_duration, default=600,
                    help="how long to drive traffic (600, 90s, 10m, 1h; default 10m)")
    ap.add_argument("--warmup", type=parse_duration, default=None,
                    help="samples ignored at the start (default: a tenth of the duration, 5 s to 60 s)")
    ap.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--connections", type=int, default=16, help="wrk connections")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "patgate"))
    ap.add_argument("--csv", help="write the samples here")
    args = ap.parse_args()
    warmup = args.warmup if args.warmup is not None else min(60, max(5, args.duration // 10))
    for tool in ("redis-server", "wrk"):
        if not shutil.which(tool):
            sys.exit(f"soak: {tool} not found (Debian: apt-get install -y redis-server wrk)")
    if not os.path.exists(args.bin):
        log("building", args.bin)
        subprocess.run(["cargo", "build", "--release", "--offline"], cwd=ROOT, check=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    work = tempfile.mkdtemp(prefix="patgate-soak-")
    try:
        redis_port = free_port()
        spawn(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", work], os.path.join(work, "redis.log"))
        wait_port(redis_port)
        up_port, up_kind = start_upstream(work)
        gw, data, admin_addr = start_gateway(args.bin, work, redis_port, up_port)
        valid, invalid = make_tokens(admin_addr)
        tokens_file = os.path.join(work, "tokens.txt")
        with open(tokens_file, "w") as f:
            # Mostly valid traffic, every kind of invalid one mixed in.
            f.write("\n".join(valid * 3 + invalid) + "\n")
        lua = os.path.join(work, "mixed.lua")
        with open(lua, "w") as f:
            f.write(WRK_LUA % tokens_file)
        host, port = data.rsplit(":", 1)
        log(f"gateway pid {gw.pid} on {data}, upstream {up_kind}, work dir {work}")
        rss0, fds_idle = sample(gw.pid)
        log(f"idle: RSS {rss0} KiB, {fds_idle} fds; running {args.duration}s (warm-up {warmup}s)")

        stop = threading.Event()
        slow_clients(host, int(port), valid[0], stop)
        wrk = subprocess.Popen(["wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s",
                                "-s", lua, f"http://{data}/"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        PROCS.append(wrk)
        start = time.time()
        samples = []
        while wrk.poll() is None:
            time.sleep(args.sample)
            if gw.poll() is not None:
                log("FAIL: patgate exited during the soak")
                return 1
            t = time.time() - start
            rss, fds = sample(gw.pid)
            samples.append((t, rss, fds))
            log(f"t={t:6.0f}s RSS {rss:8d} KiB  fds {fds:5d}")
        stop.set()
        out = wrk.stdout.read()
        time.sleep(6)  # > idle_seconds: pooled and client connections are closed by now
        rss_end, fds_end = sample(gw.pid)
        log(f"after the load: RSS {rss_end} KiB, {fds_end} fds")
        print(out)
        if args.csv:
            with open(args.csv, "w") as f:
                f.write("seconds,rss_kib,fds\n")
                f.writelines(f"{t:.1f},{r},{d}\n" for t, r, d in samples)

        steady = [s for s in samples if s[0] >= warmup]
        if len(steady) < 5:
            log("FAIL: too few samples after warm-up; use a longer --duration or a shorter --sample")
            return 1
        n = max(1, len(steady) // 5)
        first_rss = statistics.median(s[1] for s in steady[:n])
        last_rss = statistics.median(s[1] for s in steady[-n:])
        first_fds = statistics.median(s[2] for s in steady[:n])
        last_fds = statistics.median(s[2] for s in steady[-n:])
        failures = []
        if last_rss > first_rss * 1.25 + 16 * 1024:
            failures.append(f"RSS grew after warm-up: {first_rss:.0f} -> {last_rss:.0f} KiB")
        if last_fds > first_fds + 16:
            failures.append(f"open descriptors grew under load: {first_fds:.0f} -> {last_fds:.0f}")
        if fds_end > fds_idle + 8:
            failures.append(f"descriptors not released after the load: {fds_idle} idle before, {fds_end} after")
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        total = re.search(r"(\d+) requests in", out)
        log(f"requests {total.group(1) if total else '?'}, non-2xx {errors.group(1) if errors else 0} "
            f"(expected: the invalid, revoked and rate-limited share)")
        log(f"RSS {first_rss:.0f} -> {last_rss:.0f} KiB, fds {first_fds:.0f} -> {last_fds:.0f} (steady state)")
        for f in failures:
            log("FAIL:", f)
        if not failures:
            log("PASS: no growth in RSS or descriptors after warm-up")
        return 1 if failures else 0
    finally:
        cleanup()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
