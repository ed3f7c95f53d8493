"""BATCH UPSTREAM SIMULATOR (a test double, not AIgateway or Deepgram).

A real HTTP server on 127.0.0.1 (http.server, one thread per request) that speaks the documented pre-recorded
formats (docs/api.md, "Backends"; ../shared/docs/protocols.md §4-5):
  POST /v1/audio/transcriptions  AIgateway's OpenAI-compatible batch endpoint: multipart `file`, `model`,
                                 `response_format`, `language`, `prompt`, `timestamp_granularities[]`; Bearer key.
                                 Answers verbose_json (segments and words) for the scripted transcript.
  POST /v1/listen                Deepgram pre-recorded: the file as the raw body, `Authorization: Token <key>`,
                                 query `model`, `utterances`, `smart_format`, `keyterm`...; answers metadata,
                                 results.channels[0].alternatives[0] (transcript, words) and results.utterances.
It checks the key (401 in the provider's error shape otherwise), records every request (path, query, headers,
fields, file bytes) and can fail: `sim.fail(status, retry_after=None, echo=False)` answers that status to the next
requests (with `echo`, its message repeats the request's Authorization header, as a careless provider might).
"""
from __future__ import annotations

import email.parser
import email.policy
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

SCRIPT = [  # (start, end, words): the transcript the simulator "hears"
    (0.5, 2.1, ["Hello", "from", "the", "simulated", "service."]),
    (3.0, 4.6, ["Second", "segment", "here."]),
]
DURATION = 5.25


@dataclass
class Received:
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    fields: dict[str, list[str]] = field(default_factory=dict)  # multipart text fields
    file: bytes = b""
    filename: str | None = None


def _words():
    out = []
    for start, end, words in SCRIPT:
        step = (end - start) / len(words)
        out += [(w, round(start + i * step, 3), round(start + (i + 1) * step, 3)) for i, w in enumerate(words)]
    return out


class BatchSimulator:
    def __init__(self, aig_key: str, dg_key: str):
        self.aig_key, self.dg_key = aig_key, dg_key
        self.received: list[Received] = []
        self.failure: tuple[int, str | None] | None = None
        self.echo = False
        self.lock = threading.Lock()
        sim = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                sim._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> BatchSimulator:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        with self.lock:
            self.received.clear()
            self.failure = None
            self.echo = False

    def fail(self, status: int, retry_after: str | None = None, echo: bool = False) -> None:
        self.failure = (status, retry_after)
        self.echo = echo

    # ---- the server ----------------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        body = h.rfile.read(int(h.headers.get("content-length") or 0))
        got = Received(parts.path, parse_qsl(parts.query), {k.lower(): v for k, v in h.headers.items()})
        if parts.path == "/v1/audio/transcriptions":
            self._parse_multipart(got, h.headers.get("content-type", ""), body)
        else:
            got.file = body
        with self.lock:
            self.received.append(got)
        auth = got.headers.get("authorization", "")
        if parts.path == "/v1/audio/transcriptions":
            if auth != f"Bearer {self.aig_key}":
                return self._send(h, 401, {"error": {"message": "Invalid API key", "type": "invalid_key"}})
            if self.failure:
                status, retry = self.failure
                text = f"simulated {status}" + (f" for {auth}" if self.echo else "")
                return self._send(h, status, {"error": {"message": text, "type": "api_error"}}, retry)
            return self._send(h, 200, self._openai_answer(got))
        if parts.path == "/v1/listen":
            if auth != f"Token {self.dg_key}":
                return self._send(h, 401, {"err_code": "INVALID_AUTH", "err_msg": "Invalid credentials."})
            if self.failure:
                status, retry = self.failure
                return self._send(h, status, {"err_code": "SIMULATED", "err_msg": f"simulated {status}"}, retry)
            return self._send(h, 200, self._deepgram_answer())
        self._send(h, 404, {"error": {"message": "no such path"}})

    @staticmethod
    def _parse_multipart(got: Received, ctype: str, body: bytes) -> None:
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {ctype}\r\n\r\n".encode() + body
        )
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            filename = part.get_filename()
            payload = part.get_payload(decode=True) or b""
            if filename is not None:
                got.file, got.filename = payload, filename
            else:
                got.fields.setdefault(name, []).append(payload.decode())

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, doc: dict, retry_after: str | None = None) -> None:
        data = json.dumps(doc).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        if retry_after:
            h.send_header("Retry-After", retry_after)
        h.end_headers()
        h.wfile.write(data)

    @staticmethod
    def _openai_answer(got: Received) -> dict:
        words = _words()
        doc = {
            "task": "transcribe",
            "language": (got.fields.get("language") or ["en"])[0],
            "duration": DURATION,
            "text": " ".join(" ".join(w) for _, _, w in SCRIPT),
            "segments": [
                {"id": i, "start": s, "end": e, "text": " ".join(w)} for i, (s, e, w) in enumerate(SCRIPT)
            ],
        }
        if "word" in got.fields.get("timestamp_granularities[]", []):
            doc["words"] = [{"word": w, "start": s, "end": e} for w, s, e in words]
        return doc

    @staticmethod
    def _deepgram_answer() -> dict:
        words = [
            {"word": w.lower().strip(".,"), "punctuated_word": w, "start": s, "end": e, "confidence": 0.98}
            for w, s, e in _words()
        ]
        utterances, i = [], 0
        for start, end, ws in SCRIPT:
            utterances.append(
                {"start": start, "end": end, "transcript": " ".join(ws), "confidence": 0.97, "channel": 0,
                 "words": words[i:i + len(ws)], "id": f"utt-{i}"}
            )
            i += len(ws)
        return {
            "metadata": {"request_id": "sim-request", "duration": DURATION, "channels": 1},
            "results": {
                "channels": [{"alternatives": [{"transcript": " ".join(" ".join(w) for _, _, w in SCRIPT),
                                                "confidence": 0.97, "words": words}]}],
                "utterances": utterances,
            },
        }
