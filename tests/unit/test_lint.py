"""ruff and mypy (pinned in requirements.lock, configured in pyproject.toml): lint, format and types are clean."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

RUFF = Path(sys.executable).parent / "ruff"


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]], ids=["check", "format"])
def test_ruff(args):
    out = subprocess.run([str(RUFF), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_mypy():
    """scripts/ctl and scripts/jobs (pyproject.toml's [tool.mypy] says what is excluded, and why)."""
    mypy = Path(sys.executable).parent / "mypy"
    out = subprocess.run(
        [str(mypy), "scripts/ctl", "scripts/jobs"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
