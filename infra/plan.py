"""Print what `pulumi up` would create for a stack, by running the program under mocks.

For reviewers without AWS or the Pulumi CLI: `python -m infra.plan --stack dev`. Values are what
the program asks for; AWS-computed values (ids, ARNs, endpoints) are mock placeholders.
Secrets are masked. Exits 1 if a policy-pack rule is violated.
"""

from __future__ import annotations

import argparse
import json
import sys

from infra.mockrun import run_stack
from infra.policy.rules import bucket_companions, check_resource

SECRET_KEYS = {"password", "secretString", "result", "masterPassword"}
KEY_PROPS = {
    "aws:s3/bucket:Bucket": ["forceDestroy"],
    "aws:rds/instance:Instance": [
        "engine",
        "engineVersion",
        "instanceClass",
        "multiAz",
        "publiclyAccessible",
        "storageEncrypted",
        "backupRetentionPeriod",
        "deletionProtection",
        "skipFinalSnapshot",
    ],
    "aws:ec2/instance:Instance": ["instanceType", "metadataOptions", "rootBlockDevice"],
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": [
        "fromPort",
        "toPort",
        "cidrIpv4",
        "referencedSecurityGroupId",
    ],
    "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration": ["rules"],
    "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock": [
        "blockPublicAcls",
        "blockPublicPolicy",
        "ignorePublicAcls",
        "restrictPublicBuckets",
    ],
    "aws:iam/rolePolicy:RolePolicy": ["policy"],
    "aws:rds/parameterGroup:ParameterGroup": ["family"],
    "aws:lb/loadBalancer:LoadBalancer": ["loadBalancerType", "internal"],
    "aws:ecs/service:Service": ["desiredCount", "launchType"],
    "aws:s3/bucketObjectv2:BucketObjectv2": ["key"],
}


def mask(value, secrets: list[str]):
    """Mask known secret keys and any generated secret value wherever it appears."""
    if isinstance(value, dict):
        return {k: "[secret]" if k in SECRET_KEYS else mask(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v, secrets) for v in value]
    if isinstance(value, str) and any(s in value for s in secrets):
        return "[secret]"
    return value


def summary(typ: str, props: dict) -> str:
    keys = KEY_PROPS.get(typ, [])
    return " ".join(f"{k}={json.dumps(props[k], separators=(',', ':'))}" for k in keys if k in props)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.plan", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stack", default="dev", help="stack name: reads Pulumi.<stack>.yaml (default dev)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (JSON values allowed), e.g. computeMode=ecs",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, _, raw = item.partition("=")
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key] = raw
    print(f"plan: running the program for stack {args.stack!r} under mocks", file=sys.stderr)
    run = run_stack(args.stack, overrides)
    rows = [(r.type, r.name, mask(r.inputs, run.secret_values)) for r in run.resources]
    violations = [f"{name}: [{rule}] {msg}" for typ, name, props in rows for rule, msg in check_resource(typ, props)]
    violations += bucket_companions((t, n, p, []) for t, n, p in ((r.type, r.name, r.outputs) for r in run.resources))
    outputs = {k: "[secret]" if secret else mask(v, run.secret_values) for k, (v, secret) in run.outputs.items()}
    if args.json:
        print(
            json.dumps(
                {
                    "resources": [{"type": t, "name": n, "inputs": p} for t, n, p in rows],
                    "outputs": outputs,
                    "violations": violations,
                },
                indent=2,
                default=str,
            )
        )
    else:
        width = max(len(t) for t, _, _ in rows)
        for typ, name, props in rows:
            print(f"+ {typ:<{width}}  {name}  {summary(typ, props)}".rstrip())
        print(f"\n{len(rows)} resources")
        for key, value in outputs.items():
            print(f"output {key} = {value}")
        print(f"policy violations: {len(violations)}")
        for v in violations:
            print(f"  {v}")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
