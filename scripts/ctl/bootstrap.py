"""Create `.env` with random secrets and a TLS certificate for MLFLOW_PUBLIC_HOST. Idempotent.

- `.env`: copied from `.env.example`; each empty secret gets a random value. Values already in
  `.env` are never changed, variables added to `.env.example` later are appended. Mode 0600.
- `certs/`: a private CA (`ca.crt` is what clients trust, `ca.key` 0600) and a server certificate
  for MLFLOW_PUBLIC_HOST plus localhost/127.0.0.1/::1 (`server.key` 0600). A certificate that no
  longer covers MLFLOW_PUBLIC_HOST is re-issued from the same CA. Replace both server files with
  your own to use a certificate from a real CA.
"""

import datetime
import ipaddress
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ctl.errors import CommandError
from ctl.settings import ROOT, parse_env

SECRETS = (
    "POSTGRES_PASSWORD",
    "MLFLOW_DB_PASSWORD",
    "MLFLOW_ADMIN_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "MONITORING_PASSWORD",
    "GRAFANA_ADMIN_PASSWORD",
    "BACKUP_DB_PASSWORD",
    "OIDC_CLIENT_SECRET",
    "OIDC_USER_PASSWORD",
    "OIDC_CI_CLIENT_SECRET",
    "OIDC_COOKIE_KEY",
)
# Static keys only for a self-hosted S3-compatible store; on AWS the instance role is used.
LOCAL_S3_SECRETS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "BACKUP_S3_ACCESS_KEY_ID",
    "BACKUP_S3_SECRET_ACCESS_KEY",
)


def write_private(path: Path, data: bytes):
    """Write with mode 0600 from the first byte (no window where the file is world-readable)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def ensure_env(root: Path = ROOT) -> tuple[dict, list[str]]:
    """Return (values, names of variables this call added)."""
    env_file = root / ".env"
    example = (root / ".env.example").read_text()
    current = env_file.read_text() if env_file.exists() else ""
    have = parse_env(current)
    wanted = parse_env(example)
    local_s3 = bool(have.get("MLFLOW_S3_ENDPOINT_URL", wanted.get("MLFLOW_S3_ENDPOINT_URL")))
    added, lines = [], []
    for key, default in wanted.items():
        if key in have:
            continue
        value = default
        if not value and (key in SECRETS or (local_s3 and key in LOCAL_S3_SECRETS)):
            value = secrets.token_urlsafe(32)
        lines.append(f"{key}={value}")
        added.append(key)
    if not env_file.exists():
        # First run: keep .env.example's comments and order, with the secrets filled in.
        filled = parse_env("\n".join(lines))
        text = (
            "\n".join(
                f"{line.split('=', 1)[0]}={filled[line.split('=', 1)[0]]}"
                if line and not line.startswith("#") and "=" in line
                else line
                for line in example.splitlines()
            )
            + "\n"
        )
        write_private(env_file, text.encode())
    elif added:
        write_private(env_file, (current.rstrip("\n") + "\n" + "\n".join(lines) + "\n").encode())
    os.chmod(env_file, 0o600)
    return parse_env(env_file.read_text()), added


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mlflow-bundle"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _key_bytes(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _sans(host: str) -> list:
    names = {host, "localhost"}
    out = [x509.DNSName(n) for n in sorted(names)]
    return out + [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]


def covers(cert: x509.Certificate, host: str) -> bool:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return host in san.get_values_for_type(x509.DNSName) or host in map(str, san.get_values_for_type(x509.IPAddress))


def _has(cert_file: Path, extension) -> bool:
    """Whether the certificate in CERT_FILE carries EXTENSION. Python >= 3.13 verifies strictly
    (VERIFY_X509_STRICT): a CA without a Subject Key Identifier, or a certificate it signed without
    an Authority Key Identifier, is refused ("Missing Authority Key Identifier")."""
    try:
        x509.load_pem_x509_certificate(cert_file.read_bytes()).extensions.get_extension_for_class(extension)
    except x509.ExtensionNotFound:
        return False
    return True


def ensure_certs(host: str, certs: Path) -> list[str]:
    """Return the names of the files this call wrote."""
    certs.mkdir(mode=0o755, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    written = []
    ca_crt = certs / "ca.crt"
    if ca_crt.exists() and (certs / "ca.key").exists() and not _has(ca_crt, x509.SubjectKeyIdentifier):
        print(f"bootstrap: {ca_crt} has no Subject Key Identifier (Python >= 3.13 clients refuse it): a new CA")
        ca_crt.unlink()
    if not ca_crt.exists() or not (certs / "ca.key").exists():
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (
            x509.CertificateBuilder()
            .subject_name(_name("mlflow-bundle local CA"))
            .issuer_name(_name("mlflow-bundle local CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        write_private(certs / "ca.key", _key_bytes(ca_key))
        (certs / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        (certs / "server.crt").unlink(missing_ok=True)  # a new CA invalidates the old server cert
        written += ["ca.key", "ca.crt"]
    server_crt = certs / "server.crt"
    if (
        server_crt.exists()
        and (certs / "server.key").exists()
        and covers(x509.load_pem_x509_certificate(server_crt.read_bytes()), host)
        and _has(server_crt, x509.AuthorityKeyIdentifier)
    ):
        return written
    loaded_key = serialization.load_pem_private_key((certs / "ca.key").read_bytes(), None)
    if not isinstance(loaded_key, ec.EllipticCurvePrivateKey):
        raise CommandError(
            f"{certs / 'ca.key'} is not the EC key `bootstrap` writes: move certs/ away to issue a new CA"
        )
    ca_key = loaded_key
    ca = x509.load_pem_x509_certificate((certs / "ca.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(host))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(_sans(host)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write_private(certs / "server.key", _key_bytes(key))
    server_crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return written + ["server.key", "server.crt"]


def bootstrap(root: Path = ROOT) -> dict:
    values, added = ensure_env(root)
    print(f"bootstrap: .env {'added ' + ', '.join(added) if added else 'unchanged'} (mode 0600)")
    written = ensure_certs(values["MLFLOW_PUBLIC_HOST"], root / "certs")
    print(
        f"bootstrap: certs/ {'wrote ' + ', '.join(written) if written else 'unchanged'}"
        f" (clients trust {root / 'certs' / 'ca.crt'})"
    )
    return values
