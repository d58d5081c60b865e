"""Run the Pulumi program in-process under Pulumi's mocks (no AWS, no CLI): for tests and `plan`.

Mocks stand in for AWS only: each resource "creates" with its inputs plus plausible computed
outputs (ids, ARNs, endpoints). Nothing here proves AWS would accept the values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pulumi
import yaml
from pulumi.runtime.mocks import MockMonitor

from infra import REPO_ROOT
from infra.compose_model import POSTGRES_PORT

ACCOUNT, REGION = "123456789012", "us-east-1"
DEFAULT_AMI = "ami-0123456789abcdef0"


def project_name() -> str:
    return yaml.safe_load((REPO_ROOT / "Pulumi.yaml").read_text())["name"]


def stack_config(stack: str, overrides: dict | None = None) -> dict[str, str]:
    """Pulumi.yaml defaults + Pulumi.<stack>.yaml values (+ overrides), as the CLI would pass them."""
    project = yaml.safe_load((REPO_ROOT / "Pulumi.yaml").read_text())
    name = project["name"]
    values: dict = {}
    for key, spec in project.get("config", {}).items():
        full = key if ":" in key else f"{name}:{key}"
        if "default" in spec or "value" in spec:
            values[full] = spec.get("value", spec.get("default"))
    stack_file = REPO_ROOT / f"Pulumi.{stack}.yaml"
    values.update(yaml.safe_load(stack_file.read_text()).get("config", {}))
    for key, value in (overrides or {}).items():
        values[key if ":" in key else f"{name}:{key}"] = value
    # The engine hands every value to the program as a string (JSON for non-strings).
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}


def json_or_str(value: str):
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


@dataclass
class MockedResource:
    type: str
    name: str
    inputs: dict
    outputs: dict = field(default_factory=dict)
    # Resource options as the engine receives them (the mocks' new_resource never sees these).
    urn: str = ""
    protect: bool = False
    ignore_changes: list[str] = field(default_factory=list)
    dependencies: list[str] = field(default_factory=list)  # urns, explicit and through inputs


class RecordingMonitor(MockMonitor):
    """The mock monitor, plus the options of each registration (protect, ignoreChanges, deps)."""

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        # Registrations may run on several threads: find this one by its (type, name), unique.
        for r in self.mocks.resources:
            if (r.type, r.name) == (request.type, request.name):
                r.urn, r.protect = response.urn, bool(request.protect)
                r.ignore_changes = list(request.ignoreChanges)
                r.dependencies = list(request.dependencies)
        return response


class InfraMocks(pulumi.runtime.Mocks):
    """Records every resource; answers the few invokes the program makes (and only those)."""

    def __init__(self) -> None:
        self.resources: list[MockedResource] = []
        self.secret_values: list[str] = []
        self.ami_id = DEFAULT_AMI
        self.pushed_tags: list[str] = []  # image tags in the ECR repository (getImages)
        self.calls: list[tuple[str, dict]] = []  # (token, args) of every invoke

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        name, typ = args.name, args.typ
        outputs = dict(args.inputs)
        service = typ.split(":")[1].split("/")[0]
        outputs.setdefault("arn", f"arn:aws:{service}:{REGION}:{ACCOUNT}:{name}")
        resource_id = f"{name}-id"
        if typ == "aws:s3/bucket:Bucket":
            outputs.update(bucket=name, arn=f"arn:aws:s3:::{name}")
            resource_id = name
        elif typ == "aws:rds/instance:Instance":
            address = f"{name}.abc123.{REGION}.rds.amazonaws.com"
            outputs.update(
                address=address,
                endpoint=f"{address}:{POSTGRES_PORT}",
                port=POSTGRES_PORT,
                identifier=name,
                masterUserSecrets=[
                    {
                        "secretArn": f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:rds!db-{name}-AbCdEf",
                        "kmsKeyId": "aws/secretsmanager",
                        "secretStatus": "active",
                    }
                ],
            )
        elif typ == "aws:ecs/taskDefinition:TaskDefinition":
            family = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/{args.inputs['family']}"
            outputs.update(arn=f"{family}:1", arnWithoutRevision=family, revision=1)
        elif typ == "aws:ecs/cluster:Cluster":
            outputs["arn"] = f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/{name}"
        elif typ == "aws:secretsmanager/secret:Secret":
            outputs["arn"] = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{name}-AbCdEf"
        elif typ == "aws:ecr/repository:Repository":
            outputs.update(repositoryUrl=f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{name}", name=name)
        elif typ == "aws:lb/loadBalancer:LoadBalancer":
            outputs["dnsName"] = f"{name}-1234.{REGION}.elb.amazonaws.com"
        elif typ == "aws:iam/role:Role":
            outputs.update(arn=f"arn:aws:iam::{ACCOUNT}:role/{name}", name=name)
        elif typ == "random:index/randomId:RandomId":
            outputs["hex"] = f"{len(self.resources):08x}"
        elif typ == "random:index/randomPassword:RandomPassword":
            # Distinct, recognisable values so tests can prove none leaks into outputs or user-data.
            outputs["result"] = f"MockSecret{len(self.secret_values):02d}x{name.replace('-', '')}"
            self.secret_values.append(outputs["result"])
        if typ in (
            "aws:ecs/cluster:Cluster",
            "aws:ecs/service:Service",
            "aws:rds/subnetGroup:SubnetGroup",
            "aws:rds/parameterGroup:ParameterGroup",
            "aws:iam/instanceProfile:InstanceProfile",
            "aws:cloudwatch/logGroup:LogGroup",
        ):
            outputs.setdefault("name", name)
        self.resources.append(MockedResource(typ, name, dict(args.inputs), outputs))
        return resource_id, outputs

    def call(self, args: pulumi.runtime.MockCallArgs):
        self.calls.append((args.token, dict(args.args)))
        if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            return {
                "names": [f"{REGION}a", f"{REGION}b", f"{REGION}c"],
                "zoneIds": ["use1-az1", "use1-az2", "use1-az4"],
                "id": REGION,
            }
        if args.token == "aws:ec2/getAmi:getAmi":
            return {
                "id": self.ami_id,
                "imageId": self.ami_id,
                "architecture": "x86_64",
                "name": "al2023-ami-2023.6.20250101.0-x86_64",
            }
        if args.token == "aws:ecr/getImages:getImages":
            return {
                "id": args.args["repositoryName"],
                "repositoryName": args.args["repositoryName"],
                "imageIds": [
                    {"imageDigest": f"sha256:{i:064x}", "imageTag": tag} for i, tag in enumerate(self.pushed_tags)
                ],
            }
        # A missing invoke mock would otherwise return None silently.
        raise NotImplementedError(f"no mock for invoke {args.token}")


MOCKS = InfraMocks()
_configured = False


def ensure_mocks() -> InfraMocks:
    """set_mocks once per process (Pulumi keeps one global runtime)."""
    global _configured
    if not _configured:
        pulumi.runtime.set_mocks(
            MOCKS, project=project_name(), stack="mock", preview=False, monitor=RecordingMonitor(MOCKS)
        )
        _configured = True
    return MOCKS


@dataclass
class MockRun:
    resources: list[MockedResource]
    outputs: dict  # name -> (value, is_secret)
    secret_values: list[str]

    def of_type(self, typ: str) -> list[MockedResource]:
        return [r for r in self.resources if r.type == typ]

    def one(self, typ: str) -> MockedResource:
        found = self.of_type(typ)
        assert len(found) == 1, f"expected one {typ}, found {[r.name for r in found]}"
        return found[0]

    def boot_script(self) -> str:
        """The EC2 boot script as uploaded beside the bundle (user-data and SSM fetch it)."""
        from infra.userdata import BOOT_SCRIPT_OBJECT

        (found,) = [
            r.inputs["content"]
            for r in self.of_type("aws:s3/bucketObjectv2:BucketObjectv2")
            if r.inputs["key"].endswith(BOOT_SCRIPT_OBJECT)
        ]
        return found


def run_stack(
    stack: str,
    overrides: dict | None = None,
    *,
    ami_id: str = DEFAULT_AMI,
    pushed_tags: list[str] | None = None,
    plaintext: bool = False,
) -> MockRun:
    """Build the program for a stack under mocks, drive the loop, return what it registered.
    ami_id: what the AMI lookup answers. pushed_tags: image tags in ECR (default: the configured
    mlflowImageTag, i.e. the image was pushed). Secret config keys that are set are handed over as
    `pulumi config set --secret` leaves them (plaintext: as a plain `config set` does), and their
    values count as secret values (MockRun.secret_values)."""
    from infra.config import SECRET_CONFIG, StackConfig
    from infra.program import build

    mocks = ensure_mocks()
    mocks.resources.clear()
    mocks.secret_values.clear()
    mocks.calls.clear()
    config = stack_config(stack, overrides)
    mocks.ami_id = ami_id
    mocks.pushed_tags = (
        pushed_tags if pushed_tags is not None else [json_or_str(config[f"{project_name()}:mlflowImageTag"])]
    )
    secret_keys = [f"{project_name()}:{key}" for key in SECRET_CONFIG if config.get(f"{project_name()}:{key}")]
    mocks.secret_values.extend(config[key] for key in secret_keys)
    pulumi.runtime.set_all_config(config, [] if plaintext else secret_keys)
    resolved: dict = {}

    @pulumi.runtime.test
    def program():
        outputs = build(StackConfig.load())

        async def collect():
            for key, value in outputs.items():
                out = pulumi.Output.from_input(value)
                resolved[key] = (await out.future(), await out.is_secret())

        return pulumi.Output.from_input(collect())

    program()
    return MockRun(list(mocks.resources), resolved, list(mocks.secret_values))
