"""Upgrade the running stack to a new MLflow image: backup, migrations once, then the server.

  ./mlflowctl upgrade                 build this checkout's image (docker/Dockerfile with the pins in
                                      docker/requirements.txt and requirements.lock) as
                                      REPOSITORY:MLFLOWVERSION-INPUTSHASH, then upgrade to it
  ./mlflowctl upgrade --image TAG     upgrade to TAG, an image present here or pullable (e.g. built
                                      by CI from the same checkout, or the previous tag to roll back)

Steps, each printed with its duration:
  1. image     the new image (built, found or pulled); the image the running `mlflow` container
               uses is the previous one, recorded with the backup path in var/upgrade-PROJECT.json
  2. backup    `./mlflowctl backup` (both databases and the bucket) into var/backups/
  3. migrate   the `migrate` one-shot on the new image, alone (`up --no-deps`): the old server keeps
               serving while it runs, and after it fails. Compose would otherwise stop and replace
               the old `mlflow` container before its dependencies run (it creates every container
               before starting any; with podman, `up` removes changed containers first).
  4. one-shots the other one-shot services on the new image (render-config, create-bucket)
  5. roll      recreate the long-running services on the new image (`mlflow`; a short outage, as in
               `restart`) and wait for their health checks
  6. verify    /version through Nginx (admin credentials, our CA) until it answers the new
               container's MLflow version, within --deadline seconds
  7. record    MLFLOW_IMAGE=TAG in .env (MLFLOW_IMAGE in the environment overrides .env)

On failure it exits 1 and prints how to roll back: the restore command with the backup just
taken, and `upgrade --image PREVIOUS`. Re-running is safe: a stack already serving TAG is left as
it is; after a failed migration a re-run takes a new backup and migrates from where the schema is
(`mlflow db upgrade` runs its revisions in one transaction on PostgreSQL: a failure leaves the
tracking schema unchanged).
"""

import json
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from ctl import backup, engine
from ctl import stackexec as sx
from ctl.bootstrap import write_private
from ctl.errors import CommandError
from ctl.settings import ROOT, Settings, one_shot_services
from ctl.stack import wait_for_nginx

STEPS = ("image", "backup", "migrate", "one-shots", "roll", "verify", "record")
MIGRATE = "migrate"
SERVER = "mlflow"
VERSION_CODE = "import mlflow; print(mlflow.__version__)"


def record_path() -> Path:
    return engine.VAR / f"upgrade-{engine.PROJECT}.json"


@contextmanager
def step(name: str):
    number = STEPS.index(name) + 1
    started = time.monotonic()
    engine.log(f"[{number}/{len(STEPS)}] {name}")
    yield
    engine.log(f"[{number}/{len(STEPS)}] {name}: done in {time.monotonic() - started:.1f}s")


def running_image(eng) -> tuple:
    """(image reference, image id) of the running `mlflow` container."""
    rows = [r for r in engine.ps(eng, SERVER) if r.get("State") == "running"]
    if not rows:
        raise CommandError(
            f"no running `{SERVER}` container in project {engine.PROJECT}: `upgrade` upgrades a "
            "running stack (start it with `./mlflowctl up`)"
        )
    out = engine.run([*eng.cli, "inspect", "--format", "{{.Config.Image}} {{.Image}}", rows[0]["Name"]], env=eng.env)
    ref, image_id = out.stdout.split()
    return ref, image_id.removeprefix("sha256:")


def image_id(eng, ref: str) -> str:
    out = engine.run([*eng.cli, "image", "inspect", "--format", "{{.Id}}", ref], env=eng.env)
    return out.stdout.strip().removeprefix("sha256:") if out.returncode == 0 else ""


def checkout_tag(env: dict, python_image: str) -> str:
    """REPOSITORY:MLFLOWVERSION-INPUTSHASH for this checkout's image (the inputs hash is its label)."""
    pin = re.search(r"^mlflow\[auth\]==(\S+)", (ROOT / "docker" / "requirements.txt").read_text(), re.M)
    if not pin:
        raise CommandError("docker/requirements.txt pins no mlflow[auth]==VERSION")
    repository = env["MLFLOW_IMAGE"].rsplit(":", 1)[0]
    return f"{repository}:{pin.group(1)}-{engine.inputs_hash(engine.IMAGE_INPUTS, extra=python_image)[:8]}"


def ensure_new_image(eng, env: dict, wanted: str) -> str:
    if wanted:
        if not (eng.image_exists(wanted) or engine.pull(eng, wanted)):
            raise CommandError(
                f"image {wanted} is not here and could not be pulled; omit --image to build this checkout's image"
            )
        return wanted
    python_image = (
        engine.read_images_env().get("PYTHON_IMAGE")
        or env.get("PYTHON_IMAGE")
        or engine.image_variables()["PYTHON_IMAGE"]
    )
    tag = checkout_tag(env, python_image)
    engine.ensure_our_image(eng, {"MLFLOW_IMAGE": tag}, {"PYTHON_IMAGE": python_image})
    return tag


def take_backup(out: Path) -> Path:
    try:
        return backup.take(out, backup.Target(bucket=backup.live_bucket()))
    except CommandError as exc:
        raise CommandError(f"backup failed, nothing was changed: {exc}") from None


def run_one_shot(eng, service: str, deadline_s: float):
    """(Re)create SERVICE on the current image, alone, and wait for its exit status."""
    engine.compose(eng, "rm", "--force", "--stop", "--volumes", service, capture=True)
    engine.compose(eng, "up", "--detach", "--no-deps", service, capture=True)
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        rows = engine.ps(eng, service)
        if rows and rows[0].get("State") == "exited":
            if rows[0].get("ExitCode") != 0:
                engine.compose(eng, "logs", "--no-color", "--tail", "40", service, check=False)
                raise CommandError(f"`{service}` exited with status {rows[0].get('ExitCode')} (its log is above)")
            return
        time.sleep(1)
    raise CommandError(f"`{service}` did not finish within {deadline_s:.0f}s")


def set_env_value(key: str, value: str):
    path = ROOT / ".env"
    text = path.read_text()
    line = f"{key}={value}"
    new = (
        re.sub(rf"^{key}=.*$", line, text, flags=re.M)
        if re.search(rf"^{key}=", text, re.M)
        else text.rstrip("\n") + f"\n{line}\n"
    )
    if new != text:
        write_private(path, new.encode())


def write_record(record: dict):
    engine.VAR.mkdir(exist_ok=True)
    record_path().write_text(json.dumps(record, indent=2) + "\n")


def rollback_advice(record: dict, failed_step: str) -> str:
    previous, new, saved = record["previous_image"], record["image"], record.get("backup")
    if not saved:
        return f"Nothing was changed: the stack still runs {previous}. Fix the cause and re-run."
    lines = []
    if failed_step in ("migrate", "one-shots"):
        lines.append(
            f"The previous server ({previous}) is still serving: only one-shot containers changed. "
            "Fix the cause (migrate's log is above) and re-run the same command, or roll back:"
        )
    else:
        lines.append(f"The database is migrated for {new}, but the new server is not serving. Roll back:")
    lines += [
        "",
        f"  ./mlflowctl restore {saved} --force",
        f"  ./mlflowctl upgrade --image {previous}",
        "",
        "The restore puts both databases and the bucket back as they were when the backup was taken (writes "
        "since then are lost); the second command runs the previous image's migrate on that schema (nothing "
        "to do) and puts the previous server back. `./mlflowctl up` builds MLFLOW_IMAGE from the checkout "
        "whenever the image's inputs changed: check out the bundle version that built "
        f"{previous} before the next `up`. The attempt is recorded in {record_path()}.",
    ]
    return "\n".join(lines)


def upgrade(args) -> int:
    settings = Settings.load()
    env = settings.env
    eng = engine.ensure()
    engine.start_ticker(eng)
    previous, previous_id = running_image(eng)
    record = {
        "project": engine.PROJECT,
        "previous_image": previous,
        "previous_image_id": previous_id,
        "image": args.image,
        "backup": None,
        "state": "started",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    current = "image"
    try:
        with step("image"):
            new = ensure_new_image(eng, env, args.image)
            record["image"], record["image_id"] = new, image_id(eng, new)
            engine.log(f"from {previous} ({previous_id[:12]}) to {new} ({record['image_id'][:12]})")
        eng.env["MLFLOW_IMAGE"] = new  # every Compose call below: the new image
        if record["image_id"] == previous_id:
            # A re-run after success, or after a failure once the new server runs: check it, record it.
            engine.log(f"`{SERVER}` already runs this image: no backup, migration or roll needed")
        else:
            write_record(record)
            current = "backup"
            with step("backup"):
                record["backup"] = str(take_backup(Path(args.backup_dir).resolve()))
                write_record(record)
            current = "migrate"
            with step("migrate"):
                run_one_shot(eng, MIGRATE, args.deadline)
            model = engine.model(eng)
            ours = [name for name, svc in model["services"].items() if svc.get("image") == new and name != MIGRATE]
            one_shots = one_shot_services(model)
            current = "one-shots"
            with step("one-shots"):
                for name in ours:
                    if name in one_shots:
                        run_one_shot(eng, name, args.deadline)
            current = "roll"
            with step("roll"):
                long_running = [name for name in ours if name not in one_shots]
                engine.log(f"recreating {', '.join(long_running)} on {new}")
                proc = engine.up(eng, *long_running, timeout_s=int(args.deadline), options=("--no-deps",))
                if proc.returncode:
                    raise CommandError(f"{', '.join(long_running)} did not become healthy on {new}")
        current = "verify"
        with step("verify"):
            version = sx.python(VERSION_CODE, env={}, timeout=120).stdout.strip()
            wait_for_nginx(settings, "/version", expect=version, auth=settings.admin_auth, deadline_s=args.deadline)
            engine.log(f"MLflow {version} serving at {settings.public_url}/")
        current = "record"
        with step("record"):
            set_env_value("MLFLOW_IMAGE", new)
            if record["backup"]:
                record.update(state="done", finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
                write_record(record)
            engine.log(f"MLFLOW_IMAGE={new} in .env; previous image and backup in {record_path()}")
    except CommandError as exc:
        record.update(state=f"failed at {current}", error=str(exc))
        write_record(record)
        print(f"\n{rollback_advice(record, current)}\n", file=sys.stderr)
        raise CommandError(f"FAILED at step {current}: {exc}") from None
    print(
        f"\nUpgraded: {previous} -> {new} (MLflow {version}); backup taken before: {record['backup']}"
        if record["backup"]
        else f"\nAlready upgraded: {new} serves MLflow {version}"
    )
    return 0


def register(sub):
    """Register `upgrade` on mlflowctl's subparsers."""
    p = sub.add_parser(
        "upgrade", help="back up, migrate once, roll MLflow to a new image, check health", description=__doc__
    )
    p.add_argument("--image", help="image to upgrade to (present or pullable); default: build this checkout's image")
    p.add_argument(
        "--backup-dir", default=str(engine.VAR / "backups"), help="where the backup goes (default: %(default)s)"
    )
    p.add_argument(
        "--deadline",
        type=float,
        default=600,
        help="seconds each of migrate, the roll and the health check may take (default: %(default)s)",
    )
    p.set_defaults(func=upgrade)
