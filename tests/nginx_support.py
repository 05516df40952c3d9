"""Real nginx for the tests: the templates rendered as the official image renders them, a complete
``nginx.conf`` in a temporary directory, nginx started on free ports as a non-daemon child and
stopped gracefully, and a test certificate authority for TLS.

The official nginx image runs ``envsubst "$defined_envs"`` on every ``*.template`` under
``/etc/nginx/templates`` into ``/etc/nginx/conf.d`` (keeping sub-directories), where
``defined_envs`` lists the names of the environment's variables. So only those names are
replaced, in both ``${NAME}`` and ``$NAME`` forms, and everything else (nginx's own ``$host``, a
variable nobody set) is left as it is: :func:`envsubst` does exactly that.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import signal
import ssl
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support import wait_for_port

NGINX_DIR = Path(__file__).resolve().parent.parent / "nginx"
TEMPLATES_DIR = NGINX_DIR / "templates"
SNIPPETS_DIR = NGINX_DIR / "snippets"
TEMPLATE_SUFFIX = ".template"

# GNU envsubst: "$" then a shell identifier, or the same in braces. No defaults, no escapes.
_ENVSUBST_RE = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)
TEMPLATE_VARIABLE_RE = re.compile(r"\$\{(TTGW_[A-Z0-9_]+)\}")

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


def envsubst(text: str, variables: Mapping[str, str]) -> str:
    """``text`` with ``${NAME}`` and ``$NAME`` replaced for the names in ``variables`` only."""

    def replace(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bare")
        return variables[name] if name in variables else match.group(0)

    return _ENVSUBST_RE.sub(replace, text)


def render_tree(source: Path, target: Path, variables: Mapping[str, str]) -> list[Path]:
    """Render every ``*.template`` under ``source`` into ``target``, as the official image does."""
    written = []
    for template in sorted(source.rglob(f"*{TEMPLATE_SUFFIX}")):
        relative = template.relative_to(source)
        output = target / relative.parent / relative.name.removesuffix(TEMPLATE_SUFFIX)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(envsubst(template.read_text(), variables))
        written.append(output)
    return written


def template_variables(*directories: Path) -> set[str]:
    """Every ``${TTGW_*}`` name the templates under ``directories`` use."""
    names: set[str] = set()
    for directory in directories:
        for template in directory.rglob(f"*{TEMPLATE_SUFFIX}"):
            names.update(TEMPLATE_VARIABLE_RE.findall(template.read_text()))
    return names


# --- nginx.conf and the process -------------------------------------------------------------------


def main_conf(root: Path, http_body: str) -> str:
    """A complete ``nginx.conf`` whose pid, logs and temporary files all live under ``root``."""
    temp = root / "temp"
    for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (temp / name).mkdir(parents=True, exist_ok=True)
    # As root, workers would switch to "nobody", who cannot enter pytest's private temp dirs.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{
    worker_connections 256;
}}
http {{
    default_type application/octet-stream;
    access_log {root}/access.log;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;

{http_body}
}}
"""


def _command(binary: Path, root: Path, conf: Path, *extra: str) -> list[str]:
    return [str(binary), "-p", f"{root}/", "-c", str(conf), "-e", str(root / "error.log"), *extra]


def check_config(binary: Path, root: Path, http_body: str) -> subprocess.CompletedProcess[str]:
    """``nginx -t`` on a complete configuration around ``http_body`` (the result, not raised)."""
    root.mkdir(parents=True, exist_ok=True)
    conf = root / "nginx.conf"
    conf.write_text(main_conf(root, http_body))
    return subprocess.run(
        _command(binary, root, conf, "-t", "-q"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@dataclass
class Nginx:
    """A running nginx."""

    root: Path
    process: subprocess.Popen[bytes]

    def error_log(self) -> str:
        """What nginx logged so far."""
        path = self.root / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextmanager
def run_nginx(binary: Path, root: Path, http_body: str, ports: list[int]) -> Iterator[Nginx]:
    """nginx in the foreground on ``ports`` with ``http_body`` inside ``http {}``; then stopped.

    The configuration is checked first (``nginx -t``) so a bad one fails with nginx's message.
    Stopping is graceful (SIGQUIT) and waited for; a stuck nginx is killed.
    """
    checked = check_config(binary, root, http_body)
    if checked.returncode != 0:
        raise RuntimeError(f"nginx -t failed:\n{checked.stderr}")
    conf = root / "nginx.conf"
    process = subprocess.Popen(
        _command(binary, root, conf, "-g", "daemon off;"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    nginx = Nginx(root, process)
    try:
        try:
            for port in ports:
                wait_for_port(port, process, START_TIMEOUT_S)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"nginx did not start: {exc}\n{nginx.error_log()}") from exc
        yield nginx
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGQUIT)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT_S)


# --- TLS ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    """A throw-away CA and a server certificate it signed."""

    ca_pem: bytes
    certificate: Path  # server certificate then the CA: the chain nginx sends
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only this CA (and checks the host name)."""
        return ssl.create_default_context(cadata=self.ca_pem.decode())


def make_certificates(directory: Path, hostnames: list[str]) -> Certificates:
    """A CA and a certificate for ``hostnames`` and 127.0.0.1, written under ``directory``."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tiktok-gateway test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in hostnames]
    names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    certificate = directory / "server.crt"
    certificate.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + ca_pem)
    key_path = directory / "server.key"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return Certificates(ca_pem=ca_pem, certificate=certificate, key=key_path)
