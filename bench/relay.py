"""Relay performance benchmark (issue #7): direct vs caption-relay vs nginx, K real-time 80 ms streams, one run.

    .venv/bin/pip install picows psutil          # benchmark-only tools (not app dependencies)
    .venv/bin/python bench/relay.py              # full run, K = 100, 500, 1000, 2000 (about 6 minutes)
    .venv/bin/python bench/relay.py --quick      # smoke run: K = 100, short windows (about 1 minute)

Everything runs on 127.0.0.1 and stops by itself. Processes:
  * a fast Flux-speaking upstream (picows + uvloop, this file's `_upstream` mode), pinned to core 1, for the whole run;
  * per (mode, K): the system under test pinned to core 0 - nothing (`direct`), the relay as users run it
    (`python -m webapp`, STT_BACKEND=deepgram, DEEPGRAM_URL pointing at the fake upstream), nginx as a WebSocket
    proxy (config written to a temp dir, non-daemon child), or the relay with 2 uvicorn workers - and a load
    generator (this file's `_loadgen` mode, picows + uvloop) pinned to core 1.
Audio frames are 2,560 bytes (80 ms of 16 kHz 16-bit PCM); bytes 0..15 carry <QQ>(seq, t_send_ns), 16..19 a magic.
The upstream answers every `--every` frames (default 3 = every 240 ms, Flux's Update cadence) with a ~500-byte
Flux TurnInfo Update whose transcript is "t<t_send_ns> s<seq> c<frames received on this connection>", so every
reply is distinct (the relay turns each into a `transcript` event) and the client measures the round trip
client -> relay -> upstream -> relay -> client on one clock and checks c == seq + 1 (nothing lost or reordered).
On CloseStream the upstream answers a final TurnInfo "e<count> g<gaps> r<reorders>" that the client compares with
the number of frames it sent.  See docs/benchmarks.md, "Relay performance", for the method and the results.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

FRAME_MS = 80
FRAME_BYTES = 2560            # 80 ms @ 16 kHz, 16-bit mono
MAGIC = b"CRB1"
HDR = struct.Struct("<QQ")
REPO = Path(__file__).resolve().parent.parent


# =====================================================================================================
# Fake Flux upstream (picows server)
# =====================================================================================================

def run_upstream(port: int, every: int, turn_every: int, aligned: bool) -> None:
    import asyncio
    import gc
    import random
    import uuid

    import uvloop
    from picows import WSCloseCode, WSListener, WSMsgType, ws_create_server

    BIN, TEXT, CLOSE, PING = WSMsgType.BINARY, WSMsgType.TEXT, WSMsgType.CLOSE, WSMsgType.PING
    unpack_from = HDR.unpack_from
    stats = {"connections": 0, "open": 0, "frames": 0, "silence": 0, "gaps": 0, "reorders": 0, "replies": 0}
    words = ('"words":[{"word":"caption","confidence":0.95,"start":0.0,"end":0.4},'
             '{"word":"relay","confidence":0.93,"start":0.4,"end":0.8},'
             '{"word":"benchmark","confidence":0.91,"start":0.8,"end":1.3},'
             '{"word":"update","confidence":0.9,"start":1.3,"end":1.6}]')
    update = ('{"type":"TurnInfo","request_id":"%s","sequence_id":%d,"event":"%s","turn_index":%d,'
              '"audio_window_start":%.2f,"audio_window_end":%.2f,"transcript":"t%d s%d c%d",' + words
              + ',"end_of_turn_confidence":%s}')
    final = ('{"type":"TurnInfo","request_id":"%s","sequence_id":%d,"event":"EndOfTurn","turn_index":0,'
             '"audio_window_start":0.0,"audio_window_end":%.2f,"transcript":"e%d g%d r%d","words":[],'
             '"end_of_turn_confidence":0.9,"trigger":"manual"}')

    class Up(WSListener):
        def __init__(self):
            super().__init__()
            self.rid = str(uuid.uuid4())
            self.count = self.expect = self.gaps = self.reorders = self.sid = self.turn = 0
            self.turn_start = 0.0
            # Speakers are not in step: each connection's answers and turn ends are offset, as its frames are
            # (--aligned puts all of them in step: every stream's answer within the same 80 ms).
            self.reply_phase = 0 if aligned else random.randrange(every)
            self.turn_phase = 0 if aligned else random.randrange(turn_every)

        def on_ws_connected(self, t):
            stats["connections"] += 1
            stats["open"] += 1
            t.send(TEXT, b'{"type":"Connected","request_id":"%s","sequence_id":0}' % self.rid.encode())

        def on_ws_disconnected(self, t):
            stats["open"] -= 1

        def on_ws_frame(self, t, f):
            mt = f.msg_type
            if mt is BIN:
                mv = f.get_payload_as_memoryview()
                if len(mv) < 20 or mv[16:20] != MAGIC:
                    stats["silence"] += 1     # the relay's keep-alive silence, not ours
                    return
                seq, ts = unpack_from(mv, 0)
                self.count += 1
                stats["frames"] += 1
                if seq != self.expect:
                    if seq > self.expect:
                        self.gaps += seq - self.expect
                        stats["gaps"] += seq - self.expect
                    else:
                        self.reorders += 1
                        stats["reorders"] += 1
                self.expect = seq + 1
                if (self.count + self.reply_phase) % every == 0:
                    self.sid += 1
                    stats["replies"] += 1
                    end = self.count * 0.08
                    if (self.sid + self.turn_phase) % turn_every:
                        t.send(TEXT, (update % (self.rid, self.sid, "Update", self.turn, self.turn_start, end, ts, seq,
                                                self.count, "0.05")).encode())
                    else:   # the turn ends: the relay delivers a final and trims its replay buffer
                        t.send(TEXT, (update % (self.rid, self.sid, "EndOfTurn", self.turn, self.turn_start, end, ts,
                                                seq, self.count, '0.9,"trigger":"model"')).encode())
                        self.turn += 1
                        self.turn_start = end
            elif mt is TEXT:
                if b"CloseStream" in f.get_payload_as_bytes():
                    self.sid += 1
                    t.send(TEXT, (final % (self.rid, self.sid, self.count * 0.08, self.count, self.gaps,
                                           self.reorders)).encode())
                    t.send_close(WSCloseCode.OK)
                    t.disconnect()
                # ForceEndTurn / KeepAlive: nothing to say (the final answer goes with CloseStream)
            elif mt is CLOSE:
                t.send_close(f.get_close_code())
                t.disconnect()
            elif mt is PING:
                t.send_pong(f.get_payload_as_bytes())

    def control(loop):
        for line in sys.stdin:                 # the orchestrator asks for counters; EOF = stop
            if line.strip() == "stats":
                done = threading.Event()
                snap = {}
                loop.call_soon_threadsafe(lambda: (snap.update(stats), done.set()))
                done.wait(5)
                print(json.dumps(snap), flush=True)
        loop.call_soon_threadsafe(loop.stop)

    async def main():
        gc.disable()
        server = await ws_create_server(lambda req: Up() if req.path.startswith(b"/v2/listen") else None,
                                        "127.0.0.1", port, backlog=4096, max_frame_size=2 ** 20,
                                        websocket_handshake_timeout=30)
        print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
        loop = asyncio.get_running_loop()
        threading.Thread(target=control, args=(loop,), daemon=True).start()
        await server.serve_forever()

    try:
        uvloop.run(main())
    except RuntimeError:
        pass  # loop stopped by the control thread


# =====================================================================================================
# Load generator (picows clients)
# =====================================================================================================

RE_REPLY = re.compile(rb"t(\d+) s(\d+) c(\d+)")
RE_END = re.compile(rb"e(\d+) g(\d+) r(\d+)")


def run_loadgen(url: str, k: int, warmup: float, measure: float, every: int, timeout: float) -> None:
    import asyncio
    import gc

    import uvloop
    from picows import WSListener, WSMsgType, ws_connect

    BIN, TEXT, CLOSE, PING = WSMsgType.BINARY, WSMsgType.TEXT, WSMsgType.CLOSE, WSMsgType.PING
    mono = time.monotonic_ns
    pack_into = HDR.pack_into
    out = lambda **kw: print(json.dumps(kw), flush=True)  # noqa: E731
    rtts: list[int] = []
    st = {"ready": 0, "closed": 0, "ended": 0, "anomalies": 0, "reply_reorders": 0, "errors": 0, "win_replies": 0}
    NEVER = 1 << 62

    class Stream(WSListener):
        def __init__(self):
            super().__init__()
            self.t = None
            self.seq = 0
            self.last_s = -1
            self.w0 = self.w1 = NEVER
            self.ready = False
            self.end = None
            self.done = False
            self.buf = bytearray(FRAME_BYTES)
            self.buf[16:20] = MAGIC

        def send_frame(self, now_ns):
            pack_into(self.buf, 0, self.seq, now_ns)
            self.seq += 1
            self.t.send(BIN, self.buf)

        def on_ws_connected(self, t):
            self.t = t

        def on_ws_frame(self, t, f):
            mt = f.msg_type
            if mt is TEXT:
                p = f.get_payload_as_bytes()
                m = RE_REPLY.search(p)
                if m is not None:
                    now = mono()
                    s = int(m[2])
                    if int(m[3]) != s + 1:
                        st["anomalies"] += 1
                    if s == self.last_s and b'"final":true' in p:
                        return  # a one-reply turn: its final repeats the interim's text (and seq)
                    if s <= self.last_s:
                        st["reply_reorders"] += 1
                    self.last_s = s
                    if self.w0 <= s < self.w1:
                        rtts.append(now - int(m[1]))
                        st["win_replies"] += 1
                    return
                if not self.ready and (b'"type":"ready"' in p or b'"type":"Connected"' in p):
                    self.ready = True
                    st["ready"] += 1
                    return
                m = RE_END.search(p)
                if m is not None and self.end is None:
                    self.end = (int(m[1]), int(m[2]), int(m[3]))
                    st["ended"] += 1
                elif b'"type":"error"' in p:
                    st["errors"] += 1
                    if st["errors"] <= 3:
                        out(ev="relay_error", msg=p[:300].decode("utf-8", "replace"))
            elif mt is CLOSE:
                t.send_close(f.get_close_code())
                t.disconnect()
            elif mt is PING:
                t.send_pong(f.get_payload_as_bytes())

        def on_ws_disconnected(self, t):
            if not self.done:
                self.done = True
                st["closed"] += 1

    async def wait_until(cond, limit):
        end = time.monotonic() + limit
        while not cond() and time.monotonic() < end:
            await asyncio.sleep(0.05)
        return cond()

    async def main():
        gc.disable()
        loop = asyncio.get_running_loop()
        go = asyncio.Event()
        threading.Thread(target=lambda: (sys.stdin.readline(), loop.call_soon_threadsafe(go.set)), daemon=True).start()
        streams: list[Stream] = []
        sem = asyncio.Semaphore(64)
        failed = 0

        async def connect_one():
            nonlocal failed
            async with sem:
                try:
                    _, s = await asyncio.wait_for(ws_connect(Stream, url, websocket_handshake_timeout=30,
                                                             enable_auto_ping=False, max_frame_size=2 ** 20), 30)
                    streams.append(s)
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    failed += 1
                    if failed <= 3:
                        out(ev="connect_error", error=repr(exc)[:200])

        t0 = time.monotonic()
        await asyncio.gather(*(connect_one() for _ in range(k)))
        await wait_until(lambda: st["ready"] >= len(streams), 30 + k / 50)
        out(ev="connected", streams=len(streams), ready=st["ready"], failed=failed,
            connect_s=round(time.monotonic() - t0, 2))
        try:
            await asyncio.wait_for(go.wait(), timeout)
        except asyncio.TimeoutError:
            return
        live = [s for s in streams if s.ready]

        # ---- real-time sender: 2 ms ticks, streams spread over the 40 phases of an 80 ms frame ----
        tick = 0.002
        phases = int(FRAME_MS / 1000 / tick)
        groups = [live[i::phases] for i in range(phases)]
        start = loop.time() + 0.1
        warm_end, meas_end = start + warmup, start + warmup + measure
        stop_at = meas_end + 0.3
        lags: list[float] = []
        win = {"state": 0, "f0": 0, "f1": 0, "sent": 0}
        finished = loop.create_future()

        def on_tick(n):
            sched = start + n * tick
            now = loop.time()
            if now >= stop_at:
                finished.set_result(None)
                return
            state = win["state"]
            if state == 0 and now >= warm_end:
                for s in live:
                    s.w0 = s.seq
                win["f0"], win["state"], state = win["sent"], 1, 1
                out(ev="measure_start")
            elif state == 1 and now >= meas_end:
                for s in live:
                    s.w1 = s.seq
                win["f1"], win["state"], state = win["sent"], 2, 2
                out(ev="measure_end")
            if state == 1:
                lags.append(now - sched)
            ns = mono()
            group = groups[n % phases]
            for s in group:
                if not s.done:
                    s.send_frame(ns)
            win["sent"] += len(group)
            loop.call_at(start + (n + 1) * tick, on_tick, n + 1)

        loop.call_at(start, on_tick, 0)
        await finished
        # each stream's answer phase is the upstream's choice: a window of n frames holds n // every or one more
        expected = sum(max(0, (s.w1 - s.w0) // every) for s in live)
        await wait_until(lambda: st["win_replies"] >= expected, 5)
        # ---- close: CloseStream, wait for each stream's final count ----
        for s in live:
            if not s.done:
                s.t.send(TEXT, b'{"type":"CloseStream"}')
        await wait_until(lambda: all(s.end is not None or s.done for s in live), 10 + k / 100)
        await wait_until(lambda: all(s.done for s in live), 3)
        for s in streams:
            if not s.done:
                s.t.disconnect()
        no_final = sum(1 for s in live if s.end is None)
        lost = sum(max(0, s.seq - s.end[0]) for s in live if s.end is not None)
        dup = sum(max(0, s.end[0] - s.seq) for s in live if s.end is not None)
        gaps = sum(s.end[1] for s in live if s.end is not None)
        reorders = sum(s.end[2] for s in live if s.end is not None)
        lags.sort()
        out(ev="result", streams=len(live), failed=failed + len(streams) - len(live),
            frames_window=win["f1"] - win["f0"], frames_total=win["sent"], measure_s=measure,
            replies_expected=expected, replies_window=st["win_replies"], rtt_ns=sorted(rtts),
            anomalies=st["anomalies"], reply_reorders=st["reply_reorders"], no_final=no_final, lost=lost, dup=dup,
            gaps=gaps, reorders=reorders, relay_errors=st["errors"],
            lag_p99_ms=round(lags[int(len(lags) * 0.99)] * 1000, 2) if lags else None,
            lag_max_ms=round(lags[-1] * 1000, 2) if lags else None)

    uvloop.run(main())


# =====================================================================================================
# Orchestrator
# =====================================================================================================

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, limit: float, proc: subprocess.Popen) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port} after {limit} s")


class Lines:
    """A child's stdout as JSON lines, read with a time limit."""

    def __init__(self, proc: subprocess.Popen):
        self.q: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True).start()

    def _pump(self, stream):
        for line in stream:
            self.q.put(line)
        self.q.put(None)

    def get(self, limit: float, want: str | None = None) -> dict:
        end = time.monotonic() + limit
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {want or 'line'} within {limit} s")
            try:
                line = self.q.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise EOFError(f"child ended before {want or 'a line'}")
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if want is None or msg.get("ev") == want or (want == "port" and "port" in msg):
                return msg
            if msg.get("ev") in ("connect_error", "relay_error"):
                print(f"    note: {msg}", flush=True)


def taskset(cores: str) -> list[str]:
    return ["taskset", "-c", cores] if shutil.which("taskset") and os.cpu_count() and os.cpu_count() > 1 else []


def raise_nofile() -> None:
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def ensure_nginx() -> str | None:
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if path:
        return path
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print("nginx is missing and cannot be installed here (needs root + apt-get): skipping nginx", flush=True)
        return None
    print("installing nginx with apt-get ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL, timeout=300)
    for pkg in ("nginx-light", "nginx"):
        if subprocess.run(["apt-get", "install", "-y", "-q", pkg], env=env, stdout=subprocess.DEVNULL,
                          timeout=600).returncode == 0:
            break
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


NGINX_CONF = """\
{user}worker_processes 1;
worker_cpu_affinity 01;
worker_rlimit_nofile 20000;
daemon off;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 10000; }}
http {{
  access_log off;
  client_body_temp_path {d}/t-body; proxy_temp_path {d}/t-proxy; fastcgi_temp_path {d}/t-fcgi;
  uwsgi_temp_path {d}/t-uwsgi; scgi_temp_path {d}/t-scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://127.0.0.1:{up};
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $host;
      proxy_buffering off;
      tcp_nodelay on;
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
    }}
  }}
}}
"""


def start_redis(tmp: Path) -> tuple[subprocess.Popen, int]:
    """A throw-away redis-server on a free loopback port (relay x2 keeps its sessions there)."""
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(exe):
        raise RuntimeError("relay2 needs redis-server (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(taskset("1") + [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                            "--appendonly", "no", "--dir", str(tmp)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, 10, proc)
    return proc, port


class Target:
    """The system under test on core 0 (or nothing, for direct)."""

    def __init__(self, mode: str, args, tmp: Path, up_port: int):
        self.mode, self.proc, self.port, self.log, self.redis = mode, None, None, None, None
        if mode == "direct":
            self.url = f"ws://127.0.0.1:{up_port}/v2/listen?model=flux-general-en&encoding=linear16&sample_rate=16000"
            return
        self.port = free_port()
        self.log = open(tmp / f"{mode}-{self.port}.log", "w")
        if mode == "nginx":
            conf = tmp / "nginx.conf"
            user = "user root root;\n" if os.geteuid() == 0 else ""
            conf.write_text(NGINX_CONF.format(user=user, d=tmp, port=self.port, up=up_port))
            cmd = taskset("0") + [args.nginx, "-c", str(conf), "-p", str(tmp), "-e", str(tmp / "nginx-error.log")]
            self.url = f"ws://127.0.0.1:{self.port}/v2/listen?model=flux-general-en&encoding=linear16&sample_rate=16000"
            env = os.environ
        else:
            env = dict(os.environ, STT_BACKEND="deepgram", DEEPGRAM_API_KEY="bench-key",
                       DEEPGRAM_URL=f"ws://127.0.0.1:{up_port}/v2/listen", SECRET_KEY="bench-secret",
                       DATA_DIR=str(tmp / f"data-{self.port}"), HOST="127.0.0.1", PORT=str(self.port))
            env.pop("ACCESS_TOKEN", None)
            env.pop("ALLOWED_ORIGINS", None)
            if mode == "relay":
                cmd = taskset("0") + [args.python, "-m", "webapp", "--host", "127.0.0.1", "--port", str(self.port)]
            else:  # relay x2: `caption-relay --workers 2`, which shares sessions and live captions through Redis
                self.redis = start_redis(tmp)
                env["REDIS_URL"] = f"redis://127.0.0.1:{self.redis[1]}/0"
                cmd = taskset("0,1") + [args.python, "-m", "webapp", "--workers", "2", "--host", "127.0.0.1",
                                        "--port", str(self.port)]
            self.url = f"ws://127.0.0.1:{self.port}/ws/listen?sample_rate=16000&encoding=linear16"
        self.proc = subprocess.Popen(cmd, cwd=args.repo, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=raise_nofile)
        wait_port(self.port, 30, self.proc)
        time.sleep(1.0 if mode == "relay2" else 0.3)   # let workers finish booting

    def procs(self):
        import psutil
        if self.proc is None:
            return []
        try:
            p = psutil.Process(self.proc.pid)
            extra = [psutil.Process(self.redis[0].pid)] if self.redis is not None else []  # it works for the relay
            return [p] + p.children(recursive=True) + extra
        except psutil.NoSuchProcess:
            return []

    def cpu(self) -> float:
        total = 0.0
        for p in self.procs():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except Exception:  # noqa: BLE001 - a process that just ended
                pass
        return total

    def cpu_by_proc(self) -> list[float]:
        out = []
        for p in self.procs():
            try:
                t = p.cpu_times()
                out.append(t.user + t.system)
            except Exception:  # noqa: BLE001
                out.append(0.0)
        return out

    def rss(self) -> int:
        total = 0
        for p in self.procs():
            try:
                total += p.memory_info().rss
            except Exception:  # noqa: BLE001
                pass
        return total

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.log:
            self.log.close()
        if self.redis is not None:
            self.redis[0].terminate()
            self.redis[0].wait(10)


def busy(t) -> float:
    return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) + getattr(t, "steal", 0)


def pct(sorted_vals, q):
    if not sorted_vals:
        return float("nan")
    return sorted_vals[min(len(sorted_vals) - 1, int(len(sorted_vals) * q))]


def run_point(mode: str, k: int, args, tmp: Path, up, up_port: int) -> dict:
    import psutil
    target = Target(mode, args, tmp, up_port)
    lg = None
    try:
        rss0 = target.rss()
        cmd = taskset("1") + [args.python, __file__, "_loadgen", "--url", target.url, "--k", str(k),
                              "--warmup", str(args.warmup), "--measure", str(args.measure),
                              "--every", str(args.every), "--timeout", str(args.point_timeout)]
        lg = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, preexec_fn=raise_nofile)
        lines = Lines(lg)
        conn = lines.get(60 + k / 20, "connected")
        time.sleep(1.0)
        rss_idle = target.rss()
        up.stdin.write("stats\n")
        up.stdin.flush()
        up_before = json.loads(up.stdout.readline())
        lg.stdin.write("go\n")
        lg.stdin.flush()
        lgp, upp = psutil.Process(lg.pid), psutil.Process(up.pid)
        lines.get(args.warmup + 10, "measure_start")
        c0, cw0, w0 = target.cpu(), target.cpu_by_proc(), time.monotonic()
        m0 = psutil.cpu_times()
        side0 = sum(sum(p.cpu_times()[:2]) for p in (lgp, upp))
        lines.get(args.measure + 10, "measure_end")
        c1, cw1, w1 = target.cpu(), target.cpu_by_proc(), time.monotonic()
        m1 = psutil.cpu_times()
        side1 = sum(sum(p.cpu_times()[:2]) for p in (lgp, upp))
        rss_busy = target.rss()
        res = lines.get(60 + k / 20, "result")
        lg.wait(30)
        up.stdin.write("stats\n")
        up.stdin.flush()
        up_after = json.loads(up.stdout.readline())
    finally:
        if lg is not None and lg.poll() is None:
            lg.kill()
            lg.wait(5)
        target.stop()
    rtt = res.pop("rtt_ns")
    wall = w1 - w0
    upd = {key: up_after[key] - up_before[key] for key in ("frames", "gaps", "reorders", "silence")}
    row = dict(mode=mode, k=k, streams=res["streams"], connect_failed=conn["failed"] + res["failed"],
               connect_s=conn["connect_s"], frames_s=res["frames_window"] / args.measure,
               p50=pct(rtt, 0.5) / 1e6, p99=pct(rtt, 0.99) / 1e6, p999=pct(rtt, 0.999) / 1e6,
               max=(rtt[-1] / 1e6 if rtt else float("nan")),
               replies=res["replies_window"], replies_expected=res["replies_expected"],
               lost=res["lost"] + res["gaps"] + res["anomalies"] + upd["gaps"], dup=res["dup"],
               reordered=res["reorders"] + res["reply_reorders"] + upd["reorders"],
               no_final=res["no_final"], frames_sent=res["frames_total"], frames_at_upstream=upd["frames"],
               relay_errors=res["relay_errors"], lag_p99_ms=res["lag_p99_ms"], lag_max_ms=res["lag_max_ms"],
               core1_pct=100 * (side1 - side0) / wall,
               # machine busy time minus ours: other tenants of this VM (rough; the two sources disagree a little)
               other_pct=100 * (busy(m1) - busy(m0) - (c1 - c0) - (side1 - side0)) / wall)
    if mode != "direct":
        row.update(cpu_pct=100 * (c1 - c0) / wall, us_per_frame=1e6 * (c1 - c0) / max(1, res["frames_window"]),
                   kb_idle=(rss_idle - rss0) / k / 1024, kb_busy=(rss_busy - rss0) / k / 1024, rss0_mb=rss0 / 2 ** 20,
                   per_proc_cpu_pct=[round(100 * (b - a) / wall, 1) for a, b in zip(cw0, cw1)])
    healthy = (row["lost"] == 0 and row["reordered"] == 0 and row["dup"] == 0 and row["no_final"] == 0
               and row["connect_failed"] == 0 and row["frames_sent"] == row["frames_at_upstream"])
    row["loss_ok"] = healthy
    row["harness_ok"] = (row["lag_p99_ms"] or 0) <= 20
    row["keeps_up"] = (healthy and row["replies"] >= 0.98 * row["replies_expected"] and row["p99"] <= args.behind_ms)
    return row


def fmt(v, nd=1):
    if v is None or v != v:
        return "-"
    return f"{v:.{nd}f}"


def print_table(rows: list[dict], file=sys.stdout) -> None:
    direct = {r["k"]: r for r in rows if r["mode"] == "direct"}
    nginx = {r["k"]: r for r in rows if r["mode"] == "nginx"}
    hdr = ("| mode | K | frames/s | p50 ms | p99 ms | +p50 ms | +p99 ms | CPU % | µs/frame | CPU ×nginx | KB/stream idle "
           "| KB/stream busy | lost / reordered | replies | loadgen lag p99 ms | core 1 % | other % | keeps up |")
    print(hdr, file=file)
    print("|" + "|".join(["---"] * (hdr.count("|") - 1)) + "|", file=file)
    for r in rows:
        d = direct.get(r["k"])
        n = nginx.get(r["k"])
        add50 = r["p50"] - d["p50"] if d and r["mode"] != "direct" else None
        add99 = r["p99"] - d["p99"] if d and r["mode"] != "direct" else None
        ratio = (r["us_per_frame"] / n["us_per_frame"]) if n and r.get("us_per_frame") and r["mode"] != "nginx" else None
        mode = r["mode"] if r["mode"] != "relay2" else "relay ×2 workers"
        cpu = r.get("cpu_pct")
        cpu_s = fmt(cpu, 0) if r["mode"] != "relay2" else f"{fmt(cpu, 0)} ({' + '.join(fmt(x, 0) for x in r['per_proc_cpu_pct'] if x >= 1)})"
        verdict = "yes" if r["keeps_up"] else "NO"
        if not r["harness_ok"]:
            verdict += " (harness lag)"
        print(f"| {mode} | {r['k']} | {r['frames_s']:.0f} | {fmt(r['p50'], 2)} | {fmt(r['p99'], 2)} | {fmt(add50, 2)} | "
              f"{fmt(add99, 2)} | {cpu_s if cpu is not None else '-'} | {fmt(r.get('us_per_frame'))} | "
              f"{fmt(ratio, 2) if ratio else '-'} | {fmt(r.get('kb_idle'), 0)} | {fmt(r.get('kb_busy'), 0)} | "
              f"{r['lost']} / {r['reordered']} | {r['replies']:.0f}/{r['replies_expected']:.0f} | {fmt(r['lag_p99_ms'], 1)} | "
              f"{fmt(r['core1_pct'], 0)} | {fmt(r['other_pct'], 0)} | {verdict} |", file=file)


def orchestrate(args) -> int:
    try:
        import picows  # noqa: F401
        import psutil  # noqa: F401
    except ImportError as exc:
        print(f"missing benchmark tool ({exc.name}): {args.python} -m pip install picows psutil", file=sys.stderr)
        return 2
    if not (Path(args.repo) / "webapp").is_dir():
        print(f"--repo {args.repo} has no webapp/", file=sys.stderr)
        return 2
    modes = [m for m in args.modes.split(",") if m]
    if "nginx" in modes:
        args.nginx = ensure_nginx()
        if not args.nginx:
            modes.remove("nginx")
    tmp = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    raise_nofile()
    up = subprocess.Popen(taskset("1") + [args.python, __file__, "_upstream", "--every", str(args.every),
                                          "--turn-every", str(args.turn_every)]
                          + (["--aligned"] if args.aligned else []),
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, preexec_fn=raise_nofile)
    rows: list[dict] = []     # one per (mode, K): the medians of its rounds
    rounds: list[dict] = []   # every measurement
    started = time.monotonic()
    try:
        up_port = json.loads(up.stdout.readline())["port"]
        print(f"upstream on 127.0.0.1:{up_port}; relay from {args.repo}; modes {modes}; K {args.k}; "
              f"warm-up {args.warmup} s, measure {args.measure} s; temp {tmp}", flush=True)
        active = list(modes)
        for k in args.k:
            if not [m for m in active if m != "direct"]:
                break
            point_rows = measure_k(k, active, args, tmp, up, up_port, started)
            for mode in modes:
                got = point_rows.get(mode)
                if not got:
                    continue
                row = summarize(got)
                rows.append(row)
                rounds.extend(got)
                if not row["keeps_up"] and mode in active:
                    if mode == "direct":
                        print(f"  direct itself falls behind at K={k}: the harness is the limit; stopping", flush=True)
                        active = []
                        break
                    active.remove(mode)
    except StopIteration:
        pass
    finally:
        up.stdin.close()
        try:
            up.wait(5)
        except subprocess.TimeoutExpired:
            up.kill()
    if not rows:
        return 1
    print()
    print_table(rows)
    if args.repeat > 1:
        print_spread(rounds)
    d500 = [r for r in rows if r["k"] == 500]
    dd = {r["mode"]: r for r in d500}
    if "direct" in dd and "relay" in dd:
        a, b = dd["direct"], dd["relay"]
        print(f"\nissue #2: 500 real-time 80 ms streams: relay p50 {b['p50']:.2f} ms / p99 {b['p99']:.2f} ms vs direct "
              f"p50 {a['p50']:.2f} ms / p99 {a['p99']:.2f} ms -> added median {b['p50'] - a['p50']:.2f} ms, "
              f"added p99 {b['p99'] - a['p99']:.2f} ms")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"points": rows, "rounds": rounds}, indent=1))
        print(f"rows written to {args.json}")
    print(f"logs in {tmp}; total {time.monotonic() - started:.0f} s")
    return 0


def measure_k(k: int, active: list[str], args, tmp: Path, up, up_port: int, started: float) -> dict[str, list[dict]]:
    """Every mode at one K, `--repeat` times in turn (direct, relay, nginx, direct, relay, ...), so that each round's
    modes are measured back to back under the same conditions."""
    out: dict[str, list[dict]] = {}
    for rnd in range(args.repeat):
        for mode in list(active):
            if out.get(mode) is None and rnd > 0:
                continue  # it failed in an earlier round
            if time.monotonic() - started > args.budget:
                print(f"time budget of {args.budget} s used up: stopping", flush=True)
                raise StopIteration
            t = time.monotonic()
            row = None
            for attempt in range(1 + args.retries):
                try:
                    got = run_point(mode, k, args, tmp, up, up_port)
                except (TimeoutError, EOFError, RuntimeError) as exc:
                    print(f"  {mode:7s} K={k}: FAILED ({exc})", flush=True)
                    continue
                got["attempts"] = attempt + 1
                if row is None or got["other_pct"] < row["other_pct"]:
                    row = got
                if got["other_pct"] <= args.max_other and got["harness_ok"]:
                    break
                print(f"  {mode:7s} K={k}: other tenants used {got['other_pct']:.0f} % of a core, loadgen lag p99 "
                      f"{got['lag_p99_ms']} ms: measuring again", flush=True)
            if row is None:
                print(f"  {mode:7s} K={k}: not run at larger K", flush=True)
                out[mode] = None
                continue
            row["round"] = rnd + 1
            out.setdefault(mode, []).append(row)
            print(f"  {mode:7s} K={k:5d} #{rnd + 1}: p50 {row['p50']:.2f} ms p99 {row['p99']:.2f} ms, "
                  f"cpu {fmt(row.get('cpu_pct'), 0)} %, {fmt(row.get('us_per_frame'))} µs/frame, "
                  f"idle {fmt(row.get('kb_idle'), 0)} KB/stream, lost {row['lost']} reord {row['reordered']}, "
                  f"replies {row['replies']}/{row['replies_expected']}, lag p99 {row['lag_p99_ms']} ms, "
                  f"core1 {row['core1_pct']:.0f} %, other {row['other_pct']:.0f} %, keeps up {row['keeps_up']} ({time.monotonic() - t:.0f} s)",
                  flush=True)
    return {mode: rows for mode, rows in out.items() if rows}


# Fields that are summed over a point's rounds (anything lost counts); the other numbers are medians.
SUMMED = ("lost", "reordered", "dup", "no_final", "connect_failed", "relay_errors")


def summarize(got: list[dict]) -> dict:
    """One (mode, K) point from its rounds: medians, sums of what was lost, and 'keeps up' when most rounds did."""
    if len(got) == 1:
        return dict(got[0], repeats=1)
    row = dict(got[0], repeats=len(got))
    for key, value in got[0].items():
        if key in SUMMED:
            row[key] = sum(r[key] for r in got)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key != "k":
            row[key] = statistics.median(r[key] for r in got)
    for key in ("keeps_up", "harness_ok", "loss_ok"):
        row[key] = sum(1 for r in got if r[key]) * 2 > len(got)
    row["loss_ok"] = row["loss_ok"] and all(r["loss_ok"] for r in got)
    row["keeps_up"] = row["keeps_up"] and row["loss_ok"]
    return row


def print_spread(rounds: list[dict], file=sys.stdout) -> None:
    """Per K: relay/nginx CPU ratio of each round (measured back to back), and the spread of p99."""
    print("\nround by round (each round measures the modes back to back):", file=file)
    for k in sorted({r["k"] for r in rounds}):
        at = [r for r in rounds if r["k"] == k]
        by = {(r["mode"], r["round"]): r for r in at}
        ratios = [by[("relay", n)]["us_per_frame"] / by[("nginx", n)]["us_per_frame"]
                  for n in sorted({r["round"] for r in at}) if ("relay", n) in by and ("nginx", n) in by]
        parts = []
        if ratios:
            parts.append(f"relay/nginx CPU per frame {', '.join(f'{x:.2f}' for x in ratios)} "
                         f"(median {statistics.median(ratios):.2f})")
        for mode in ("direct", "relay", "nginx", "relay2"):
            p99 = [r["p99"] for r in at if r["mode"] == mode]
            if p99:
                parts.append(f"{mode} p99 {min(p99):.1f}–{max(p99):.1f} ms")
        print(f"  K={k}: " + "; ".join(parts), file=file)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_upstream":
        p = argparse.ArgumentParser()
        p.add_argument("--port", type=int, default=0)
        p.add_argument("--every", type=int, default=3)
        p.add_argument("--turn-every", type=int, default=16)
        p.add_argument("--aligned", action="store_true")
        a = p.parse_args(argv[1:])
        run_upstream(a.port, a.every, a.turn_every, a.aligned)
        return 0
    if argv and argv[0] == "_loadgen":
        p = argparse.ArgumentParser()
        p.add_argument("--url", required=True)
        p.add_argument("--k", type=int, required=True)
        p.add_argument("--warmup", type=float, default=3)
        p.add_argument("--measure", type=float, default=8)
        p.add_argument("--every", type=int, default=3)
        p.add_argument("--timeout", type=float, default=120)
        a = p.parse_args(argv[1:])
        run_loadgen(a.url, a.k, a.warmup, a.measure, a.every, a.timeout)
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: K=100 only, 1 s warm-up, 3 s window")
    p.add_argument("--k", type=lambda s: [int(x) for x in s.split(",")], default=[100, 500, 1000, 2000],
                   help="comma-separated stream counts (default 100,500,1000,2000)")
    p.add_argument("--modes", default="direct,relay,nginx,relay2",
                   help="any of direct,relay,nginx,relay2 (relay2 = caption-relay --workers 2 with Redis, cores 0+1)")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--measure", type=float, default=8.0)
    p.add_argument("--every", type=int, default=3, help="upstream answers every N-th frame (3 = every 240 ms)")
    p.add_argument("--turn-every", type=int, default=16,
                   help="every N-th reply is an EndOfTurn (16 x 240 ms = turns of 3.84 s) instead of an Update")
    p.add_argument("--aligned", action="store_true",
                   help="all streams in step: every stream's answers (and turn ends) come within the same 80 ms, "
                        "a third of the time (worst case; by default each stream gets its own random phase)")
    p.add_argument("--retries", type=int, default=2,
                   help="measure a point again (keeping the quietest attempt) when other processes on the machine "
                        "used more than --max-other %% of a core or the load generator lagged")
    p.add_argument("--max-other", type=float, default=25.0)
    p.add_argument("--repeat", type=int, default=1,
                   help="measure every point N times, the modes in turn each time; the table gives medians")
    p.add_argument("--behind-ms", type=float, default=100.0, help="p99 round trip above this = falls behind")
    p.add_argument("--repo", default=str(REPO), help="the caption-relay checkout to run (default: this one)")
    p.add_argument("--python", default=sys.executable, help="interpreter with the relay's dependencies")
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    p.add_argument("--budget", type=float, default=1500, help="stop starting new points after this many seconds")
    a = p.parse_args(argv)
    if a.quick:
        a.k, a.warmup, a.measure = [100], 1.0, 3.0
    a.point_timeout = 120.0
    a.nginx = None
    return orchestrate(a)


if __name__ == "__main__":
    sys.exit(main())
