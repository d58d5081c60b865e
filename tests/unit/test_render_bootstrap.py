"""The template renderer and the bootstrap step (secrets, certificates, idempotency)."""

import os
import shutil
import stat
from pathlib import Path

import pytest
from cryptography import x509

from ctl import bootstrap
from jobs import render

ROOT = Path(__file__).resolve().parents[2]


def test_render_substitutes_and_refuses_unset():
    assert render.render_text("a {{X}} b {{ Y }}", {"X": "1", "Y": "2"}) == "a 1 b 2"
    with pytest.raises(KeyError, match="Y"):
        render.render_text("{{X}} {{Y}}", {"X": "1"})
    # Nginx's own $variables pass through untouched
    assert render.render_text("$http_host {{X}}", {"X": "1"}) == "$http_host 1"


def test_public_url_omits_default_port():
    assert render.derived({"MLFLOW_PUBLIC_HOST": "m.example", "HTTPS_PORT": "443"})["PUBLIC_URL"] == "https://m.example"
    assert (
        render.derived({"MLFLOW_PUBLIC_HOST": "m.example", "HTTPS_PORT": "8443"})["PUBLIC_URL"]
        == "https://m.example:8443"
    )


def test_render_tree_secret_files_private(tmp_path):
    templates = [t for d in render.TEMPLATE_DIRS for t in (ROOT / d).glob("*.template")]
    env = {name: "x" for t in templates for name in render.PLACEHOLDER.findall(t.read_text())}
    env.update(PGBOUNCER_UID=str(os.getuid()), SEAWEEDFS_UID=str(os.getuid()), PROMETHEUS_UID=str(os.getuid()))
    written = {p.relative_to(tmp_path).as_posix(): p for p in render.render_tree(ROOT, tmp_path, env)}
    assert set(render.SECRET_FILES) <= set(written)
    for rel, path in written.items():
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o600 if rel in render.SECRET_FILES else 0o644), rel
    assert "pool_mode = transaction" in written["pgbouncer/pgbouncer.ini"].read_text()


@pytest.fixture
def project(tmp_path) -> Path:
    shutil.copy(ROOT / ".env.example", tmp_path / ".env.example")
    return tmp_path


def snapshot(root: Path) -> dict:
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_bootstrap_random_private_idempotent(project):
    values = bootstrap.bootstrap(project)
    for key in bootstrap.SECRETS + bootstrap.LOCAL_S3_SECRETS:
        assert len(values[key]) >= 32, key
    assert values["MLFLOW_ADMIN_PASSWORD"] != "password1234"  # MLflow's old default (CVE-2026-2635)
    assert len({values[k] for k in bootstrap.SECRETS}) == len(bootstrap.SECRETS)
    for private in (".env", "certs/ca.key", "certs/server.key"):
        assert stat.S_IMODE((project / private).stat().st_mode) == 0o600, private
    before = snapshot(project)
    bootstrap.bootstrap(project)
    assert snapshot(project) == before, "a second bootstrap changed files"
    other = project.parent / "other"
    other.mkdir()
    shutil.copy(ROOT / ".env.example", other / ".env.example")
    assert bootstrap.bootstrap(other)["MLFLOW_ADMIN_PASSWORD"] != values["MLFLOW_ADMIN_PASSWORD"]


def test_bootstrap_keeps_values_and_appends_new_variables(project):
    bootstrap.bootstrap(project)
    env_file = project / ".env"
    env_file.write_text(
        env_file.read_text().replace("MLFLOW_ARTIFACT_BUCKET=mlflow-artifacts", "MLFLOW_ARTIFACT_BUCKET=mine")
    )
    (project / ".env.example").write_text((project / ".env.example").read_text() + "NEW_SETTING=1\n")
    values, added = bootstrap.ensure_env(project)
    assert added == ["NEW_SETTING"] and values["MLFLOW_ARTIFACT_BUCKET"] == "mine"


def test_no_aws_keys_generated_for_real_s3(project):
    example = project / ".env.example"
    example.write_text(example.read_text().replace("MLFLOW_S3_ENDPOINT_URL=http://s3:8333", "MLFLOW_S3_ENDPOINT_URL="))
    values = bootstrap.bootstrap(project)
    assert values["AWS_ACCESS_KEY_ID"] == "" and values["AWS_SECRET_ACCESS_KEY"] == ""


def test_certificate_reissued_for_new_host(project):
    bootstrap.bootstrap(project)
    ca_before = (project / "certs" / "ca.crt").read_bytes()
    env_file = project / ".env"
    env_file.write_text(
        env_file.read_text().replace("MLFLOW_PUBLIC_HOST=localhost", "MLFLOW_PUBLIC_HOST=mlflow.example.org")
    )
    bootstrap.bootstrap(project)
    cert = x509.load_pem_x509_certificate((project / "certs" / "server.crt").read_bytes())
    assert bootstrap.covers(cert, "mlflow.example.org") and bootstrap.covers(cert, "localhost")
    assert (project / "certs" / "ca.crt").read_bytes() == ca_before, "the CA clients trust must not change"


def _verify(certs: Path, host: str):
    """RFC 5280 path validation as strict as Python 3.13's default (VERIFY_X509_STRICT): key
    identifiers on the CA and on the certificate it signs."""
    from cryptography.x509.verification import PolicyBuilder, Store

    load = lambda name: x509.load_pem_x509_certificate((certs / name).read_bytes())  # noqa: E731
    PolicyBuilder().store(Store([load("ca.crt")])).build_server_verifier(x509.DNSName(host)).verify(
        load("server.crt"), []
    )


def test_certificates_pass_strict_verification_and_old_ones_are_reissued(tmp_path):
    certs = tmp_path / "certs"
    bootstrap.ensure_certs("mlflow.example.org", certs)
    _verify(certs, "mlflow.example.org")
    # A CA from before key identifiers (earlier bootstraps): replaced, with a server cert it signs.
    key = bootstrap.ec.generate_private_key(bootstrap.ec.SECP256R1())
    now = bootstrap.datetime.datetime.now(bootstrap.datetime.UTC)
    name = bootstrap._name("old CA")
    old = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + bootstrap.datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, bootstrap.hashes.SHA256())
    )
    (certs / "ca.crt").write_bytes(old.public_bytes(bootstrap.serialization.Encoding.PEM))
    bootstrap.write_private(certs / "ca.key", bootstrap._key_bytes(key))
    assert set(bootstrap.ensure_certs("mlflow.example.org", certs)) == {"ca.key", "ca.crt", "server.key", "server.crt"}
    _verify(certs, "mlflow.example.org")
