"""The connection budget holds for the repository's files, and breaks, naming the inequality, when
any one of its numbers alone moves the wrong way (in the compose model as the real Compose binary
resolves it, or in temporary copies of pgbouncer/ and postgres/)."""

import copy
import re
import shutil
from pathlib import Path

import pytest

from infra.compose_model import placeholder_model
from infra.connection_budget import BudgetError, connection_budget, read_budget

ROOT = Path(__file__).resolve().parents[2]
MODEL = placeholder_model()


@pytest.fixture
def root(tmp_path) -> Path:
    for directory in ("pgbouncer", "postgres"):
        shutil.copytree(ROOT / directory, tmp_path / directory)
    return tmp_path


def test_budget_holds_for_the_repository():
    connection_budget()  # BudgetError names each inequality that does not hold


# Each number: where it lives, how to read and set it.
def _service(model):
    return model["services"]["mlflow"]


def _command_value(flag):
    def get(model):
        command = _service(model)["command"]
        return int(command[command.index(flag) + 1])

    def put(model, value):
        command = _service(model)["command"]
        command[command.index(flag) + 1] = str(value)

    return get, put


def _threads():
    pattern = r"--threads[ =](\d+)"

    def get(model):
        return int(re.search(pattern, _service(model)["environment"]["MLFLOW_GUNICORN_OPTS"])[1])

    def put(model, value):
        env = _service(model)["environment"]
        env["MLFLOW_GUNICORN_OPTS"] = re.sub(pattern, f"--threads {value}", env["MLFLOW_GUNICORN_OPTS"])

    return get, put


def _env(name):
    return (
        lambda model: int(_service(model)["environment"][name]),
        lambda model, value: _service(model)["environment"].__setitem__(name, str(value)),
    )


def _nofile():
    def get(model):
        return model["services"]["pgbouncer"]["ulimits"]["nofile"]["soft"]

    def put(model, value):
        model["services"]["pgbouncer"]["ulimits"]["nofile"]["soft"] = value

    return get, put


MODEL_NUMBERS = {
    "workers": (_command_value("--workers"), +1, "PgBouncer pool"),
    "threads": (_threads(), +1, "workers x (pool_size + max_overflow)"),
    "pool_size": (_env("MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"), -1, "workers x (pool_size + max_overflow)"),
    "max_overflow": (_env("MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"), -1, "workers x (pool_size + max_overflow)"),
    "pgbouncer nofile": (_nofile(), -1, "nofile"),
}
FILE_NUMBERS = {
    "default_pool_size down": ("pgbouncer/pgbouncer.ini.template", "default_pool_size", -1, "PgBouncer pool"),
    "default_pool_size up": ("pgbouncer/pgbouncer.ini.template", "default_pool_size", +1, "<= max_connections"),
    "reserve_pool_size": ("pgbouncer/pgbouncer.ini.template", "reserve_pool_size", +1, "<= max_connections"),
    "max_client_conn": ("pgbouncer/pgbouncer.ini.template", "max_client_conn", -1, "max_client_conn"),
    "max_connections": ("postgres/postgresql.conf", "max_connections", -1, "<= max_connections"),
}


def steps(current: int, direction: int) -> list[int]:
    """Values in the breaking direction: one step, then doubling (up) or halving (down) to 1."""
    if direction > 0:
        return [current + 1] + [current * 2**k for k in range(1, 8)]
    return [current - 1] + [v for v in (current // 2**k for k in range(1, 13)) if v >= 1]


def first_failure(values, check) -> tuple[int, str]:
    for value in values:
        try:
            check(value)
        except BudgetError as error:
            return value, str(error)
    pytest.fail(f"the budget still holds at {values[-1]}")


@pytest.mark.parametrize("name", MODEL_NUMBERS)
def test_a_model_number_alone_breaks_the_budget(name):
    (get, put), direction, rule = MODEL_NUMBERS[name]

    def check(value):
        model = copy.deepcopy(MODEL)
        put(model, value)
        connection_budget(model)

    value, message = first_failure(steps(get(MODEL), direction), check)
    assert rule in message, message
    model = copy.deepcopy(MODEL)
    put(model, value)
    assert getattr(read_budget(model), name.replace("pgbouncer ", "pgbouncer_")) == value


@pytest.mark.parametrize("name", FILE_NUMBERS)
def test_a_file_number_alone_breaks_the_budget(name, root):
    relative, key, direction, rule = FILE_NUMBERS[name]
    path = root / relative
    text = path.read_text()
    line = re.compile(rf"^{key}\s*=\s*(\d+)", re.MULTILINE)

    def check(value):
        path.write_text(line.sub(f"{key} = {value}", text, count=1))
        connection_budget(MODEL, root)

    connection_budget(MODEL, root)  # the unchanged copy holds
    _, message = first_failure(steps(int(line.search(text)[1]), direction), check)
    assert rule in message, message


@pytest.mark.parametrize(
    "command, env, workers, threads",
    [
        (["--workers=3", "--gunicorn-opts", "--threads 5"], {}, 3, 5),
        (["-w", "3"], {"MLFLOW_GUNICORN_OPTS": "--timeout 60", "GUNICORN_CMD_ARGS": "--threads=6"}, 3, 6),
        (
            [],
            {"MLFLOW_WORKERS": "2", "MLFLOW_GUNICORN_OPTS": "--threads 3", "GUNICORN_CMD_ARGS": "--threads 9"},
            2,
            3,
        ),  # gunicorn's command line wins
        ([], {"MLFLOW_GUNICORN_OPTS": "--timeout 60"}, 4, 1),  # MLflow's and gunicorn's defaults
    ],
)
def test_workers_and_threads_are_read_wherever_they_are_set(command, env, workers, threads):
    model = {
        "services": {**MODEL["services"], "mlflow": {"command": ["mlflow", "server", *command], "environment": env}}
    }
    budget = read_budget(model)
    assert (budget.workers, budget.threads) == (workers, threads)


def test_a_server_without_gunicorn_is_refused():
    model = {"services": {**MODEL["services"], "mlflow": {"command": ["mlflow", "server"]}}}
    with pytest.raises(BudgetError, match="gunicorn"):
        read_budget(model)
