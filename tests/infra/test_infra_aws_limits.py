"""What AWS refuses although Pulumi's mocks accept it: name lengths after autonaming, a replica of
an instance with a managed master password, a protected instance that a deploy would replace,
an ECS service attached to a target group no listener forwards to, and more connections than
PostgreSQL allows during a rolling deploy.

Mock boundary: the program runs under Pulumi's mocks (no AWS, no Pulumi CLI). The limits are
AWS's documented ones, stated in infra/policy/rules.py (NAME_LIMITS) and here.
"""

import json

import pytest

import infra.components.compute as compute
from infra.compose_model import placeholder_model
from infra.connection_budget import read_budget
from infra.mockrun import run_stack
from infra.policy.rules import AUTONAME_SUFFIX, NAME_LIMITS

ACM = "arn:aws:acm:us-east-1:123456789012:certificate/x"
STACKS = [
    ("dev", {}),
    ("prod", {}),
    ("dev", {"computeMode": "ecs", "acmCertificateArn": ACM, "ecsMaxTasks": 1}),
    ("prod", {"computeMode": "ecs", "acmCertificateArn": ACM}),
]
STACK_IDS = ["dev-ec2", "prod-ec2", "dev-ecs", "prod-ecs"]


@pytest.fixture(scope="module", params=range(len(STACKS)), ids=STACK_IDS)
def any_run(request):
    stack, overrides = STACKS[request.param]
    return run_stack(stack, overrides)


def test_names_fit_after_autonaming(any_run):
    """An explicit `name` must fit; otherwise Pulumi names it <logical name>-<7 random>."""
    checked = 0
    for r in any_run.resources:
        limit = NAME_LIMITS.get(r.type)
        if limit is None:
            continue
        name = r.inputs.get("name")
        length = len(name) if isinstance(name, str) else len(r.name) + AUTONAME_SUFFIX
        assert length <= limit, f"{r.type} {r.name}: {length} characters > {limit}"
        checked += 1
    assert checked and any(r.type.startswith("aws:lb/") for r in any_run.resources)


def _instance(run):
    return run.one("aws:ec2/instance:Instance")


def test_deploy_inputs_never_replace_the_protected_instance(monkeypatch):
    """A new bundle, image or AMI changes nothing AWS would replace the prod server for: what
    differs is ignored after creation (only a newer AMI, when amiId is not set), and the deploy
    invocation (which re-runs the boot script in place) is what changes."""
    before = run_stack("prod")
    monkeypatch.setattr(compute, "bundle_hash", lambda: "0123456789abcdef")
    after = run_stack("prod", {"mlflowImageTag": "3.17.2-2"}, ami_id="ami-0fedcba9876543210", pushed_tags=["3.17.2-2"])
    old, new = _instance(before), _instance(after)
    assert new.protect and new.inputs["disableApiTermination"] is True
    assert new.inputs.get("userDataReplaceOnChange") is not True
    changed = {k for k in old.inputs.keys() | new.inputs.keys() if old.inputs.get(k) != new.inputs.get(k)}
    assert changed and changed <= set(new.ignore_changes), changed - set(new.ignore_changes)
    deploy = lambda run: next(  # noqa: E731
        r.inputs for r in run.of_type("aws:lambda/invocation:Invocation") if r.name.endswith("-deploy")
    )
    assert deploy(before)["triggers"]["deployment"] != deploy(after)["triggers"]["deployment"]
    assert json.loads(deploy(after)["input"])["instanceId"] == new.name + "-id"


def test_dev_instance_is_not_protected(dev_run):
    assert not _instance(dev_run).protect


def _ecs(overrides=None, **kwargs):
    return run_stack("prod", {"computeMode": "ecs", "acmCertificateArn": ACM, **(overrides or {})}, **kwargs)


def test_ecs_service_depends_on_its_listeners():
    """ECS refuses to attach a service to a target group no load balancer listener uses yet."""
    run = _ecs()
    service = run.one("aws:ecs/service:Service")
    listeners = {r.urn for r in run.of_type("aws:lb/listener:Listener")}
    assert listeners and listeners <= set(service.dependencies)


def _mlflow_container(run):
    task = next(
        r
        for r in run.of_type("aws:ecs/taskDefinition:TaskDefinition")
        if any(c["name"] == "mlflow" for c in json.loads(r.inputs["containerDefinitions"]))
    )
    return next(c for c in json.loads(task.inputs["containerDefinitions"]) if c["name"] == "mlflow")


@pytest.mark.parametrize("max_tasks", [1, 4])
def test_max_connections_cover_a_rolling_deploy(max_tasks):
    """Without PgBouncer every task connects directly: max_connections >= tasks x per-task x 2
    (a rolling deploy runs old and new tasks side by side), counted from the registered task."""
    run = _ecs({"ecsMaxTasks": max_tasks})
    mlflow = _mlflow_container(run)
    model = placeholder_model()
    registered = {"command": mlflow["command"], "environment": {e["name"]: e["value"] for e in mlflow["environment"]}}
    budget = read_budget({"services": {**model["services"], "mlflow": registered}})
    # ECS starts up to deploymentMaximumPercent of the tasks during a deploy (default 200).
    surge = run.one("aws:ecs/service:Service").inputs.get("deploymentMaximumPercent", 200) // 100
    params = {p["name"]: p["value"] for p in run.one("aws:rds/parameterGroup:ParameterGroup").inputs["parameters"]}
    scaling = run.one("aws:appautoscaling/target:Target").inputs
    assert scaling["maxCapacity"] == max_tasks
    assert int(params["max_connections"]) >= budget.max_connections_needed(direct_servers=max_tasks * surge)
