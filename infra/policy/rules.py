"""CrossGuard rules for the MLflow stack, as plain functions over (type, props) plus the
pulumi_policy wrappers. Props use the engine's camelCase names (what `--policy-pack` sees).
The PolicyPack itself is built in __main__.py (constructing it starts a gRPC server)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence

from pulumi_policy import (
    EnforcementLevel,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UnknownValueError

REQUIRED_TAGS = ("project", "environment", "owner", "managed-by")
# Ports never open to the whole internet: SSH, RDP, PostgreSQL, PgBouncer.
SENSITIVE_PORTS = (22, 3389, 5432, 6432)
OPEN_CIDRS = ("0.0.0.0/0", "::/0")
# AWS accepts only "*" as the resource for these (no resource-level permissions).
WILDCARD_ONLY_ACTIONS = frozenset(
    {"ecr:GetAuthorizationToken", "ssm:DescribeInstanceInformation", "ssm:ListCommandInvocations"}
)
# Types we create that take `tags` (component and non-taggable types are left out).
TAGGABLE_TYPES = frozenset(
    {
        "aws:ec2/vpc:Vpc",
        "aws:ec2/subnet:Subnet",
        "aws:ec2/internetGateway:InternetGateway",
        "aws:ec2/routeTable:RouteTable",
        "aws:ec2/eip:Eip",
        "aws:ec2/natGateway:NatGateway",
        "aws:ec2/securityGroup:SecurityGroup",
        "aws:ec2/instance:Instance",
        "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
        "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule",
        "aws:s3/bucket:Bucket",
        "aws:s3/bucketObjectv2:BucketObjectv2",
        "aws:kms/key:Key",
        "aws:rds/instance:Instance",
        "aws:rds/subnetGroup:SubnetGroup",
        "aws:rds/parameterGroup:ParameterGroup",
        "aws:secretsmanager/secret:Secret",
        "aws:ecr/repository:Repository",
        "aws:iam/role:Role",
        "aws:iam/instanceProfile:InstanceProfile",
        "aws:lb/loadBalancer:LoadBalancer",
        "aws:lb/targetGroup:TargetGroup",
        "aws:lb/listener:Listener",
        "aws:ecs/cluster:Cluster",
        "aws:ecs/service:Service",
        "aws:ecs/taskDefinition:TaskDefinition",
        "aws:cloudwatch/logGroup:LogGroup",
        "aws:appautoscaling/target:Target",
        "aws:ec2/vpcEndpoint:VpcEndpoint",
        "aws:ssm/document:Document",
        "aws:ssm/association:Association",
        "aws:cloudwatch/metricAlarm:MetricAlarm",
        "aws:sns/topic:Topic",
        "aws:lambda/function:Function",
        "aws:lb/listenerRule:ListenerRule",
        "aws:wafv2/webAcl:WebAcl",
    }
)
# AWS's length limits on the `name` of each type we create (`pulumi preview` passes the
# provider's autoname, which is the logical name plus "-" and 7 random characters).
NAME_LIMITS = {
    "aws:lb/loadBalancer:LoadBalancer": 32,
    "aws:lb/targetGroup:TargetGroup": 32,
    "aws:iam/role:Role": 64,
    "aws:iam/instanceProfile:InstanceProfile": 128,
    "aws:iam/rolePolicy:RolePolicy": 128,
    "aws:lambda/function:Function": 64,
    "aws:s3/bucket:Bucket": 63,
    "aws:rds/instance:Instance": 63,
    "aws:rds/parameterGroup:ParameterGroup": 255,
    "aws:rds/subnetGroup:SubnetGroup": 255,
    "aws:ec2/securityGroup:SecurityGroup": 255,
    "aws:ecs/cluster:Cluster": 255,
    "aws:ecs/service:Service": 255,
    "aws:ecr/repository:Repository": 256,
    "aws:secretsmanager/secret:Secret": 512,
    "aws:cloudwatch/logGroup:LogGroup": 512,
    "aws:cloudwatch/metricAlarm:MetricAlarm": 255,
    "aws:sns/topic:Topic": 256,
    "aws:ssm/document:Document": 128,
    "aws:ssm/association:Association": 128,
}
AUTONAME_SUFFIX = 8  # "-" + 7 random characters

Check = Callable[[str, dict], list[str]]  # (type, props) -> violation messages


def _env(props: dict) -> str:
    return (props.get("tags") or {}).get("environment", "")


def s3_encryption(typ: str, props: dict) -> list[str]:
    if typ != "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration":
        return []
    algos = [
        ((r.get("applyServerSideEncryptionByDefault") or {}).get("sseAlgorithm")) for r in props.get("rules") or []
    ]
    if not algos or any(a not in ("aws:kms", "AES256", "aws:kms:dsse") for a in algos):
        return [f"bucket default encryption must be SSE-KMS or SSE-S3, got {algos}"]
    return []


def s3_no_public_access(typ: str, props: dict) -> list[str]:
    if typ == "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock":
        off = [
            k
            for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
            if props.get(k) is not True
        ]
        return [f"public access block must enable {off}"] if off else []
    if typ == "aws:s3/bucketOwnershipControls:BucketOwnershipControls":
        owner = (props.get("rule") or {}).get("objectOwnership")
        return [] if owner == "BucketOwnerEnforced" else [f"object ownership must be BucketOwnerEnforced, got {owner}"]
    if typ == "aws:s3/bucket:Bucket":
        out = []
        if props.get("acl") in ("public-read", "public-read-write"):
            out.append(f"bucket ACL {props['acl']} is public")
        if props.get("forceDestroy") and _env(props) != "dev":
            out.append("forceDestroy is only allowed on dev buckets")
        return out
    return []


def rds_hardened(typ: str, props: dict) -> list[str]:
    if typ != "aws:rds/instance:Instance":
        return []
    out = []
    if props.get("publiclyAccessible"):
        out.append("database must not be publicly accessible")
    if props.get("storageEncrypted") is not True:
        out.append("database storage must be encrypted")
    backups = props.get("backupRetentionPeriod") or 0
    if backups < (7 if _env(props) == "prod" else 1):
        out.append(f"automated backups too short: {backups} days")
    if _env(props) == "prod":
        for key, want in (("deletionProtection", True), ("multiAz", True), ("skipFinalSnapshot", False)):
            if bool(props.get(key)) is not want:
                out.append(f"prod database needs {key}={want}")
    if not props.get("manageMasterUserPassword") and not props.get("password"):
        out.append("master password must be managed by Secrets Manager or set from a secret")
    return out


def _covers(from_port, to_port, protocol) -> list[int]:
    if str(protocol) in ("-1", "all"):
        return list(SENSITIVE_PORTS)
    lo, hi = int(from_port or 0), int(to_port if to_port is not None else 65535)
    return [p for p in SENSITIVE_PORTS if lo <= p <= hi]


def no_open_sensitive_ports(typ: str, props: dict) -> list[str]:
    rules = []
    if typ == "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule":
        rules = [
            (
                props.get("fromPort"),
                props.get("toPort"),
                props.get("ipProtocol"),
                [props.get("cidrIpv4"), props.get("cidrIpv6")],
            )
        ]
    elif typ == "aws:ec2/securityGroupRule:SecurityGroupRule" and props.get("type") == "ingress":
        rules = [
            (
                props.get("fromPort"),
                props.get("toPort"),
                props.get("protocol"),
                (props.get("cidrBlocks") or []) + (props.get("ipv6CidrBlocks") or []),
            )
        ]
    elif typ == "aws:ec2/securityGroup:SecurityGroup":
        rules = [
            (
                r.get("fromPort"),
                r.get("toPort"),
                r.get("protocol"),
                (r.get("cidrBlocks") or []) + (r.get("ipv6CidrBlocks") or []),
            )
            for r in props.get("ingress") or []
        ]
    out = []
    for from_port, to_port, protocol, cidrs in rules:
        ports = _covers(from_port, to_port, protocol)
        if ports and any(c in OPEN_CIDRS for c in cidrs):
            out.append(f"ingress from the whole internet to port(s) {ports}")
    return out


def ec2_hardened(typ: str, props: dict) -> list[str]:
    if typ != "aws:ec2/instance:Instance":
        return []
    out = []
    if (props.get("metadataOptions") or {}).get("httpTokens") != "required":
        out.append("instance must require IMDSv2 (metadataOptions.httpTokens=required)")
    # Hop limit 1: IMDS answers the host only. Above it, every container (Nginx, PgBouncer) gets
    # the instance role, which reads the master secret and the TLS key. Stated, never left out:
    # an AMI registered with ImdsSupport v2.0 (as AL2023's are) launches with a hop limit of 2.
    if (props.get("metadataOptions") or {}).get("httpPutResponseHopLimit") != 1:
        out.append(
            "IMDS hop limit must be 1 (metadataOptions.httpPutResponseHopLimit): containers must not get the instance role"
        )
    if (props.get("rootBlockDevice") or {}).get("encrypted") is not True:
        out.append("root volume must be encrypted")
    if props.get("keyName"):
        out.append("no SSH key pair: use SSM Session Manager")
    if props.get("associatePublicIpAddress"):
        out.append("instance must not have a public IP (it sits behind the load balancer)")
    return out


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _is_wildcard_resource(arn: str) -> bool:
    """'*' or an ARN whose resource part is '*' (every bucket, every key...); a log group's
    'log-group:NAME:*' (its streams) is scoped and fine."""
    parts = arn.split(":", 5)
    return arn == "*" or (len(parts) == 6 and parts[5] in ("*", "/*"))


def iam_no_wildcards(typ: str, props: dict) -> list[str]:
    if typ not in ("aws:iam/rolePolicy:RolePolicy", "aws:iam/policy:Policy"):
        return []
    policy = props.get("policy")
    doc = json.loads(policy) if isinstance(policy, str) else (policy or {})
    out = []
    for st in _as_list(doc.get("Statement", [])):
        if st.get("Effect") != "Allow":
            continue
        actions = [a for a in _as_list(st.get("Action", [])) if a]
        if any(a == "*" or a.endswith(":*") for a in actions):
            out.append(f"wildcard action in {st.get('Sid') or st}")
        resources = _as_list(st.get("Resource", []))
        wild = [r for r in resources if _is_wildcard_resource(r)]
        if wild and not set(actions) <= WILDCARD_ONLY_ACTIONS:
            out.append(f"wildcard resource {wild} for {actions}")
    return out


def aws_name_limits(typ: str, props: dict) -> list[str]:
    name, limit = props.get("name"), NAME_LIMITS.get(typ)
    if limit and isinstance(name, str) and len(name) > limit:
        return [f"name {name!r} is {len(name)} characters; AWS allows {limit}"]
    return []


def required_tags(typ: str, props: dict) -> list[str]:
    if typ not in TAGGABLE_TYPES:
        return []
    missing = [t for t in REQUIRED_TAGS if not (props.get("tags") or {}).get(t)]
    return [f"missing tags {missing}"] if missing else []


RESOURCE_CHECKS: dict[str, tuple[str, Check]] = {
    "s3-encryption-on": ("S3 buckets are encrypted by default (SSE-KMS or SSE-S3)", s3_encryption),
    "s3-nothing-public": (
        "All four public-access blocks, BucketOwnerEnforced, no public ACL, no forceDestroy outside dev",
        s3_no_public_access,
    ),
    "rds-private-encrypted-backed-up": (
        "RDS: private, encrypted, automated backups; prod: Multi-AZ, deletion protection, final snapshot",
        rds_hardened,
    ),
    "no-internet-to-db-or-ssh": (
        "No 0.0.0.0/0 or ::/0 ingress to SSH, RDP or PostgreSQL ports",
        no_open_sensitive_ports,
    ),
    "ec2-imdsv2-encrypted": ("EC2: IMDSv2 required, encrypted root volume, no SSH key, no public IP", ec2_hardened),
    "iam-no-wildcards": ("IAM policies name their resources and actions (no '*')", iam_no_wildcards),
    "required-tags": (f"Taggable resources carry {', '.join(REQUIRED_TAGS)}", required_tags),
    "aws-name-limits": ("Resource names fit AWS's length limits (load balancers: 32)", aws_name_limits),
}

BUCKET_COMPANIONS = (
    "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
    "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
    "aws:s3/bucketOwnershipControls:BucketOwnershipControls",
    "aws:s3/bucketVersioning:BucketVersioning",
    "aws:s3/bucketPolicy:BucketPolicy",
)


def bucket_companions(resources: Iterable[tuple[str, str, dict, list[str]]]) -> list[str]:
    """Stack rule: each bucket has encryption, public-access block, ownership, versioning and a
    TLS-only policy. resources: (type, urn, props, dependency urns)."""
    resources = list(resources)
    out = []
    for typ, urn, props, _ in resources:
        if typ != "aws:s3/bucket:Bucket":
            continue
        names = {props.get("bucket"), props.get("id")} - {None}
        for companion in BUCKET_COMPANIONS:
            if not any(t == companion and (urn in deps or p.get("bucket") in names) for t, _, p, deps in resources):
                out.append(f"{urn}: bucket has no {companion.rsplit(':', 1)[1]}")
    return out


def known(props):
    """The inputs known now, unknown ones left out (recursively). pulumi-policy's props raise on
    reading an unknown value, and a rule that raises is reported only as an advisory "can't run
    policy during preview": on a new stack, where most resources have an unknown input, every
    mandatory rule would stay silent until `pulumi up` is half done. A rule then sees an unknown
    input as absent; the update, with all values known, checks it again."""
    if isinstance(props, Mapping):
        out = {}
        for key in props:
            try:
                out[key] = known(props[key])
            except UnknownValueError:
                continue
        return out
    if isinstance(props, Sequence) and not isinstance(props, str):
        items = []
        for i in range(len(props)):
            try:
                items.append(known(props[i]))
            except UnknownValueError:
                continue
        return items
    return props


def check_resource(typ: str, props: dict) -> list[tuple[str, str]]:
    """All resource rules over one resource: [(rule name, message)]."""
    return [(rule, msg) for rule, (_, fn) in RESOURCE_CHECKS.items() for msg in fn(typ, props)]


def _resource_policy(rule: str) -> ResourceValidationPolicy:
    description, fn = RESOURCE_CHECKS[rule]

    def validate(args: ResourceValidationArgs, report: ReportViolation) -> None:
        for message in fn(args.resource_type, known(args.props)):
            report(message)

    return ResourceValidationPolicy(
        name=rule, description=description, validate=validate, enforcement_level=EnforcementLevel.MANDATORY
    )


def _stack_validate(args: StackValidationArgs, report: ReportViolation) -> None:
    rows = [(r.resource_type, r.urn, known(r.props), [d.urn for d in r.dependencies]) for r in args.resources]
    for message in bucket_companions(rows):
        report(message)


def policies() -> list:
    return [_resource_policy(rule) for rule in RESOURCE_CHECKS] + [
        StackValidationPolicy(
            name="s3-bucket-fully-configured",
            validate=_stack_validate,
            enforcement_level=EnforcementLevel.MANDATORY,
            description="Every bucket has encryption, public-access block, ownership, versioning and TLS-only policy",
        )
    ]
