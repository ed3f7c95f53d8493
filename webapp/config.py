"""Settings, read from the environment once and validated.

Every problem is reported at start-up as a ConfigError whose message names the variable and says
what to do, so a bad deployment fails loudly instead of at the first capture.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import urlsplit

BACKENDS = ("local", "aigateway", "deepgram")
DEFAULT_MODELS = {"aigateway": "deepgram/flux", "deepgram": "flux-general-en", "local": "moonshine-tiny-en"}


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
    access_token: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)
    host: str = "127.0.0.1"
    port: int = 8000
    local_max_streams: int = 0  # 0 = derived from the core count
    upstream_connect_timeout: float = 10.0
    log_level: str = "info"
    data_dir: str = "./data"

    @property
    def api_key(self) -> str:
        return {"aigateway": self.aigateway_api_key, "deepgram": self.deepgram_api_key}.get(self.backend, "")

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never reach a log line or a browser."""
        return tuple(s for s in (self.aigateway_api_key, self.deepgram_api_key, self.access_token, self.secret_key) if s)


def _origin(value: str, var: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/") or parts.query:
        raise ConfigError(f"{var}: {value!r} is not an origin; use the form https://example.org (scheme and host, optional port, no path)")
    return f"{parts.scheme}://{parts.netloc.lower()}"


def _ws_url(value: str, var: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise ConfigError(f"{var}: {value!r} must be a ws:// or wss:// URL")
    if parts.query:
        raise ConfigError(f"{var}: put no query string in the URL; the relay adds the parameters itself")
    return value


def _int(env: Mapping[str, str], var: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(var, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{var}: {raw!r} is not a whole number") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{var}: {value} is out of range ({lo}..{hi})")
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
        raise ConfigError("STT_BACKEND=aigateway needs AIGATEWAY_API_KEY (a key starting sk-aig-); or unset STT_BACKEND to use the embedded recognizer")
    if backend == "deepgram" and not dg_key:
        raise ConfigError("STT_BACKEND=deepgram needs DEEPGRAM_API_KEY; or unset STT_BACKEND to use the embedded recognizer")

    origins = tuple(_origin(o, "ALLOWED_ORIGINS") for o in env.get("ALLOWED_ORIGINS", "").replace(",", " ").split() if o)
    log_level = env.get("LOG_LEVEL", "info").strip().lower()
    if log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"LOG_LEVEL: {log_level!r} is not one of debug, info, warning, error")

    values = dict(
        backend=backend,
        aigateway_api_key=aig_key,
        aigateway_url=_ws_url(env.get("AIGATEWAY_REALTIME_URL", "").strip() or Settings.aigateway_url, "AIGATEWAY_REALTIME_URL"),
        deepgram_api_key=dg_key,
        deepgram_url=_ws_url(env.get("DEEPGRAM_URL", "").strip() or Settings.deepgram_url, "DEEPGRAM_URL"),
        model=env.get("STT_MODEL", "").strip() or DEFAULT_MODELS[backend],
        allowed_origins=origins,
        access_token=env.get("ACCESS_TOKEN", "").strip(),
        secret_key=env.get("SECRET_KEY", "").strip(),
        host=env.get("HOST", "").strip() or Settings.host,
        port=_int(env, "PORT", Settings.port, 1, 65535),
        local_max_streams=_int(env, "LOCAL_MAX_STREAMS", 0, 0, 256),
        log_level=log_level,
        data_dir=env.get("DATA_DIR", "").strip() or Settings.data_dir,
    )
    values.update(overrides)
    return Settings(**values)
