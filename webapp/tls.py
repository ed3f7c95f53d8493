"""Direct HTTPS (`caption-relay --tls`): the certificate the server presents, and what to tell the person starting it.

Browsers give a page the microphone only on localhost or over HTTPS, so a phone on the same network needs HTTPS.
With TLS_CERT/TLS_KEY the server uses that pair; without, a self-signed certificate is generated once into
DATA_DIR/tls/ (kept, so the browser's exception for it keeps working) and made again only when it no longer names
this machine (a new LAN address) or is about to expire.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALID_DAYS = 825  # the longest validity Apple's platforms accept for a TLS server certificate
RENEW_DAYS = 30  # a kept certificate this close to its end is made again


@dataclass(frozen=True)
class Certificate:
    cert_file: str
    key_file: str
    fingerprint: str  # SHA-256 of the DER certificate, AA:BB:… as browsers show it
    self_signed: bool  # generated here: the browser will warn once
    names: tuple[str, ...]  # DNS names and IP addresses it is valid for


def lan_addresses() -> list[str]:
    """This machine's own non-loopback IPv4 addresses: the one its default route uses (a UDP connect sends no
    packet) and those its host name resolves to."""
    found: list[str] = []
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed anywhere, only the route is looked up
        found.append(probe.getsockname()[0])
    except OSError:
        pass  # no route: no LAN
    finally:
        probe.close()
    try:
        found += [str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)]
    except OSError:
        pass
    out = []
    for addr in found:
        ip = ipaddress.ip_address(addr)
        if not (ip.is_loopback or ip.is_unspecified or ip.is_link_local) and addr not in out:
            out.append(addr)
    return out


def machine_names() -> list[str]:
    """The names a phone may use for this machine: its host name and the mDNS `.local` form of it."""
    name = socket.gethostname().lower().rstrip(".")
    out = ["localhost"]
    if name and name != "localhost":
        out += [name] if "." in name else [name, f"{name}.local"]
    return out


def _fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def _names_of(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return set(san.get_values_for_type(x509.DNSName)) | {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


def load_given(cert_file: str, key_file: str) -> Certificate:
    """The pair TLS_CERT, TLS_KEY names (already checked by config.py)."""
    cert = x509.load_pem_x509_certificates(Path(cert_file).read_bytes())[0]
    # its own issuer: a browser will warn (also the generated one, handed to --workers' children as TLS_CERT)
    own = cert.issuer == cert.subject
    return Certificate(cert_file, key_file, _fingerprint(cert), own, tuple(sorted(_names_of(cert))))


def self_signed(data_dir: str, now: datetime.datetime | None = None) -> Certificate:
    """DATA_DIR/tls/cert.pem and key.pem, for localhost, 127.0.0.1, ::1, this machine's names and LAN addresses;
    kept from an earlier run when it still covers them and is not about to expire."""
    now = now or datetime.datetime.now(datetime.UTC)
    folder = Path(data_dir) / "tls"
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    dns = machine_names()
    ips = ["127.0.0.1", "::1", *lan_addresses()]
    wanted = set(dns) | set(ips)
    if cert_path.exists() and key_path.exists():
        try:
            old = x509.load_pem_x509_certificate(cert_path.read_bytes())
            names = _names_of(old)
            if wanted <= names and old.not_valid_after_utc - now > datetime.timedelta(days=RENEW_DAYS):
                return Certificate(str(cert_path), str(key_path), _fingerprint(old), True, tuple(sorted(names)))
        except ValueError:
            pass  # unreadable: made again below
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Caption Relay on {dns[-1]}")])
    san = [x509.DNSName(n) for n in dns] + [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)  # its own CA: a client may pin it
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    # the key is written to a file only this user can read, then moved into place whole
    tmp = key_path.with_name(f".key.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    os.replace(tmp, key_path)
    tmp = cert_path.with_name(f".cert.{os.getpid()}")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp, cert_path)
    return Certificate(str(cert_path), str(key_path), _fingerprint(cert), True, tuple(dns + ips))


def ready_message(host: str, port: int, cert: Certificate | None) -> str:
    """What the person who started the server reads once it serves: where to open it, from here and from a phone."""
    scheme = "https" if cert else "http"
    any_ip = host.strip("[]") in ("0.0.0.0", "::", "")
    here = "127.0.0.1" if any_ip or _loopback(host) else _url_host(host)
    lines = [f"Caption Relay is ready: open {scheme}://{here}:{port}"]
    if any_ip:
        others = [f"{scheme}://{_url_host(a)}:{port}" for a in lan_addresses()]
        if others:
            lines.append("  from another device on this network (a phone): " + "  or  ".join(others))
        if not cert:
            lines.append(
                "  a phone's browser allows the microphone only over HTTPS: add --tls (or put a TLS proxy in front, "
                "docs/deploy.md)"
            )
    elif cert:
        lines.append("  to caption from a phone on this network, listen on it too: --host 0.0.0.0 (or HOST=0.0.0.0)")
    if cert:
        lines.append(f"  TLS certificate SHA-256 fingerprint: {cert.fingerprint}")
        if cert.self_signed:
            lines.append(
                f'  it is self-signed ({cert.cert_file}): the browser says "Your connection is not private" '
                '(Safari: "This Connection Is Not Private"); check the fingerprint above if you like (Chrome: the '
                "warning icon > Certificate), then Advanced > Proceed (Safari: Show Details > visit this website)"
            )
    return "\n".join(lines)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
