"""Stack config: every key declared once in Pulumi.yaml (type, default), read with its type, listed
in infra/README.md, and fed to the components without a second default.

Mock boundary: values reach the program through Pulumi's own `pulumi.Config`, set the way the
engine hands them over (strings, JSON for non-strings) under Pulumi's mocks; no Pulumi CLI.
"""

import ast
import json
import re
from dataclasses import MISSING, fields
from pathlib import Path

import pulumi
import pytest
import yaml

import infra.program
from infra.config import GETTERS, SECRET_CONFIG, StackConfig, config_key, declared_config
from infra.mockrun import project_name, run_stack, stack_config

REPO_ROOT = Path(__file__).resolve().parents[2]
# Keys the checks in StackConfig refuse empty: they keep the dev stack's values.
# Keys StackConfig refuses empty or zero: a mode, who may connect, a VPC range, at least one task.
REQUIRED_NON_EMPTY = {"environment", "computeMode", "authMode", "allowedCidrs", "vpcCidr", "ecsMinTasks", "ecsMaxTasks"}
FALSY = {"string": "", "integer": 0, "boolean": False, "array": []}


def project_keys() -> set[str]:
    return set(declared_config())


def field_keys() -> set[str]:
    return {config_key(f.name) for f in fields(StackConfig) if f.name != "region"}


def readme_keys() -> set[str]:
    text = (REPO_ROOT / "infra" / "README.md").read_text()
    table = text.split("\n## Config keys", 1)[1].split("\n## ", 1)[0]
    return {
        key for row in table.splitlines() if row.startswith("| `") for key in re.findall(r"`(\w+)`", row.split("|")[1])
    }


def test_every_pulumi_yaml_key_is_a_field_and_a_readme_row():
    assert project_keys() - field_keys() == set(), "declared in Pulumi.yaml, not read by StackConfig"
    assert field_keys() - project_keys() == set(), "read by StackConfig, not declared in Pulumi.yaml"
    assert project_keys() - readme_keys() == set(), "declared in Pulumi.yaml, no row in infra/README.md"
    assert readme_keys() - project_keys() == set(), "a row in infra/README.md, not in Pulumi.yaml"


def test_every_field_has_its_declared_type_and_no_default_of_its_own():
    declared = declared_config()
    for f in fields(StackConfig):
        if f.name == "region":
            continue
        # A secret comes back as a secret Output (or None when unset).
        expected = (
            "pulumi.Output"
            if config_key(f.name) in SECRET_CONFIG
            else GETTERS[declared[config_key(f.name)]["type"]][1].__name__
        )
        assert expected == str(f.type).split("[")[0], f.name
        assert f.default is MISSING and f.default_factory is MISSING, (
            f"{f.name} has a default in config.py: defaults live in Pulumi.yaml only"
        )


def test_stack_files_set_only_declared_keys():
    name = project_name()
    allowed = {f"{name}:{key}" for key in project_keys()} | {"aws:region"}
    for stack_file in sorted(REPO_ROOT.glob("Pulumi.*.yaml")):
        keys = set(yaml.safe_load(stack_file.read_text())["config"])
        assert keys - allowed == set(), f"{stack_file.name} sets undeclared keys"


def test_configured_zero_false_empty_and_empty_list_round_trip():
    """Every key set to its type's falsy value comes back as that value, not as the default."""
    name, declared = project_name(), declared_config()
    dev = stack_config("dev")
    values = {
        key: FALSY[spec["type"]]
        for key, spec in declared.items()
        if key not in REQUIRED_NON_EMPTY and key not in SECRET_CONFIG  # an empty secret is None: see below
    }
    # The engine hands every value over as a string (JSON for non-strings).
    pulumi.runtime.set_all_config(
        {**dev, **{f"{name}:{key}": v if isinstance(v, str) else json.dumps(v) for key, v in values.items()}}
    )
    cfg = StackConfig.load()
    for key, value in values.items():
        field = re.sub(r"[A-Z]", lambda m: "_" + m.group(0).lower(), key)
        assert getattr(cfg, field) == value and type(getattr(cfg, field)) is type(value), key
    assert [k for k, v in values.items() if v != declared[k].get("default")], "no value differs from its default"


def test_unset_keys_take_their_pulumi_yaml_default():
    name, declared = project_name(), declared_config()
    given = {f"{name}:{key}": stack_config("dev")[f"{name}:{key}"] for key in REQUIRED_NON_EMPTY | {"publicHost"}}
    pulumi.runtime.set_all_config({**given, "aws:region": "us-east-1"})
    cfg = StackConfig.load()
    for f in fields(StackConfig):
        key = config_key(f.name)
        if key in SECRET_CONFIG:
            assert getattr(cfg, f.name) is None and declared[key]["default"] == "", key
        elif f"{name}:{key}" not in given and f.name != "region":
            assert getattr(cfg, f.name) == declared[key]["default"], key


def test_components_take_configured_values_without_a_default_of_their_own():
    """A component argument that program.py fills from a StackConfig field has no default: the
    default lives in Pulumi.yaml only, and a second one would silently disagree."""
    config_fields = {f.name for f in fields(StackConfig)}
    tree = ast.parse(Path(infra.program.__file__).read_text())
    checked = 0
    for call in ast.walk(tree):
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id.endswith("Args")):
            continue
        args_class = getattr(infra.program, call.func.id)
        arg_fields = {f.name: f for f in fields(args_class)}
        for keyword in call.keywords:
            if any(
                isinstance(n, ast.Attribute)
                and isinstance(n.value, ast.Name)
                and n.value.id == "cfg"
                and n.attr in config_fields
                for n in ast.walk(keyword.value)
            ):
                f = arg_fields[keyword.arg]
                assert f.default is MISSING and f.default_factory is MISSING, (
                    f"{call.func.id}.{f.name} has a default; it comes from Pulumi.yaml"
                )
                checked += 1
    assert checked >= len(config_fields) // 2, checked


OIDC = {
    "authMode": "oidc",
    "oidcIssuer": "https://idp.example.com/realms/mlflow",
    "oidcClientId": "mlflow-prod",
    "oidcClientSecret": "Provider-Given-Client-Secret-1",
}


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"authMode": "sso"}, "authMode must be one of"),
        ({**OIDC, "oidcIssuer": ""}, "authMode oidc needs oidcIssuer"),
        ({**OIDC, "oidcClientId": ""}, "authMode oidc needs oidcClientId"),
        ({**OIDC, "oidcClientSecret": ""}, "authMode oidc needs oidcClientSecret"),
        ({"authMode": "oidc"}, "needs oidcIssuer, oidcClientId, oidcClientSecret"),
        ({**OIDC, "oidcIssuer": "http://idp.localhost:9000"}, "https:// issuer URL"),
        ({**OIDC, "oidcIssuer": "https:///realms/x"}, "https:// issuer URL"),
        ({**OIDC, "oidcIssuer": "https://idp.example.com/?x=1"}, "https:// issuer URL"),
        ({**OIDC, "oidcGroupName": "team-a\nAUTH_MODE=basic"}, "one line each"),
    ],
)
def test_oidc_mode_refuses_what_cannot_work(overrides, message):
    """Under mocks: the message `pulumi up` would stop with, before any resource is created."""
    with pytest.raises(ValueError, match=message):
        run_stack("prod", overrides)


def test_a_client_secret_set_in_plain_text_is_refused():
    """`pulumi config set oidcClientSecret X` (without --secret) leaves it readable in
    Pulumi.<stack>.yaml. Under mocks the engine's list of secret keys is handed over as the
    language host hands it (pulumi.runtime.set_all_config); not run with the Pulumi CLI here."""
    with pytest.raises(ValueError, match="pulumi config set --secret oidcClientSecret"):
        run_stack("dev", OIDC, plaintext=True)
    run_stack("dev", OIDC)  # the same value set with --secret
