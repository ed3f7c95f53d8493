"""CAPTION RECEIVER SIMULATORS (test doubles, not YouTube, Zoom or anyone's webhook).

Real HTTP servers on 127.0.0.1 (one thread each) that follow the documented formats of
/work/shared/docs/outputs.md (docs/outputs.md) and check every request they get:
  YoutubeReceiver  POST /closedcaption?cid=…&seq=N, Content-Type exactly text/plain, body "YYYY-MM-DDTHH:MM:SS.mmm\\n
                   text\\n"; seq +1 per new caption, a repeated seq is a retry (same body, not shown twice);
                   timestamps never go back.
  ZoomReceiver     POST /closedcaption?id=…&seq=N&lang=xx-YY, plain UTF-8 body; GET /closedcaption/seq?id=… gives the
                   last seq it accepted; a seq that is not the next one gets 403 (Zoom's answer), a repeat is a retry.
  WebhookReceiver  POST JSON; checks X-Caption-Relay-Signature (t=…,v1=HMAC-SHA256 of "t.body") with the output's
                   secret, the timestamp's freshness, and dedupes by X-Caption-Relay-Delivery.
Each records what it accepted (`captions`: final and early posts in order), every violation of its format
(`violations`, which tests assert empty) and can fail: `fail(status, n)` answers the next n posts with
`status`; `stall()` holds every request until `release()`; `down()` closes connections without an answer.
"""
from __future__ import annotations

import calendar
import hashlib
import hmac
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}")
LANG = re.compile(r"[a-z]{2,3}-[A-Z]{2}")


@dataclass
class Post:
    seq: int | None
    text: str
    at: float  # time.time() when accepted
    final: bool | None = None  # webhook only
    extra: dict = field(default_factory=dict)


class Receiver:
    path = "/closedcaption"

    def __init__(self, name: str):
        self.name = name
        self.lock = threading.Condition()
        self.captions: list[Post] = []
        self.violations: list[str] = []
        self.requests = 0
        self.retries = 0  # repeated seqs (a post retried after its answer was lost, or after a restart)
        self.failures: list[int] = []  # statuses to answer the next posts with
        self.stalled = threading.Event()
        self.released = threading.Event()
        self.is_down = False
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                receiver._handle(self, "GET")

            def do_POST(self):
                receiver._handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name=name)
        self.thread.start()

    # ---- control --------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{self.path}"

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def fail(self, status: int, n: int = 1) -> None:
        with self.lock:
            self.failures += [status] * n

    def stall(self) -> None:
        self.released.clear()
        self.stalled.set()

    def release(self) -> None:
        self.stalled.clear()
        self.released.set()

    def down(self, is_down: bool = True) -> None:
        self.is_down = is_down

    def stop(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()

    def texts(self, final: bool | None = None) -> list[str]:
        with self.lock:
            return [c.text for c in self.captions if final is None or c.final is None or c.final == final]

    def wait_for(self, predicate, timeout: float = 15.0):
        deadline = time.monotonic() + timeout
        with self.lock:
            while not (result := predicate(self)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.name}: condition not met; got {[c.text for c in self.captions]}")
                self.lock.wait(left)
            return result

    # ---- serving --------------------------------------------------------------------------------
    def _handle(self, req: BaseHTTPRequestHandler, method: str) -> None:
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else b""
        if self.is_down:
            req.close_connection = True
            req.connection.close()  # no answer at all: a dead receiver
            return
        if self.stalled.is_set():
            self.released.wait(30)  # bounded: a stalled receiver holds the request (the client times out)
        parts = urlsplit(req.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        with self.lock:
            self.requests += 1
            if method == "POST" and self.failures:
                status, payload = self.failures.pop(0), b"injected failure"
            else:
                status, payload = self.serve(method, parts.path, query, req.headers, body)
            self.lock.notify_all()
        # One write for the whole answer: headers and body in two small writes meet Nagle and delayed ACK (40 ms).
        reason = req.responses.get(status, ("",))[0]
        head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(payload)}\r\n\r\n"
        req.wfile.write(head.encode() + payload)

    def violate(self, what: str) -> tuple[int, bytes]:
        self.violations.append(what)
        return 400, what.encode()

    def serve(self, method, path, query, headers, body) -> tuple[int, bytes]:
        raise NotImplementedError


class SeqReceiver(Receiver):
    """What YouTube and Zoom share: a seq per post, +1 per new post, the same on a retry."""

    wrong_seq_status = 400

    def __init__(self, name: str):
        super().__init__(name)
        self.last_seq: int | None = None
        self.bodies: dict[int, bytes] = {}

    def take(self, query, body: bytes, text: str, ts: float | None = None) -> tuple[int, bytes]:
        raw = query.get("seq", "")
        if not raw.isdigit():
            return self.violate(f"seq missing or not a number: {raw!r}")
        seq = int(raw)
        if seq in self.bodies:
            self.retries += 1
            if self.bodies[seq] != body:
                return self.violate(f"seq {seq} retried with another body")
            return 200, b"ok"
        if self.last_seq is not None and seq != self.last_seq + 1:
            self.violations.append(f"seq {seq} after {self.last_seq}")
            return self.wrong_seq_status, b"wrong seq"
        if ts is not None and self.captions and ts < self.captions[-1].extra["ts"]:
            self.violations.append(f"timestamp went back at seq {seq}")
        self.last_seq, self.bodies[seq] = seq, body
        self.captions.append(Post(seq, text, time.time(), extra={"ts": ts}))
        return 200, b"ok"


class YoutubeReceiver(SeqReceiver):
    def serve(self, method, path, query, headers, body):
        if method != "POST" or path != self.path:
            return 404, b"no"
        if not query.get("cid"):
            return self.violate("cid missing")
        if headers.get("Content-Type") != "text/plain":
            return self.violate(f"Content-Type {headers.get('Content-Type')!r}, want text/plain without charset")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return self.violate("body is not UTF-8")
        lines = text.split("\n")
        if len(lines) != 3 or lines[2] != "" or not TIMESTAMP.fullmatch(lines[0]):
            return self.violate(f"body is not 'timestamp\\ntext\\n': {text!r}")
        ts = calendar.timegm(time.strptime(lines[0][:19], "%Y-%m-%dT%H:%M:%S")) + int(lines[0][20:]) / 1000
        if abs(ts - time.time()) > 60:
            return self.violate(f"timestamp {lines[0]} is more than 60 s from now (UTC)")
        return self.take(query, body, lines[1], ts)


class ZoomReceiver(SeqReceiver):
    wrong_seq_status = 403  # Zoom: seq missing or wrong

    def __init__(self, name: str, last_seq: int | None = None):
        super().__init__(name)
        self.last_seq = last_seq
        self.seq_gets = 0

    def serve(self, method, path, query, headers, body):
        if not query.get("id") or not query.get("signature"):
            return 403, b"signature missing"
        if method == "GET" and path == self.path + "/seq":
            self.seq_gets += 1
            return 200, str(self.last_seq or 0).encode()
        if method != "POST" or path != self.path:
            return 404, b"no"
        if not LANG.fullmatch(query.get("lang", "")):
            return self.violate(f"lang {query.get('lang')!r}")
        if headers.get("Content-Type", "").split(";")[0] != "text/plain":
            return self.violate(f"Content-Type {headers.get('Content-Type')!r}")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return self.violate("body is not UTF-8")
        if "\n" in text or not text:
            return self.violate(f"body is not one caption: {text!r}")
        return self.take(query, body, text)


class WebhookReceiver(Receiver):
    path = "/hooks/captions"

    def __init__(self, name: str, secret: str | None = None, tolerance: float = 300.0):
        super().__init__(name)
        self.secret = secret
        self.tolerance = tolerance
        self.deliveries: set[int] = set()
        self.payloads: list[dict] = []

    def serve(self, method, path, query, headers, body):
        if method != "POST" or path != self.path:
            return 404, b"no"
        if headers.get("Content-Type") != "application/json":
            return self.violate(f"Content-Type {headers.get('Content-Type')!r}")
        if self.secret is None:
            return 401, b"no secret configured yet"
        if not verify(self.secret, headers.get("X-Caption-Relay-Signature", ""), body, self.tolerance):
            return self.violate("bad signature")
        msg = json.loads(body)
        missing = {"session", "turn", "text", "start", "end", "words", "final"} - set(msg)
        if missing:
            return self.violate(f"fields missing: {sorted(missing)}")
        delivery = int(headers.get("X-Caption-Relay-Delivery", "-1"))
        if delivery in self.deliveries:
            self.retries += 1
            return 200, b"ok (seen)"
        self.deliveries.add(delivery)
        self.payloads.append(msg)
        self.captions.append(Post(delivery, msg["text"], time.time(), final=msg["final"], extra=msg))
        return 200, b"ok"


# The verification a receiver does, as docs/outputs.md shows it (kept the same: tests/test_outputs.py checks it).
def verify(secret: str, header: str, body: bytes, tolerance: float = 300.0) -> bool:
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance:
        return False  # too old (or from the future): a replay
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts.get("v1", ""))
