"""Deployment shapes with real parts: `caption-relay --tls` (its generated certificate as the clients' only CA), the
shipped nginx config (deploy/nginx.conf, run by a real unprivileged nginx in a temp prefix) in front of one app,
and the compose.yaml scale-out without Docker: two app processes sharing a real redis-server behind that nginx, the
speaker's instance SIGKILLed mid-session."""
from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from conftest import ARTIFACTS, ROOT, TEST_DG_KEY, free_port, running_app, start_app, stop_app
from test_sharing import FIRST_TURN_AUDIO, SCRIPT_FINALS, Socket
from webapp import config, tls

NGINX_TEMPLATE = ROOT / "deploy" / "nginx.conf"


def flux_env(simulator, **extra) -> dict[str, str]:
    return {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": TEST_DG_KEY, "DEEPGRAM_URL": f"{simulator.url}/v2/listen",
            **extra}


def trusting(cafile: Path) -> ssl.SSLContext:
    """A client context whose only CA is `cafile` (hostname checked, as a browser would)."""
    return ssl.create_default_context(cafile=str(cafile))


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)  # polling a file another process writes: there is no event to await
    return result


async def speaker_via(base: str, cookie: str, ctx: ssl.SSLContext, local: str = "127.0.0.1", path="/ws/listen",
                      headers: dict | None = None) -> Socket:
    origin = "https://" + base.split("://", 1)[1].split("/", 1)[0]
    return await Socket.open(f"{base}{path}", ssl=ctx, origin=origin, local_addr=(local, 0),
                             additional_headers={"Cookie": cookie, **(headers or {})})


# ---- caption-relay --tls --------------------------------------------------------------------------------------


async def test_tls_mode_serves_https_and_wss_with_its_generated_certificate(simulator, session_tmp, sim):
    """What a phone on the LAN gets: the page over HTTPS (Secure __Host- cookies), a capture over WSS with its
    captions, a viewer over WSS; the machine's own names are accepted; the certificate is kept across restarts."""
    argv = ["-m", "webapp", "--tls", "--host", "0.0.0.0", "--port", "{port}"]
    app = start_app(flux_env(simulator, REQUEST_TIMEOUT="1"), session_tmp, "tls", argv=argv, tls=True)
    cafile = session_tmp / "data-tls" / "tls" / "cert.pem"
    try:
        cert = x509.load_pem_x509_certificate(cafile.read_bytes())
        fingerprint = hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
        said = wait_until(lambda: "TLS certificate SHA-256 fingerprint" in app.log_text() and app.log_text(), 10,
                          "the ready message")
        assert f"Caption Relay is ready: open https://127.0.0.1:{app.port}" in said
        assert fingerprint.upper() == re.search(r"fingerprint: ([0-9A-F:]+)", said).group(1).replace(":", "")
        assert "Your connection is not private" in said and "Advanced > Proceed" in said
        names = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName))
        assert {"localhost", socket.gethostname().lower()} <= names

        ctx = trusting(cafile)
        base = f"https://localhost:{app.port}"
        with httpx.Client(verify=ctx, timeout=10) as client:
            page = client.get(base + "/")
            assert page.status_code == 200 and "<html" in page.text.lower()
            set_cookie = page.headers["set-cookie"]
            assert set_cookie.startswith("__Host-cr_owner=") and "Secure" in set_cookie, set_cookie
            cookie = set_cookie.split(";")[0]
            # the names a phone types for this machine pass the Host check (bound to 0.0.0.0); others do not
            for host, status in [(f"{socket.gethostname().lower()}.local:{app.port}", 200),
                                 (f"{socket.gethostname()}:{app.port}", 200), (f"10.1.2.3:{app.port}", 200),
                                 ("evil.example", 403)]:
                assert client.get(f"https://127.0.0.1:{app.port}/", headers={"Host": host}).status_code == status, host
        healthcheck = [sys.executable, "-m", "webapp.healthcheck"]  # the Docker HEALTHCHECK, on $PORT
        assert subprocess.run(healthcheck, cwd=ROOT, env={**os.environ, "PORT": str(app.port)}).returncode == 0
        assert subprocess.run(healthcheck, cwd=ROOT, env={**os.environ, "PORT": str(free_port())},
                              capture_output=True).returncode == 1
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):  # a client that does not trust it
            httpx.get(base + "/healthz", verify=ssl.create_default_context())

        # server.py's slow-request guard works above the TLS layer too: a request that never ends gets 408
        with socket.create_connection(("127.0.0.1", app.port)) as raw, ctx.wrap_socket(raw, server_hostname="localhost") as conn:
            conn.settimeout(5)
            conn.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
            assert conn.recv(100).startswith(b"HTTP/1.1 408 ")

        wss = f"wss://localhost:{app.port}"
        speaker = await speaker_via(wss, cookie, ctx)
        ready = await speaker.until(lambda s: s.ready)
        viewer = await Socket.open(f"{wss}/ws/watch/{ready['share_url'][3:]}", ssl=ctx)
        await viewer.until(lambda v: v.of("snapshot"))
        await speaker.send_audio(FIRST_TURN_AUDIO + 1.5)
        await speaker.close_stream()
        assert speaker.finals() == SCRIPT_FINALS
        await viewer.until_closed()
        assert [t for _, t in viewer.seen_finals()] == SCRIPT_FINALS and viewer.messages[-1]["type"] == "ended"
    finally:
        stop_app(app)
    again = start_app(flux_env(simulator, REQUEST_TIMEOUT="1"), session_tmp, "tls", argv=argv, tls=True)
    try:  # the browser's exception for the certificate keeps working: the same one is served
        wait_until(lambda: "fingerprint" in again.log_text(), 10, "the ready message")
        assert fingerprint.upper() in again.log_text().replace(":", "")
    finally:
        stop_app(again)


async def test_tls_with_workers_serves_one_generated_certificate(simulator, session_tmp, redis_url, sim):
    """--tls --workers 2: the certificate is made once, before the children start; each serves it, one says so."""
    argv = ["-m", "webapp", "--tls", "--workers", "2", "--host", "127.0.0.1", "--port", "{port}"]
    env = flux_env(simulator, REDIS_URL=redis_url, SECRET_KEY="workers-tls-secret-0123456789abcdef")
    with running_app(env, session_tmp, "tls-workers", argv=argv, tls=True) as app:
        ctx = trusting(session_tmp / "data-tls-workers" / "tls" / "cert.pem")
        said = wait_until(lambda: "fingerprint" in app.log_text() and app.log_text(), 10, "the ready message")
        assert said.count("Caption Relay is ready") == 1 and "Your connection is not private" in said
        with httpx.Client(verify=ctx, timeout=10) as client:  # new connections: the kernel spreads them
            assert {client.get(f"https://localhost:{app.port}/healthz").status_code for _ in range(6)} == {200}
        speaker = await speaker_via(f"wss://localhost:{app.port}", "x=1", ctx)
        await speaker.until(lambda s: s.ready)
        await speaker.send_audio(FIRST_TURN_AUDIO)
        await speaker.close_stream()
        assert speaker.finals() == SCRIPT_FINALS[:1]


@pytest.mark.parametrize("host, with_cert, says, not_says", [
    ("127.0.0.1", True, ["open https://127.0.0.1:8000", "listen on it too: --host 0.0.0.0", "fingerprint: AB:CD",
                         "Your connection is not private", "Advanced > Proceed"], ["another device"]),
    ("0.0.0.0", False, ["open http://127.0.0.1:8000", "only over HTTPS: add --tls"], ["fingerprint"]),
    ("127.0.0.1", False, ["open http://127.0.0.1:8000"], ["--tls", "fingerprint"]),
    ("192.0.2.7", True, ["open https://192.0.2.7:8000", "--host 0.0.0.0"], []),
])
def test_ready_message_says_where_to_open_the_page(monkeypatch, host, with_cert, says, not_says):
    monkeypatch.setattr(tls, "lan_addresses", lambda: ["192.168.1.23"])
    cert = tls.Certificate("/d/tls/cert.pem", "/d/tls/key.pem", "AB:CD", True, ()) if with_cert else None
    text = tls.ready_message(host, 8000, cert)
    for part in says:
        assert part in text, (part, text)
    for part in not_says:
        assert part not in text, (part, text)
    if host == "0.0.0.0":
        assert "from another device on this network (a phone): http://192.168.1.23:8000" in text


def test_generated_certificate_names_this_machine_and_is_renewed_before_it_expires(tmp_path):
    first = tls.self_signed(str(tmp_path))
    assert {"localhost", "127.0.0.1", "::1", socket.gethostname().lower(), *tls.lan_addresses()} <= set(first.names)
    assert oct(os.stat(first.key_file).st_mode & 0o777) == "0o600"
    assert tls.self_signed(str(tmp_path)).fingerprint == first.fingerprint  # kept
    given = tls.load_given(first.cert_file, first.key_file)  # as TLS_CERT (--workers' children get it so)
    assert given.self_signed and given.fingerprint == first.fingerprint
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=tls.VALID_DAYS - 10)
    assert tls.self_signed(str(tmp_path), now=later).fingerprint != first.fingerprint  # about to expire: new


@pytest.mark.parametrize("case, needle", [
    ("cert_only", "TLS_KEY: set it too"),
    ("key_only", "TLS_CERT: set it too"),
    ("missing_file", "is not a file this user can read"),
    ("not_pem", "are not a PEM certificate"),
    ("other_key", "check that the key belongs to the certificate"),
])
def test_tls_settings_are_validated(tmp_path, case, needle):
    one, two = tls.self_signed(str(tmp_path / "one")), tls.self_signed(str(tmp_path / "two"))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    env = {"cert_only": {"TLS_CERT": one.cert_file}, "key_only": {"TLS_KEY": one.key_file},
           "missing_file": {"TLS_CERT": str(tmp_path / "nope.pem"), "TLS_KEY": one.key_file},
           "not_pem": {"TLS_CERT": str(junk), "TLS_KEY": one.key_file},
           "other_key": {"TLS_CERT": one.cert_file, "TLS_KEY": two.key_file}}[case]
    with pytest.raises(config.ConfigError) as err:
        config.load(env)
    assert needle in str(err.value)
    assert config.load({"TLS_CERT": one.cert_file, "TLS_KEY": one.key_file}).tls_cert == one.cert_file


# ---- deploy/nginx.conf, run for real ----------------------------------------------------------------------------


def nginx_site(upstreams: list[int], http_port: int, https_port: int, cert: tls.Certificate) -> str:
    """deploy/nginx.conf with only its listen, upstream server and certificate lines replaced (each must be there:
    the shipped file and this test cannot drift apart)."""
    text = NGINX_TEMPLATE.read_text()
    servers = re.findall(r"^( *)server (\S+:8000)( [^;]*)?;$", text, re.M)
    assert len(servers) == 2, "deploy/nginx.conf: the upstream's two `server app1:8000 …;` lines"
    indent, _, params = servers[0]
    block = "".join(f"{indent}server 127.0.0.1:{p}{params};\n" for p in upstreams)
    text = re.sub(r"^ *server \S+:8000( [^;]*)?;\n", "", text, flags=re.M)
    text = text.replace("    keepalive 16;", block + "    keepalive 16;", 1)
    for old, new in [("listen 80;", f"listen 127.0.0.1:{http_port};"),
                     ("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;"),
                     ("/etc/nginx/tls/fullchain.pem", cert.cert_file), ("/etc/nginx/tls/privkey.pem", cert.key_file)]:
        assert text.count(old) == 1, f"deploy/nginx.conf no longer has {old!r}"
        text = text.replace(old, new)
    return text


@contextmanager
def nginx(tmp: Path, upstreams: list[int]):
    """A real nginx (unprivileged unless this runs as root) in its own prefix, with deploy/nginx.conf as its site;
    yields (https base URL, http port, access log), the access log naming the upstream of every request."""
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(exe):
        pytest.fail("nginx is not installed; ./scripts/test installs it (apt-get install nginx-light)")
    d = tmp / f"nginx-{time.monotonic_ns()}"
    d.mkdir()
    cert = tls.self_signed(str(d))
    http_port, https_port = free_port(), free_port()
    (d / "site.conf").write_text(nginx_site(upstreams, http_port, https_port, cert))
    user = "user root root;\n" if os.geteuid() == 0 else ""  # as root, workers would drop to `nobody`
    (d / "nginx.conf").write_text(f"""{user}worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
  log_format upstream '$remote_addr "$request" $status -> $upstream_addr';
  access_log {d}/access.log upstream;
  client_body_temp_path {d}/t-body; proxy_temp_path {d}/t-proxy; fastcgi_temp_path {d}/t-fcgi;
  uwsgi_temp_path {d}/t-uwsgi; scgi_temp_path {d}/t-scgi;
  include {d}/site.conf;
}}
""")
    proc = subprocess.Popen([exe, "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def listening():
            if proc.poll() is not None:
                raise AssertionError(f"nginx exited: {proc.stdout.read().decode()} {(d / 'error.log').read_text()}")
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", https_port)) == 0
        wait_until(listening, 10, "nginx to listen")
        yield f"https://localhost:{https_port}", http_port, cert, d / "access.log"
    finally:
        proc.terminate()
        proc.wait(10)


def test_nginx_template_keeps_sockets_open_an_hour_and_streams_unbuffered():
    text = NGINX_TEMPLATE.read_text()
    for directive in ("proxy_read_timeout", "proxy_send_timeout"):
        value = re.search(rf"{directive} (\d+)s;", text)
        assert value and int(value.group(1)) >= 3600, directive
    for line in ("proxy_buffering off;", "proxy_set_header Upgrade $http_upgrade;",
                 "proxy_set_header Connection $connection_upgrade;", "proxy_set_header X-Forwarded-Proto $scheme;",
                 "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;", "proxy_set_header Host $http_host;"):
        assert line in text, line


async def test_nginx_passes_captures_viewers_cookies_and_the_client_address(simulator, session_tmp, sim):
    env = flux_env(simulator, TRUSTED_PROXIES="127.0.0.1", MAX_STREAMS_PER_CLIENT="1")
    with running_app(env, session_tmp, "behind-nginx") as app, nginx(session_tmp, [app.port]) as (base, http_port,
                                                                                                 cert, _):
        ctx = trusting(Path(cert.cert_file))
        with httpx.Client(verify=ctx, timeout=10) as client:
            plain = client.get(f"http://127.0.0.1:{http_port}/sessions")
            assert plain.status_code == 301 and plain.headers["location"].startswith("https://"), plain
            page = client.get(base + "/")  # X-Forwarded-Proto: https from a trusted proxy → a Secure __Host- cookie
            assert page.status_code == 200
            assert page.headers["set-cookie"].startswith("__Host-cr_owner=") and "Secure" in page.headers["set-cookie"]
            cookie = page.headers["set-cookie"].split(";")[0]
            direct = client.get(f"{app.http}/")  # the same app over plain http, not through the proxy
            assert direct.headers["set-cookie"].startswith("cr_owner=") and "Secure" not in direct.headers["set-cookie"]

        wss = base.replace("https://", "wss://")
        speaker = await speaker_via(wss, cookie, ctx, local="127.0.0.5")
        ready = await speaker.until(lambda s: s.ready)
        viewer = await Socket.open(f"{wss}/ws/watch/{ready['share_url'][3:]}", ssl=ctx)
        await viewer.until(lambda v: v.of("snapshot"))
        # The client is the address nginx saw (127.0.0.5), not nginx's own and not what the client wrote itself:
        # its second stream is over MAX_STREAMS_PER_CLIENT; another address's is not.
        second = await speaker_via(wss, cookie, ctx, local="127.0.0.5", headers={"X-Forwarded-For": "198.51.100.9"})
        await second.until_closed()
        assert [e["code"] for e in second.of("error")] == ["too_many_streams"], second.messages
        other = await speaker_via(wss, cookie, ctx, local="127.0.0.6")
        await other.until(lambda s: s.ready)
        await other.close_stream()

        await speaker.send_audio(FIRST_TURN_AUDIO + 1.5)
        await speaker.close_stream()
        assert speaker.finals() == SCRIPT_FINALS
        await viewer.until_closed()
        assert [t for _, t in viewer.seen_finals()] == SCRIPT_FINALS and viewer.messages[-1]["type"] == "ended"
        with httpx.Client(verify=ctx, timeout=10) as client:
            text = client.get(f"{base}/s/{ready['share_url'][3:]}/transcript.txt").text
        assert text == "".join(f + "\n" for f in SCRIPT_FINALS)


# ---- the compose.yaml shape: two instances, one Redis, nginx in front --------------------------------------------


def session_instance(apps, session_id: str):
    """The app whose log says it runs `session_id` (its upstream connected)."""
    def find():
        hits = [a for a in apps if any(f'"session": "{session_id}"' in line and '"session_live"' in line
                                       for line in a.log_text().splitlines())]
        return hits[0] if hits else None
    return wait_until(find, 10, f"an instance to run {session_id}")


async def test_two_instances_behind_nginx_a_resume_lands_on_the_survivor(simulator, session_tmp, redis_url):
    """A speaker on one instance, viewers spread over both by nginx; the speaker's instance is SIGKILLed: viewers on
    the survivor keep following, those that were on the dead one reconnect, the speaker resumes through nginx on
    the survivor, and every final is seen exactly once, in order, and stored."""
    simulator.reset()
    env = flux_env(simulator, REDIS_URL=redis_url, SECRET_KEY="lb-shared-secret-0123456789abcdef0123",
                   TRUSTED_PROXIES="127.0.0.1")
    a, b = start_app(env, session_tmp, "lb-a"), start_app(env, session_tmp, "lb-b")
    try:
        with nginx(session_tmp, [a.port, b.port]) as (base, _, cert, access_log):
            ctx = trusting(Path(cert.cert_file))
            with httpx.Client(verify=ctx, timeout=10) as client:
                cookie = client.get(base + "/").headers["set-cookie"].split(";")[0]
            wss = base.replace("https://", "wss://")
            speaker = await speaker_via(wss, cookie, ctx)
            ready = await speaker.until(lambda s: s.ready)
            token = ready["share_url"][3:]
            viewers = [await Socket.open(f"{wss}/ws/watch/{token}", ssl=ctx) for _ in range(3)]  # round robin
            for v in viewers:
                await v.until(lambda v: v.of("snapshot"))
            await speaker.send_audio(FIRST_TURN_AUDIO + 0.3)
            for v in viewers:
                await v.until(lambda v: v.seen_finals())
            home = session_instance([a, b], ready["session_id"])
            survivor = b if home is a else a

            home.proc.kill()  # SIGKILL: no drain, no goodbye
            home.proc.wait(10)
            await speaker.until_closed()
            for v in viewers:  # a viewer on the dead instance has lost its socket by now, or does shortly
                try:
                    await asyncio.wait_for(asyncio.shield(v.task), 1.0)
                except asyncio.TimeoutError:
                    pass  # still following: it is on the survivor
            dropped = [v for v in viewers if v.closed]
            kept = [v for v in viewers if not v.closed]
            assert kept and dropped, "round robin put viewers on both instances"
            assert all(m["type"] != "ended" for v in dropped for m in v.messages)
            reopened = [await Socket.open(f"{wss}/ws/watch/{token}", ssl=ctx) for _ in dropped]

            resumed = await speaker_via(wss, cookie, ctx, path=f"/ws/listen?resume={ready['resume_token']}")
            again = await resumed.until(lambda s: s.ready)
            assert again["resumed"] is True and again["session_id"] == ready["session_id"], resumed.messages
            assert session_instance([survivor], ready["session_id"]) is survivor
            await resumed.send_audio(FIRST_TURN_AUDIO + 1.5)
            await resumed.close_stream()

            with httpx.Client(verify=ctx, timeout=10) as client:
                stored = [t["text"] for t in client.get(f"{base}/s/{token}/transcript.json").json()["turns"]]
            assert stored == speaker.finals() + resumed.finals(), (speaker.finals(), resumed.finals())
            assert stored[:1] == SCRIPT_FINALS[:1] and stored[-2:] == SCRIPT_FINALS
            for v in kept + reopened:
                await v.until_closed()
                assert [t for _, t in v.seen_finals()] == stored  # each final once (seen_finals checks), in order
                assert [s for s, _ in v.seen_finals()] == list(range(len(stored)))
                assert v.messages[-1]["type"] == "ended"
        ports = set(re.findall(r"/ws/watch/\S+ HTTP/1.1\" 101 -> 127\.0\.0\.1:(\d+)", access_log.read_text()))
        assert ports == {str(a.port), str(b.port)}  # the viewers were on both instances
    finally:
        stop_app(a)
        stop_app(b)


# ---- the phone, as Chromium: a LAN name that is a secure context only over HTTPS --------------------------------


def test_chromium_captions_from_a_lan_name_over_tls_and_is_refused_the_microphone_over_http(simulator, session_tmp,
                                                                                            sim):
    """A second device opens this machine by its LAN name (mapped to 127.0.0.1 in Chromium's resolver): over
    `--tls` (the self-signed warning passed, as a person clicks Proceed) the page is a secure context, Start gets
    the microphone and captions arrive; the same page over plain http is refused the microphone with advice."""
    from browser import CHROMIUM, chromium_args
    from playwright.sync_api import sync_playwright

    from test_sharing import _fake_mic_wav

    assert CHROMIUM, "Debian's chromium is missing: run ./scripts/test, which installs it"
    name = tls.machine_names()[-1]  # e.g. myhost.local: a name the Host check and the certificate both know
    wav = _fake_mic_wav(session_tmp / "phone-mic.wav", seconds=3.6)
    secure = start_app(flux_env(simulator), session_tmp, "tls-phone", tls=True,
                       argv=["-m", "webapp", "--tls", "--host", "0.0.0.0", "--port", "{port}"])
    plain = start_app(flux_env(simulator), session_tmp, "plain-phone",
                      argv=["-m", "webapp", "--host", "0.0.0.0", "--port", "{port}"])
    try:
        with sync_playwright() as p:
            args = chromium_args(wav) + [f"--host-resolver-rules=MAP {name} 127.0.0.1"]
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
            try:
                errors: list[str] = []
                ctx = browser.new_context(ignore_https_errors=True)  # "Advanced > Proceed"
                origin = f"https://{name}:{secure.port}"
                ctx.grant_permissions(["microphone"], origin=origin)
                page = ctx.new_page()
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(origin + "/")
                assert page.evaluate("window.isSecureContext") is True
                page.locator("#start").click()
                page.wait_for_function(
                    f"() => window.__captionRelay.finals.some(f => (f.text ?? f) === {json.dumps(SCRIPT_FINALS[0])})",
                    timeout=20000)
                assert SCRIPT_FINALS[0] in page.locator("#transcript").inner_text()
                page.screenshot(path=str(ARTIFACTS / "phone-tls.png"))
                page.locator("#stop").click()
                assert any(c["name"] == "__Host-cr_owner" and c["secure"] for c in ctx.cookies())

                insecure = browser.new_context().new_page()
                insecure.goto(f"http://{name}:{plain.port}/")
                assert insecure.evaluate("window.isSecureContext") is False
                insecure.locator("#start").click()
                message = insecure.locator("#messages").inner_text()
                assert "only available on a secure page" in message and "--tls" in message, message
                assert errors == []
            finally:
                browser.close()
    finally:
        stop_app(secure)
        stop_app(plain)


def test_docker_files_keep_data_run_unprivileged_and_use_the_tested_proxy_config():
    """No Docker daemon runs here: what the image and compose.yaml say is read instead (the topology itself is run
    above without Docker)."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r'^VOLUME \["/data"\]$', dockerfile, re.M) and "DATA_DIR=/data" in dockerfile
    user = re.search(r"^USER (\S+)$", dockerfile, re.M)
    assert user and user.group(1) not in ("root", "0")
    assert re.search(r'^HEALTHCHECK .*"webapp\.healthcheck"\]$', dockerfile, re.M) and "8000/healthz" not in dockerfile
    compose = (ROOT / "compose.yaml").read_text()
    assert re.search(r"^  app1: \*app$", compose, re.M) and re.search(r"^  app2: \*app$", compose, re.M)
    assert "REDIS_URL: redis://redis:6379/0" in compose and "- app-data:/data" in compose
    assert "./deploy/nginx.conf:/etc/nginx/conf.d/default.conf:ro" in compose
    assert re.findall(r"^ *server (app\d):8000", NGINX_TEMPLATE.read_text(), re.M) == ["app1", "app2"]
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"^docker run .*-v caption-relay-data:/data", readme, re.M)
