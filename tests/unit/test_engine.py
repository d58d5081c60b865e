"""The engine layer's own failure paths and build inputs, without a container engine.

Real parts: debootstrap, the engine CLI (which answers "no such image" without a daemon too), the
mlflowctl entry point in a child process."""

import json
import re
import subprocess
import sys

import pytest

from ctl import __main__ as cli
from ctl import engine, stack
from ctl.engine import core
from ctl.errors import CommandError
from tests.conftest import ROOT

PIP_BUILDS = (ROOT / "docker" / "Dockerfile", ROOT / "docker" / "standins" / "s3" / "Containerfile")


def test_debian_base_failure_is_one_line_without_var_log(tmp_path, monkeypatch):
    """On Docker, var/log did not exist yet when debootstrap's output was logged (FileNotFoundError)."""
    monkeypatch.setattr(core, "BUILD_LOG", tmp_path / "log" / "build.log")
    monkeypatch.setattr(engine.images, "VAR", tmp_path)
    monkeypatch.setattr(engine.Engine, "label", lambda self, ref, key: None)  # no engine needed
    with pytest.raises(CommandError, match=r"debootstrap no-such-suite failed; see .*build\.log"):
        engine.ensure_debian_base(engine.Engine("docker", {}), engine.BASE_PREFIX + "no-such-suite")
    assert (tmp_path / "log" / "build.log").stat().st_size > 0


def test_unexpected_error_is_one_line_and_a_log(tmp_path, monkeypatch, capsys):
    """An error no command expected: one line naming the log with the traceback, exit 1."""
    monkeypatch.setattr(cli, "ERROR_LOG", tmp_path / "log" / "errors.log")

    def broken(args):
        raise FileNotFoundError(2, "No such file or directory", "var/log/build.log")

    monkeypatch.setattr(stack, "cmd_down", broken)
    assert cli.main(["down"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"mlflowctl down: unexpected error (traceback in {tmp_path / 'log' / 'errors.log'})")
    assert "Traceback" in (tmp_path / "log" / "errors.log").read_text()


def test_operator_mistake_prints_no_traceback():
    out = subprocess.run(
        [sys.executable, "-m", "ctl", "up", "--no-such-flag"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr


def test_throwaway_context_has_inputs_and_the_build_ca(tmp_path):
    context = core.throwaway_context(ROOT, tmp_path, engine.IMAGE_INPUTS)
    assert (context / core.BUILD_CA).read_bytes() == (core.HOST_CA.read_bytes() if core.HOST_CA.exists() else b"")
    assert (context / "requirements.lock").exists() and (context / "scripts" / "store" / "pyproject.toml").exists()
    assert not (context / ".env").exists() and not (context / "certs").exists()
    assert not list(context.rglob("__pycache__"))


@pytest.mark.parametrize("path", PIP_BUILDS, ids=lambda p: p.parent.name)
def test_build_ca_stays_in_the_pip_stage(path):
    """Only the `pip` stage copies build-ca.crt; the final stage takes nothing from it but /install."""
    stages = re.split(r"^FROM ", path.read_text(), flags=re.M)[1:]
    assert len(stages) == 2 and stages[0].split()[2] == "pip", path
    assert core.BUILD_CA in stages[0] and core.BUILD_CA not in stages[1]
    assert re.findall(r"^COPY --from=\S+ .*$", stages[1], re.M) == ["COPY --from=pip /install /usr/local"]


def test_ticker_survives_a_podman_that_does_not_answer(monkeypatch):
    """A `podman ps` that times out (seen at load average 10) is retried: the ticker goes on and
    still runs the health checks once podman answers."""
    from ctl.engine import ticker

    calls: list = []
    info = {"Id": "c1", "Name": "x", "Config": {"Healthcheck": {"Test": ["CMD", "true"], "Interval": 30e9}}}

    def fake_run(cmd, timeout=600, **kw):
        calls.append(cmd[1])
        if cmd[1] == "ps" and calls.count("ps") == 1:
            raise subprocess.TimeoutExpired(cmd, timeout)
        if cmd[1] == "ps":
            if calls.count("healthcheck"):
                raise SystemExit  # checked once after the hang: done
            return subprocess.CompletedProcess(cmd, 0, "c1\n", "")
        if cmd[1] == "inspect":
            return subprocess.CompletedProcess(cmd, 0, json.dumps([info]), "")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(ticker, "run", fake_run)
    monkeypatch.setattr(ticker.time, "sleep", lambda s: None)
    monkeypatch.setattr(ticker.signal, "signal", lambda *a: None)
    with pytest.raises(SystemExit):
        ticker.tick(idle_exit_s=60, max_hours=0.01)
    assert calls[:4] == ["ps", "ps", "inspect", "healthcheck"]


EXPORTERS = ROOT / "docker" / "standins" / "exporters" / "Containerfile"


@pytest.mark.parametrize("variable", ["POSTGRES_EXPORTER_IMAGE", "BLACKBOX_EXPORTER_IMAGE"])
def test_a_shared_containerfile_builds_its_stage_by_name(variable, monkeypatch):
    calls = []
    monkeypatch.setattr(engine.Engine, "label", lambda self, ref, key: None)
    monkeypatch.setattr(engine.images, "ensure_debian_base", lambda eng, ref: None)
    monkeypatch.setattr(engine.Engine, "build", lambda self, tag, *a, **kw: calls.append((tag, a, kw)))
    official = engine.image_variables()[variable]
    tag = engine.ensure_standin(engine.Engine("docker", {}), variable, official)
    name = variable.removesuffix("_IMAGE").lower()
    [(built, (context, containerfile, args, _labels), kw)] = calls
    assert built == tag == f"localhost/mlflow-bundle/standin-{name}:{official.rsplit(':', 1)[1]}"
    assert containerfile == EXPORTERS and context == EXPORTERS.parent
    assert kw["target"] == args["STANDIN"] == name


def test_stages_before_each_exporter_run_nothing_of_their_own():
    """Docker's classic builder builds every stage before the target, with the target's STANDIN: only
    the shared first stage may have steps that depend on it."""
    stages = re.findall(r"^FROM \S+ AS (\S+)\n(.*?)(?=^FROM |\Z)", EXPORTERS.read_text(), re.M | re.S)
    assert stages[0][0] == "exporter"
    for name, body in stages[1:-1]:
        assert not re.search(r"^RUN ", body, re.M), name
