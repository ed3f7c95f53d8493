FROM python:3.11-slim-bookworm
# The embedded recognizer ships inside the moonshine-voice wheel: the image runs with no network.
WORKDIR /app
COPY pyproject.toml README.md ./
COPY webapp ./webapp
COPY static ./static
COPY templates ./templates
# A fixed non-root uid, so a host directory mounted at /data can be given to it (chown 10001).
RUN pip install --no-cache-dir -e . \
    && useradd --system --uid 10001 --create-home relay \
    && mkdir -p /data && chown relay:relay /data
USER relay
ENV HOST=0.0.0.0 PORT=8000 DATA_DIR=/data
# Sessions (SQLite), the generated SECRET_KEY (share links and embed keys are signed with it), embed-key revocations
# and a generated TLS certificate live here: mount a volume (docker run -v caption-relay-data:/data) to keep them
# when the container is recreated.
VOLUME ["/data"]
EXPOSE 8000
# On the configured $PORT (http, or https under --tls); a full server still answers /healthz.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 CMD ["python", "-m", "webapp.healthcheck"]
CMD ["caption-relay"]
