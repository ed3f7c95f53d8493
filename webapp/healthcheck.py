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
    unchecked = ssl.create_default_context()
    unchecked.check_hostname, unchecked.verify_mode = False, ssl.CERT_NONE
    probes = [(f"http://127.0.0.1:{port}/healthz", None), (f"https://127.0.0.1:{port}/healthz", unchecked)]
    data_dir = os.environ.get("DATA_DIR", "").strip() or "./data"
    if os.environ.get("TLS_CERT") or os.path.exists(os.path.join(data_dir, "tls", "cert.pem")):
        probes.reverse()  # https first: a plain request to a TLS server is logged by it as a bad request
    for url, context in probes:
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
