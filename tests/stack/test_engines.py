"""Each engine workaround, on the engine in use: needed on the engine it is for, harmless on the other.

CI runs this file on podman and on Docker (.ci/run). The others are covered where they act:
`--no-recreate` (podman) by test_smoke.py::test_up_again_recreates_nothing, stop + start for
restart by test_stop_and_spool.py, CMD-SHELL health checks and the stated nproc limit by every
service turning healthy under `up --wait`.
"""

import secrets

import pytest

from ctl import engine
from ctl.engine import ticker
from ctl.settings import long_running_services


def engine_run(eng, *args, timeout=120):
    out = engine.run([*eng.cli, *args], env=eng.env, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture
def scratch_volume(eng):
    name = f"{engine.PROJECT}-test-{secrets.token_hex(4)}"
    engine_run(eng, "volume", "create", name)
    yield name
    engine.run([*eng.cli, "volume", "rm", "-f", name], env=eng.env, timeout=60)


def conf_d_mount(compose_services) -> dict:
    return next(v for v in compose_services["nginx"]["volumes"] if v["target"] == "/etc/nginx/conf.d")


def files_after_a_container_mounts(eng, image, volume, target, nocopy: bool) -> list:
    """What VOLUME holds after a container of IMAGE mounted it (empty) at TARGET and ran."""
    options = ":nocopy" if nocopy else ""
    engine_run(eng, "run", "--rm", "--entrypoint", "true", "-v", f"{volume}:{target}{options}", image)
    listing = engine_run(eng, "run", "--rm", "--entrypoint", "ls", "-v", f"{volume}:/mnt:nocopy", image, "-A", "/mnt")
    return listing.split()


def test_engine_copies_image_files_into_an_empty_volume(eng, compose_services, scratch_volume):
    """The fact `nocopy` is for: without it the image's stock conf.d/default.conf lands in the volume."""
    image = compose_services["nginx"]["image"]
    assert "default.conf" in files_after_a_container_mounts(eng, image, scratch_volume, "/etc/nginx/conf.d", False)


def test_rendered_conf_d_volume_stays_empty_with_the_compose_options(eng, compose_services, scratch_volume):
    """Nginx's conf.d mounted as the compose file says: nothing of the image's is copied in (fails
    without `volume: {nocopy: true}` on Docker, which copies when the container is created)."""
    mount = conf_d_mount(compose_services)
    nocopy = bool(mount.get("volume", {}).get("nocopy"))
    image = compose_services["nginx"]["image"]
    assert files_after_a_container_mounts(eng, image, scratch_volume, mount["target"], nocopy) == []


def test_health_checks_run_without_the_ticker_on_docker(stack, eng, compose_services):
    """podman needs our ticker (no systemd timers here); Docker runs health checks itself, with none."""
    assert bool(engine.alive(ticker.ticker_pid())) == (eng.kind == "podman")
    for row in engine.ps(eng, *long_running_services({"services": compose_services})):
        assert row.get("Health") in ("healthy", ""), row  # "": a server without a check


def test_mlflow_image_trusts_only_its_base_images_cas(eng, compose_services):
    """This machine's CA reaches pip's build stage only: the image's trust store is its base image's,
    and no build-ca.crt is left anywhere in it."""
    mlflow_image = compose_services["mlflow"]["image"]
    python_image = engine.read_images_env().get("PYTHON_IMAGE") or engine.image_variables()["PYTHON_IMAGE"]
    digest = ["--entrypoint", "sha256sum"]
    bundle = "/etc/ssl/certs/ca-certificates.crt"
    assert (
        engine_run(eng, "run", "--rm", *digest, mlflow_image, bundle).split()[0]
        == engine_run(eng, "run", "--rm", *digest, python_image, bundle).split()[0]
    )
    found = engine_run(
        eng,
        "run",
        "--rm",
        "-u",
        "0",
        "--entrypoint",
        "find",
        mlflow_image,
        "/",
        "-xdev",
        "-name",
        "build-ca.crt",
        timeout=300,
    )
    assert found.strip() == ""
