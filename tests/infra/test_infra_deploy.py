"""Day one and day-N deploys, one source for the mlflow service, operator needs.

Mock boundary: the program runs under Pulumi's mocks (no AWS, no Pulumi CLI). The ECS container
definitions are compared with the model the real Compose binary resolves.
"""

import json

import pytest

from infra.bundle import EC2_CREDENTIALS_ENV
from infra.components.scale_out import carried_mounts
from infra.compose_model import aws_env, derive_container, on_rds, resolve
from infra.migrate_runner import handler
from infra.mockrun import run_stack

ACM = "arn:aws:acm:us-east-1:123456789012:certificate/x"
DB_HOST = "mlflow-prod-db.abc123.us-east-1.rds.amazonaws.com"


def _ecs(overrides=None, **kwargs):
    return run_stack("prod", {"computeMode": "ecs", "acmCertificateArn": ACM, **(overrides or {})}, **kwargs)


def _containers(run, family_suffix=""):
    task = next(
        r
        for r in run.of_type("aws:ecs/taskDefinition:TaskDefinition")
        if r.inputs["family"] == f"mlflow-prod-service{family_suffix}"
    )
    return {c["name"]: c for c in json.loads(task.inputs["containerDefinitions"])}


# --- Day one (item 6) ----------------------------------------------------------------------


def test_no_task_runs_before_the_image_is_pushed():
    empty = _ecs(pushed_tags=[])
    assert empty.one("aws:ecs/service:Service").inputs["desiredCount"] == 0
    scaling = empty.one("aws:appautoscaling/target:Target").inputs
    assert scaling["minCapacity"] == scaling["maxCapacity"] == 0
    assert json.loads(empty.one("aws:lambda/invocation:Invocation").inputs["input"])["imagePresent"] is False
    pushed = _ecs()
    assert pushed.one("aws:appautoscaling/target:Target").inputs["minCapacity"] == 1
    # The next `pulumi up` after the push re-runs the migration (its trigger changed).
    trigger = lambda run: run.one("aws:lambda/invocation:Invocation").inputs["triggers"]  # noqa: E731
    assert trigger(empty) != trigger(pushed)


def test_ec2_boot_waits_for_the_image():
    run = run_stack("dev", pushed_tags=[])
    assert "readonly IMAGE_PRESENT=false" in run.boot_script()
    assert "readonly IMAGE_PRESENT=true" in run_stack("dev").boot_script()


def test_migrations_run_once_per_deploy_as_their_own_task():
    run = _ecs()
    assert "migrate" not in _containers(run)  # never inside each serving task
    migrate = _containers(run, "-migrate")["migrate"]
    assert migrate["essential"] is True
    invocation = run.one("aws:lambda/invocation:Invocation")
    task = next(
        r for r in run.of_type("aws:ecs/taskDefinition:TaskDefinition") if r.inputs["family"].endswith("-migrate")
    )
    assert json.loads(invocation.inputs["input"])["taskDefinition"] == task.outputs["arn"]
    assert invocation.inputs["triggers"]["taskDefinition"] == task.outputs["arn"]
    assert invocation.urn in run.one("aws:ecs/service:Service").dependencies


class FakeEcs:
    def __init__(self, exit_code):
        self.exit_code, self.calls = exit_code, []

    def run_task(self, **kw):
        self.calls.append(("run_task", kw))
        return {"tasks": [{"taskArn": "arn:task/1"}], "failures": []}

    def get_waiter(self, name):
        assert name == "tasks_stopped"
        return type("W", (), {"wait": lambda _, **kw: self.calls.append(("wait", kw))})()

    def describe_tasks(self, **kw):
        return {
            "tasks": [
                {
                    "containers": [{"name": "migrate", "exitCode": self.exit_code}],
                    "stoppedReason": "Essential container in task exited",
                }
            ]
        }


EVENT = {"cluster": "c", "taskDefinition": "td", "subnets": ["s"], "securityGroups": ["g"], "imagePresent": True}


def test_migrate_runner_waits_and_reports_failure():
    ok = FakeEcs(0)
    assert handler(EVENT, None, ecs=ok)["exitCodes"] == {"migrate": 0}
    assert [c[0] for c in ok.calls] == ["run_task", "wait"]
    assert ok.calls[0][1]["networkConfiguration"]["awsvpcConfiguration"]["assignPublicIp"] == "DISABLED"
    with pytest.raises(RuntimeError, match="migrate failed"):
        handler(EVENT, None, ecs=FakeEcs(1))
    assert handler({**EVENT, "imagePresent": False}, None, ecs=FakeEcs(1))["skipped"]


# --- One source for the mlflow service (item 7) --------------------------------------------


@pytest.fixture(scope="module")
def ecs_run_and_model():
    run = _ecs()
    bucket = run.one("aws:s3/bucket:Bucket").outputs["bucket"]
    image = _containers(run)["mlflow"]["image"]
    model = resolve(
        aws_env(public_host="mlflow.example.com", bucket=bucket, region="us-east-1", db_host=DB_HOST, image=image)
    )
    return run, model


def test_ecs_mlflow_container_is_the_compose_service(ecs_run_and_model):
    """Command and every environment variable of the compose `mlflow` service reach ECS:
    secrets as Secrets Manager references, database URIs pointed at RDS, empty ones left out."""
    run, model = ecs_run_and_model
    service, container = model["services"]["mlflow"], _containers(run)["mlflow"]
    assert container["command"] == service["command"]
    env = {e["name"]: e["value"] for e in container["environment"]}
    secrets = {s["name"] for s in container["secrets"]}
    for key, value in service["environment"].items():
        if key in EC2_CREDENTIALS_ENV:  # the EC2 host's artifact credentials: a task has its task role
            assert key not in env, key
        elif not value:
            assert key not in env and key not in secrets, key
        elif value.startswith("secret-ref-"):
            assert key in secrets, key
        else:
            assert env[key] == on_rds(value.replace("$$", "$"), DB_HOST, set(model["services"])), key
    assert "pgbouncer" not in json.dumps(container)  # no PgBouncer on ECS
    assert container["healthCheck"]["command"] == service["healthcheck"]["test"]


def test_ecs_carries_the_bind_mounted_files(ecs_run_and_model):
    run, model = ecs_run_and_model
    containers = _containers(run)
    files = json.loads(next(e["value"] for e in containers["config"]["environment"] if e["name"] == "CONFIG_FILES"))
    targets = {target for _, target in carried_mounts(model["services"]["mlflow"])}
    assert targets and "/run/aws-artifacts" not in targets  # made on the EC2 host at boot
    assert set(files) == targets
    mounted = {m["containerPath"] for m in containers["mlflow"]["mountPoints"]}
    assert all(any(t.startswith(d + "/") for d in mounted) for t in targets)
    assert {"containerName": "config", "condition": "SUCCESS"} in containers["mlflow"]["dependsOn"]
    assert all(
        f"@{DB_HOST}:5432/" in uri
        for uri in (line for text in files.values() for line in text.splitlines() if "postgresql" in line)
    )


def test_derivation_is_generic():
    """Whatever the compose service says (another entrypoint, new variables, options) is what ECS
    gets: the derivation knows no variable by name."""
    model = {
        "services": {
            "db": {},
            "app": {
                "command": ["serve", "--port", "8080"],
                "entrypoint": ["/entry.sh"],
                "user": "10001",
                "environment": {
                    "NEW_OPTION": "--flag 1 $$HOME",
                    "EMPTY": "",
                    "PASSWORD": "secret-ref-X",
                    "URI": "postgresql+psycopg2://u@db:6432/name?x=1",
                    "OTHER": "http://db:1",
                    "PLUGIN": "my-postgresql://u@db:6432/t",
                },
                "healthcheck": {
                    "test": ["CMD", "true"],
                    "interval": "1m30s",
                    "timeout": "5s",
                    "retries": 3,
                    "start_period": "10s",
                },
            },
        }
    }
    c = derive_container(model, "app", image="img", secrets={"X": "arn:x::"}, db_host="rds")
    assert c["command"] == ["serve", "--port", "8080"] and c["entryPoint"] == ["/entry.sh"]
    assert c["user"] == "10001"
    env = {e["name"]: e["value"] for e in c["environment"]}
    assert env == {
        "NEW_OPTION": "--flag 1 $HOME",
        "OTHER": "http://db:1",
        "URI": "postgresql+psycopg2://u@rds:5432/name?x=1&sslmode=require",
        "PLUGIN": "my-postgresql://u@rds:5432/t?sslmode=require",
    }
    assert c["secrets"] == [{"name": "PASSWORD", "valueFrom": "arn:x::"}]
    assert c["healthCheck"] == {
        "command": ["CMD", "true"],
        "interval": 90,
        "timeout": 5,
        "retries": 3,
        "startPeriod": 10,
    }
    with pytest.raises(ValueError, match="whole values"):
        derive_container(
            {"services": {"a": {"environment": {"U": "x:secret-ref-X"}}}},
            "a",
            image="i",
            secrets={"X": "y"},
            db_host="h",
        )


def test_parameter_group_is_sized_for_the_instance_class(dev_run, prod_run):
    """dev runs db.t4g.micro (1 GiB), prod db.t4g.medium (4 GiB): 4x the memory settings."""

    def shared_buffers(run):
        params = run.one("aws:rds/parameterGroup:ParameterGroup").inputs["parameters"]
        return int(next(p["value"] for p in params if p["name"] == "shared_buffers"))

    classes = [run.one("aws:rds/instance:Instance").inputs["instanceClass"] for run in (dev_run, prod_run)]
    assert classes == ["db.t4g.micro", "db.t4g.medium"]
    assert shared_buffers(prod_run) == 4 * shared_buffers(dev_run)


def test_min_tasks_reaches_autoscaling():
    run = _ecs({"ecsMinTasks": 2})
    assert run.one("aws:appautoscaling/target:Target").inputs["minCapacity"] == 2


# --- Operators (item 8) ----------------------------------------------------------------------


def test_instance_id_output_for_the_ssm_command(stack_run):
    instance = stack_run.one("aws:ec2/instance:Instance")
    assert stack_run.outputs["instance_id"] == (instance.name + "-id", False)


def test_prod_requires_a_real_certificate():
    with pytest.raises(ValueError, match="tlsCertificateSecretArn"):
        run_stack("prod", {"tlsCertificateSecretArn": ""})
    assert "readonly TLS_SECRET_ARN=arn:aws:secretsmanager:" in run_stack("prod").boot_script()


def test_artifacts_reach_s3_through_the_gateway_endpoint(stack_run):
    endpoint = stack_run.one("aws:ec2/vpcEndpoint:VpcEndpoint").inputs
    private_rt = next(r for r in stack_run.of_type("aws:ec2/routeTable:RouteTable") if r.name.endswith("-private"))
    assert endpoint["vpcEndpointType"] == "Gateway" and endpoint["serviceName"].endswith(".s3")
    assert endpoint["routeTableIds"] == [private_rt.name + "-id"]


def test_alarms_notify_the_topic(stack_run):
    topic = stack_run.one("aws:sns/topic:Topic").outputs["arn"]
    alarms = stack_run.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")
    namespaces = {a.inputs["namespace"] for a in alarms}
    assert {"AWS/RDS", "AWS/EC2", "AWS/NetworkELB"} <= namespaces
    assert all(topic in a.inputs["alarmActions"] for a in alarms)
    recover = next(a for a in alarms if a.inputs["namespace"] == "AWS/EC2")
    assert any(x.endswith(":ec2:recover") for x in recover.inputs["alarmActions"])
    assert stack_run.outputs["alarm_topic_arn"][0] == topic


def test_dev_registry_can_be_destroyed_with_its_images(dev_run, prod_run):
    assert dev_run.one("aws:ecr/repository:Repository").inputs["forceDelete"] is True
    assert prod_run.one("aws:ecr/repository:Repository").inputs.get("forceDelete", False) is False
