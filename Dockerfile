FROM python:3.11-slim-bookworm
# The embedded recognizer ships inside the moonshine-voice wheel: the image runs with no network.
WORKDIR /app
COPY pyproject.toml README.md ./
COPY webapp ./webapp
COPY static ./static
COPY templates ./templates
RUN pip install --no-cache-dir -e . && useradd --create-home relay && mkdir -p /data && chown relay /data
USER relay
ENV HOST=0.0.0.0 PORT=8000 DATA_DIR=/data
EXPOSE 8000
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3)"
CMD ["caption-relay"]
