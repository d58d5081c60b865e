"""The offline stand-in images keep their official images' contracts (docker/standins/README.md).

Runs docker/standins/check.sh, on the engine in use, against the stand-ins `./mlflowctl up` built
(var/images.env): users and uids, entrypoints, the tools health checks call, and each service doing
its job in a network of its own. With the official images (a registry was reachable) there is nothing to check.
"""

import subprocess

import pytest

from ctl import engine
from tests.conftest import ROOT

# The images check.sh covers; the monitoring profile's stand-ins are checked in test_monitoring.py.
CHECKED = ("PYTHON_IMAGE", "POSTGRES_IMAGE", "PGBOUNCER_IMAGE", "NGINX_IMAGE", "S3_IMAGE")


def test_standin_contracts(stack, eng):
    standins = engine.read_images_env()
    if not set(CHECKED) <= set(standins):
        pytest.skip(f"official images in use; stand-ins only for {sorted(standins) or 'none'}")
    run = subprocess.run(
        ["bash", str(ROOT / "docker" / "standins" / "check.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        env={**eng.env, "ENGINE": eng.kind},  # the images of the engine in use
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
