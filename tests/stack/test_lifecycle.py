"""Day-2 operations against the running stack: promotion, repair, concurrent serving, team isolation.

Real MLflow client through Nginx/TLS; the CLI is run as a user runs it (`python -m ctl`).
"""

import contextlib
import json
import threading
import time

import pytest
from mlflow.exceptions import MlflowException

from ctl.errors import CommandError
from ctl.lifecycle.promote import INTENT_TAG, promote
from tests.conftest import poll
from tests.stack.lifecycle_fixtures import run_cli


def registry_state(mlf, name) -> dict:
    """Aliases and tags of the model and all its versions: what a refused promotion must not change."""
    model = mlf.get_registered_model(name)
    versions = mlf.search_model_versions(f"name = '{name}'")
    return {
        "aliases": dict(model.aliases),
        "tags": dict(model.tags),
        "versions": {v.version: dict(v.tags) for v in versions},
    }


def register_versions(mlf, name, trained, team) -> list:
    """Register each trained model as a version of NAME (admin; the CLI path is tested separately)."""
    import mlflow

    mlf.create_registered_model(name, tags={"team": team})
    return [mlflow.register_model(t["model_uri"], name).version for t in trained]


@pytest.fixture
def admin_mlf(mlflow_admin, monkeypatch):
    monkeypatch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD", "false")  # see scripts/ctl/lifecycle/common.py
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")  # see lifecycle_fixtures.client_env
    return mlflow_admin


def test_full_lifecycle_with_gates(teams_setup, trained, admin_mlf):
    env, name = teams_setup["env_a"], f"{teams_setup['prefix_a']}-sgd"
    versions = []
    for t in trained:  # register through the CLI, as team a's CI user
        out = run_cli(env, "register", t["model_uri"], name, "--file", str(teams_setup["file"]))
        assert out.returncode == 0, out.stderr
        versions.append(out.stdout.strip().splitlines()[-1].rsplit(" ", 1)[1])
    v1, v2 = versions
    assert admin_mlf.get_registered_model(name).tags["team"] == teams_setup["a"]

    assert run_cli(env, "validate", f"models:/{name}/{v1}", "--min-metric", "val_ndcg=0.3").returncode == 0
    for alias in ("candidate", "challenger", "champion"):
        out = run_cli(env, "promote", name, v1, "--to", alias)
        assert out.returncode == 0, out.stderr

    # Gates: a refused promotion says why in one line and changes nothing.
    before = registry_state(admin_mlf, name)
    out = run_cli(env, "promote", name, v2, "--to", "champion", in_process=False)  # the real mlflowctl process
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        f"mlflowctl promote: refused: {name} v{v2} is not the current challenger (@challenger is unset); "
        "promote it with --to challenger first"
    )
    out = run_cli(env, "promote", name, v2, "--to", "challenger")
    assert out.returncode == 1 and "validation_status=unset" in out.stderr
    assert registry_state(admin_mlf, name) == before

    out = run_cli(env, "validate", f"models:/{name}/{v2}", "--min-metric", "val_ndcg=1.01")
    assert out.returncode == 1 and "failed validation: val_ndcg=" in out.stderr
    assert admin_mlf.get_model_version(name, v2).tags["validation_status"] == "failed"
    assert run_cli(env, "promote", name, v2, "--to", "challenger").returncode == 1
    out = run_cli(
        env, "validate", f"models:/{name}/{v2}", "--min-metric", "val_ndcg=0.3", "--max-metric", "train_loss=10"
    )
    assert out.returncode == 0, out.stderr

    for alias in ("candidate", "challenger", "champion"):
        out = run_cli(env, "promote", name, v2, "--to", alias)
        assert out.returncode == 0, out.stderr

    model = admin_mlf.get_registered_model(name)
    assert model.aliases == {"champion": v2}
    assert INTENT_TAG not in model.tags
    old, new = admin_mlf.get_model_version(name, v1), admin_mlf.get_model_version(name, v2)
    assert "archived_at" in old.tags and old.tags["archived_by_version"] == v2
    assert "archived_at" not in new.tags and "promoted_to_champion_at" in new.tags

    import mlflow.pyfunc

    loaded = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    assert loaded.metadata.run_id == new.run_id == trained[1]["run_id"]
    assert loaded.metadata.signature is not None


class FailOnce:
    """The real client, except that one method raises the first time it is called."""

    def __init__(self, mlf, method):
        self._mlf, self._method, self.failed = mlf, method, False

    def __getattr__(self, attr):
        real = getattr(self._mlf, attr)
        if attr != self._method or self.failed:
            return real

        def boom(*args, **kwargs):
            self.failed = True
            raise RuntimeError("injected failure")

        return boom


def test_failure_between_alias_moves_is_detected_and_repaired(teams_setup, trained, admin_mlf, admin_env):
    name = f"{teams_setup['prefix_a']}-repair"
    v1, v2 = register_versions(admin_mlf, name, trained, teams_setup["a"])
    for v in (v1, v2):
        admin_mlf.set_model_version_tag(name, v, "validation_status", "passed")
    for alias in ("candidate", "challenger", "champion"):
        promote(admin_mlf, name, v1, alias)
    promote(admin_mlf, name, v2, "challenger")

    failing = FailOnce(admin_mlf, "delete_registered_model_alias")  # between @champion and @challenger moves
    with pytest.raises(CommandError) as exc:
        promote(failing, name, v2, "champion")
    assert failing.failed
    assert (
        f"stopped after 'set @champion -> v{v2}' at 'remove @challenger from v{v2}': injected failure; "
        f"@champion resolves to v{v2}; finish it with: ./mlflowctl promote {name} --repair"
    ) in str(exc.value)
    half = admin_mlf.get_registered_model(name)
    assert half.aliases == {"champion": v2, "challenger": v2}  # serving already sees the new champion
    assert json.loads(half.tags[INTENT_TAG])["version"] == v2

    out = run_cli(admin_env, "promote", name, v1, "--to", "candidate")  # any promotion waits for the repair
    assert out.returncode == 1 and f"run `./mlflowctl promote {name} --repair` first" in out.stderr
    out = run_cli(admin_env, "promote", name, "--repair", in_process=False)
    assert out.returncode == 0, out.stderr
    model = admin_mlf.get_registered_model(name)
    assert model.aliases == {"champion": v2} and INTENT_TAG not in model.tags
    assert admin_mlf.get_model_version(name, v1).tags["archived_by_version"] == v2
    assert "no promotion in progress" in run_cli(admin_env, "promote", name, "--repair").stdout


def test_concurrent_reader_always_loads_champion(teams_setup, trained, admin_mlf):
    import mlflow.pyfunc

    name = f"{teams_setup['prefix_a']}-serving"
    v1, v2 = register_versions(admin_mlf, name, trained, teams_setup["a"])
    for v in (v1, v2):
        admin_mlf.set_model_version_tag(name, v, "validation_status", "passed")
    promote(admin_mlf, name, v1, "challenger")
    promote(admin_mlf, name, v1, "champion")

    stop, loads, errors, seen = threading.Event(), [], [], set()

    def reader():
        deadline = time.monotonic() + 90
        for _ in range(500):  # bounded in count and time
            if stop.is_set() or time.monotonic() > deadline:
                return
            try:
                seen.add(mlflow.pyfunc.load_model(f"models:/{name}@champion").metadata.run_id)
                loads.append(1)
            except Exception as exc:  # any failure is the finding
                errors.append(repr(exc))

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        # Rotate the champion v1 -> v2 -> v1 -> v2 (a rollback is a promotion too), a load between each.
        for version in (v2, v1, v2):
            count = len(loads) + len(errors)
            poll("the reader to load again", lambda count=count: len(loads) + len(errors) > count, 60, every_s=0.2)
            promote(admin_mlf, name, version, "challenger")
            promote(admin_mlf, name, version, "champion")
        count = len(loads) + len(errors)
        poll("a load after the last promotion", lambda: len(loads) + len(errors) > count, 60, every_s=0.2)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not errors, errors[:3]
    assert len(loads) >= 4
    assert seen == {t["run_id"] for t in trained}


def test_team_isolation_and_idempotent_teams(teams_setup, trained, admin_env, admin_mlf):
    env_a, prefix_b = teams_setup["env_a"], teams_setup["prefix_b"]
    model_b = f"{prefix_b}-xgb"
    out = run_cli(
        admin_env,
        "register",
        trained[0]["model_uri"],
        model_b,
        "--team",
        teams_setup["b"],
        "--file",
        str(teams_setup["file"]),
    )
    assert out.returncode == 0, out.stderr

    # The tool refuses team b's prefix to team a's user, before anything reaches the server.
    out = run_cli(env_a, "register", trained[0]["model_uri"], f"{prefix_b}-other", "--file", str(teams_setup["file"]))
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        f"mlflowctl register: model name '{prefix_b}-other' is outside the prefixes of your team(s) "
        f"({teams_setup['a']}: {teams_setup['prefix_a']}*-ALGORITHM); it belongs to team {teams_setup['b']}"
    )
    with pytest.raises(MlflowException):
        admin_mlf.get_registered_model(f"{prefix_b}-other")

    # The server refuses team a's user on team b's model and experiment (default NO_PERMISSIONS).
    import mlflow

    user_a = mlflow.MlflowClient(tracking_uri=env_a["MLFLOW_TRACKING_URI"])
    exp_b = admin_mlf.get_experiment_by_name(teams_setup["experiment_b"])
    with _as_user(env_a):
        for attempt in (
            lambda: mlflow.register_model(trained[0]["model_uri"], model_b),
            lambda: user_a.set_registered_model_alias(model_b, "champion", "1"),
            lambda: user_a.create_run(exp_b.experiment_id),
            lambda: user_a.set_experiment_tag(exp_b.experiment_id, "owner", "team-a"),
        ):
            with pytest.raises(MlflowException) as exc:
                attempt()
            assert exc.value.error_code == "PERMISSION_DENIED", exc.value.message
        own = user_a.get_experiment_by_name(teams_setup["experiment_a"])
        user_a.set_experiment_tag(own.experiment_id, "checked_by", "test")  # its own experiment works
    assert "owner" not in admin_mlf.get_experiment(exp_b.experiment_id).tags

    # teams converges: apply (may grant on the new model b), then a second run changes nothing.
    first = run_cli(admin_env, "teams", "--file", str(teams_setup["file"]))
    assert first.returncode == 0, first.stderr
    second = run_cli(admin_env, "teams", "--file", str(teams_setup["file"]))
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip().splitlines() == ["teams: no changes"]


@contextlib.contextmanager
def _as_user(env):
    """Switch the process' MLflow credentials (the fluent API reads them from the environment)."""
    with pytest.MonkeyPatch.context() as mp:
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            mp.setenv(key, env[key])
        yield
