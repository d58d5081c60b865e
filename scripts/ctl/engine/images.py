"""Images: the official pins where present or pullable, else stand-ins built from Debian packages
(on debootstrap bases), and our own images, rebuilt whenever their inputs change."""

import hashlib
import re
import shutil
import subprocess
import time
from pathlib import Path

from ctl.engine.compose import COMPOSE_FILE, IMAGES_ENV, model
from ctl.engine.core import BASE_PREFIX, BUILD_LOG, INPUTS_LABEL, ROOT, VAR, Engine, log, open_build_log, run
from ctl.errors import CommandError
from ctl.settings import parse_env

STANDINS = ROOT / "docker" / "standins"
LOCAL_PREFIX = "localhost/mlflow-bundle/"
# Inputs of our image: what docker/Dockerfile copies (kept in step with .dockerignore).
IMAGE_INPUTS = (
    "docker/Dockerfile",
    "docker/requirements.txt",
    "docker/entrypoint.sh",
    "requirements.lock",
    "scripts/jobs",
    "scripts/store",
)
# Inputs of the `backup` service's image (docker/backup/Containerfile, on the PostgreSQL image).
BACKUP_INPUTS = ("docker/backup", "scripts/jobs")


def image_variables(text: str = None) -> dict:
    """`NAME_IMAGE` -> official default, as written in the compose file (its one definition)."""
    text = text if text is not None else COMPOSE_FILE.read_text()
    return dict(re.findall(r"\$\{([A-Z0-9_]+_IMAGE):-([^}]+)\}", text))


def standin_name(variable: str) -> str:
    return variable.removesuffix("_IMAGE").lower()


def standin_containerfile(variable: str) -> tuple[Path, str | None]:
    """The stand-in's Containerfile and build target: docker/standins/NAME/Containerfile, or the
    stage NAME of one shared by several (docker/standins/exporters); the former path if neither."""
    name = standin_name(variable)
    own = STANDINS / name / "Containerfile"
    if own.exists():
        return own, None
    for shared in sorted(STANDINS.glob("*/Containerfile")):
        if re.search(rf"^FROM\s+\S+\s+AS\s+{name}\s*$", shared.read_text(), re.M | re.I):
            return shared, name
    return own, None


def standin_tag(variable: str, official: str) -> str:
    return f"localhost/mlflow-bundle/standin-{standin_name(variable)}:{official.rsplit(':', 1)[-1]}"


def containerfile_base(path: Path) -> str:
    found = re.search(r"^ARG BASE=(\S+)", path.read_text(), re.M)
    if not found:
        raise CommandError(f"{path} has no `ARG BASE=` default")
    return found.group(1)


# What every stand-in needs of its base, stated once: the suite's point-release and security
# updates (debootstrap lists only "<suite> main"), and the PATH of Debian's official images (an
# imported image has none).
BASE_SOURCES = (
    "deb http://deb.debian.org/debian {suite} main\n"
    "deb http://deb.debian.org/debian {suite}-updates main\n"
    "deb http://deb.debian.org/debian-security {suite}-security main\n"
)
BASE_CHANGES = ("ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)


def ensure_debian_base(engine: Engine, ref: str):
    """`localhost/mlflow-bundle/debian:SUITE`, made by debootstrap (rebuilt when the above changes)."""
    suite = ref.removeprefix(BASE_PREFIX)
    sources = BASE_SOURCES.format(suite=suite)
    digest = hashlib.sha256("\0".join([sources, *BASE_CHANGES]).encode()).hexdigest()[:16]
    if engine.label(ref, INPUTS_LABEL) == digest:
        return
    if not shutil.which("debootstrap"):
        raise CommandError("debootstrap is needed to build the offline base images (apt-get install debootstrap)")
    target = VAR / "debootstrap" / suite
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    log(f"debootstrap {suite} (minbase) for the stand-in images")
    started = time.monotonic()
    with open_build_log() as fh:
        rc = subprocess.run(
            ["debootstrap", "--variant=minbase", suite, str(target), "http://deb.debian.org/debian"],
            stdout=fh,
            stderr=subprocess.STDOUT,
        ).returncode
    if rc:
        raise CommandError(f"debootstrap {suite} failed; see {BUILD_LOG}")
    (target / "etc" / "apt" / "sources.list").write_text(sources)
    changes = [arg for change in (*BASE_CHANGES, f"LABEL {INPUTS_LABEL}={digest}") for arg in ("--change", change)]
    tar = subprocess.Popen(["tar", "-C", str(target), "-c", "."], stdout=subprocess.PIPE)
    imported = subprocess.run(
        [*engine.cli, "import", *changes, "-", ref], stdin=tar.stdout, capture_output=True, env=engine.env
    )
    tar.wait()
    shutil.rmtree(target, ignore_errors=True)
    if imported.returncode or tar.returncode:
        raise CommandError(f"importing {ref} failed: {imported.stderr.decode().strip()}")
    log(f"made {ref} in {time.monotonic() - started:.0f}s")


def ensure_standin(engine: Engine, variable: str, official: str) -> str:
    tag = standin_tag(variable, official)
    containerfile, target = standin_containerfile(variable)
    if not containerfile.exists():
        raise CommandError(f"{official} cannot be pulled and there is no stand-in for it ({containerfile})")
    digest = inputs_hash([containerfile.parent.relative_to(ROOT).as_posix()], target or "")
    if engine.label(tag, INPUTS_LABEL) == digest:
        return tag
    base = containerfile_base(containerfile)
    if base.startswith(BASE_PREFIX):
        ensure_debian_base(engine, base)
    else:  # another stand-in, e.g. the S3 store on the python stand-in
        variable_of = {standin_tag(v, o): (v, o) for v, o in image_variables().items()}
        ensure_standin(engine, *variable_of[base])
    # A build needs this machine's CA (PyPI, npm) where its Containerfile copies build-ca.crt;
    # otherwise only the Debian mirror. A shared Containerfile learns its target as STANDIN too.
    engine.build(
        tag,
        containerfile.parent,
        containerfile,
        {"BASE": base, **({"STANDIN": target} if target else {})},
        {INPUTS_LABEL: digest},
        pypi="build-ca.cr" in containerfile.read_text(),
        target=target,
    )
    return tag


def pull(engine: Engine, ref: str) -> bool:
    log(f"pulling {ref}")
    try:
        return run([*engine.cli, "pull", ref], timeout=600, env=engine.env).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def inputs_hash(paths, extra: str = "") -> str:
    digest = hashlib.sha256(extra.encode())
    for rel in paths:
        base = ROOT / rel
        files = (
            sorted(
                p
                for p in base.rglob("*")
                if p.is_file()
                and "__pycache__" not in p.parts
                and not any(part.endswith(".egg-info") for part in p.parts)
            )
            if base.is_dir()
            else [base]
        )
        for f in files:
            digest.update(f.relative_to(ROOT).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def read_images_env() -> dict:
    return parse_env(IMAGES_ENV.read_text()) if IMAGES_ENV.exists() else {}


def ensure_images(engine: Engine, env: dict, profiles: tuple = None) -> dict:
    """Every image the stack uses is present: official (present or pulled), else a stand-in; an
    image with neither (Grafana: Debian packages none) is left out, see missing_images."""
    chosen = {}
    services = model(engine, profiles)["services"].values()
    in_use = {svc.get("image") for svc in services} | {
        a for svc in services for a in svc.get("build", {}).get("args", {}).values()
    }
    recorded, officials = read_images_env(), image_variables()
    for variable, official in officials.items():
        wanted = env.get(variable) or official
        if (recorded.get(variable) or wanted) not in in_use:
            continue  # e.g. the local S3 store when artifacts go to AWS S3
        # A default under localhost/mlflow-bundle/ (the `sso` profile's provider) is never pulled:
        # no registry has it, it is always the stand-in.
        built_here = wanted == official and official.startswith(LOCAL_PREFIX)
        if not built_here and (engine.image_exists(wanted) or pull(engine, wanted)):
            chosen[variable] = wanted
            continue
        if not standin_containerfile(variable)[0].exists():
            log(f"{wanted} cannot be pulled (no registry reachable?) and has no stand-in: its services are left out")
            continue
        if not built_here:
            log(
                f"{wanted} cannot be pulled (no registry reachable?): using a local stand-in built from Debian packages"
            )
        chosen[variable] = ensure_standin(engine, variable, official)
    standins = {k: v for k, v in chosen.items() if v != (env.get(k) or officials[k])}
    # Stand-ins of profiles not in use this time (e.g. monitoring) stay recorded for the next `up` that uses them.
    standins.update({k: v for k, v in recorded.items() if k in officials and k not in chosen})
    VAR.mkdir(exist_ok=True)
    IMAGES_ENV.write_text(
        "# Written by `./mlflowctl up`: stand-ins for images no registry could provide.\n"
        + "".join(f"{k}={v}\n" for k, v in sorted(standins.items()))
    )
    ensure_our_image(engine, env, chosen)
    # apt only: no PyPI, so no build CA.
    ensure_built(
        engine, env["BACKUP_IMAGE"], "docker/backup/Containerfile", BACKUP_INPUTS, "POSTGRES_IMAGE", chosen, pypi=False
    )
    return chosen


def missing_images(engine: Engine, profiles: tuple = None) -> dict:
    """Service -> image, for services whose image is absent after ensure_images (left out)."""
    return {
        name: svc["image"]
        for name, svc in model(engine, profiles)["services"].items()
        if not engine.image_exists(svc["image"])
    }


def ensure_our_image(engine: Engine, env: dict, chosen: dict):
    ensure_built(engine, env["MLFLOW_IMAGE"], "docker/Dockerfile", IMAGE_INPUTS, "PYTHON_IMAGE", chosen, pypi=True)


def ensure_built(engine: Engine, tag: str, dockerfile: str, inputs: tuple, base: str, chosen: dict, pypi: bool):
    """Build TAG from DOCKERFILE on the image chosen for the variable BASE, unless it is up to date."""
    digest = inputs_hash(inputs, extra=chosen[base])
    if engine.label(tag, INPUTS_LABEL) == digest:
        log(f"{tag} is up to date")
        return
    engine.build(tag, ROOT, ROOT / dockerfile, {base: chosen[base]}, {INPUTS_LABEL: digest}, pypi=pypi, inputs=inputs)
