"""`python -m webapp.healthcheck`: exit 0 when this machine's server answers /healthz on $PORT (the Docker
HEALTHCHECK). Plain http first; a server started with --tls is asked over https, its certificate unchecked (it is
the server's own, on loopback)."""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request


def main() -> int:
    port = os.environ.get("PORT", "").strip() or "8000"
    for url, context in (
        (f"http://127.0.0.1:{port}/healthz", None),
        (f"https://127.0.0.1:{port}/healthz", ssl._create_unverified_context()),
    ):
        try:
            with urllib.request.urlopen(url, timeout=3, context=context) as answer:
                if answer.status == 200:
                    return 0
        except OSError:  # refused, timed out, or the other scheme
            continue
    print(f"healthcheck: no answer from /healthz on port {port}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
