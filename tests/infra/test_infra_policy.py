"""Policy pack rules (infra/policy/rules.py) on good and bad resources, and over every resource
the program registers under Pulumi's mocks (AWS cannot be reached here; the props are the
program's inputs, which is what `pulumi preview --policy-pack` checks too)."""

import json

import pytest

from infra.mockrun import run_stack
from infra.policy.rules import RESOURCE_CHECKS, bucket_companions, check_resource, iam_no_wildcards, policies

TAGS = {"project": "mlflow-tracking", "environment": "prod", "owner": "p", "managed-by": "pulumi"}
GOOD_DB = {
    "publiclyAccessible": False,
    "storageEncrypted": True,
    "backupRetentionPeriod": 14,
    "deletionProtection": True,
    "multiAz": True,
    "skipFinalSnapshot": False,
    "manageMasterUserPassword": True,
    "tags": TAGS,
}
RDS = "aws:rds/instance:Instance"
SGR = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EC2 = "aws:ec2/instance:Instance"
GOOD_EC2 = {
    "metadataOptions": {"httpTokens": "required", "httpPutResponseHopLimit": 1},
    "rootBlockDevice": {"encrypted": True},
    "tags": TAGS,
}
SSE = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
PAB = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
ALL_BLOCKS = dict.fromkeys(["blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"], True)


def rules_hit(typ, props):
    return {rule for rule, _ in check_resource(typ, props)}


def role_policy(statements):
    return {"policy": json.dumps({"Version": "2012-10-17", "Statement": statements})}


@pytest.mark.parametrize(
    "typ,props",
    [
        (RDS, GOOD_DB),
        (SGR, {"fromPort": 443, "toPort": 443, "ipProtocol": "tcp", "cidrIpv4": "0.0.0.0/0", "tags": TAGS}),
        (
            SGR,
            {"fromPort": 5432, "toPort": 5432, "ipProtocol": "tcp", "referencedSecurityGroupId": "sg-1", "tags": TAGS},
        ),
        (EC2, GOOD_EC2),
        (SSE, {"rules": [{"applyServerSideEncryptionByDefault": {"sseAlgorithm": "aws:kms"}}]}),
        (SSE, {"rules": [{"applyServerSideEncryptionByDefault": {"sseAlgorithm": "AES256"}}]}),
        (PAB, ALL_BLOCKS),
        (
            "aws:iam/rolePolicy:RolePolicy",
            role_policy([{"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::b/*"]}]),
        ),
        (
            "aws:iam/rolePolicy:RolePolicy",
            role_policy([{"Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"}]),
        ),
        (
            "aws:iam/rolePolicy:RolePolicy",
            role_policy(
                [{"Effect": "Allow", "Action": ["logs:PutLogEvents"], "Resource": ["arn:aws:logs:r:1:log-group:g:*"]}]
            ),
        ),
    ],
)
def test_good_resources_pass(typ, props):
    assert check_resource(typ, props) == []


@pytest.mark.parametrize(
    "typ,props,rule",
    [
        (RDS, {**GOOD_DB, "publiclyAccessible": True}, "rds-private-encrypted-backed-up"),
        (RDS, {**GOOD_DB, "storageEncrypted": False}, "rds-private-encrypted-backed-up"),
        (RDS, {**GOOD_DB, "backupRetentionPeriod": 3}, "rds-private-encrypted-backed-up"),
        (RDS, {**GOOD_DB, "deletionProtection": False}, "rds-private-encrypted-backed-up"),
        (RDS, {**GOOD_DB, "skipFinalSnapshot": True}, "rds-private-encrypted-backed-up"),
        (RDS, {**GOOD_DB, "multiAz": False}, "rds-private-encrypted-backed-up"),
        (RDS, {**GOOD_DB, "tags": {}}, "required-tags"),
        (
            SGR,
            {"fromPort": 5432, "toPort": 5432, "ipProtocol": "tcp", "cidrIpv4": "0.0.0.0/0", "tags": TAGS},
            "no-internet-to-db-or-ssh",
        ),
        (
            SGR,
            {"fromPort": 0, "toPort": 65535, "ipProtocol": "tcp", "cidrIpv6": "::/0", "tags": TAGS},
            "no-internet-to-db-or-ssh",
        ),
        (SGR, {"ipProtocol": "-1", "cidrIpv4": "0.0.0.0/0", "tags": TAGS}, "no-internet-to-db-or-ssh"),
        (
            "aws:ec2/securityGroup:SecurityGroup",
            {"tags": TAGS, "ingress": [{"fromPort": 22, "toPort": 22, "protocol": "tcp", "cidrBlocks": ["0.0.0.0/0"]}]},
            "no-internet-to-db-or-ssh",
        ),
        (EC2, {**GOOD_EC2, "metadataOptions": {"httpTokens": "optional"}}, "ec2-imdsv2-encrypted"),
        (
            EC2,
            {**GOOD_EC2, "metadataOptions": {"httpTokens": "required", "httpPutResponseHopLimit": 2}},
            "ec2-imdsv2-encrypted",
        ),
        (EC2, {**GOOD_EC2, "metadataOptions": {"httpTokens": "required"}}, "ec2-imdsv2-encrypted"),
        (EC2, {**GOOD_EC2, "rootBlockDevice": {"encrypted": False}}, "ec2-imdsv2-encrypted"),
        (EC2, {**GOOD_EC2, "keyName": "my-key"}, "ec2-imdsv2-encrypted"),
        (SSE, {"rules": []}, "s3-encryption-on"),
        (PAB, {**ALL_BLOCKS, "restrictPublicBuckets": False}, "s3-nothing-public"),
        (
            "aws:s3/bucketOwnershipControls:BucketOwnershipControls",
            {"rule": {"objectOwnership": "ObjectWriter"}},
            "s3-nothing-public",
        ),
        ("aws:s3/bucket:Bucket", {"forceDestroy": True, "tags": TAGS}, "s3-nothing-public"),
        (
            "aws:iam/rolePolicy:RolePolicy",
            role_policy([{"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "*"}]),
            "iam-no-wildcards",
        ),
        (
            "aws:iam/rolePolicy:RolePolicy",
            role_policy([{"Effect": "Allow", "Action": ["s3:*"], "Resource": ["arn:aws:s3:::b"]}]),
            "iam-no-wildcards",
        ),
        (
            "aws:iam/rolePolicy:RolePolicy",
            role_policy([{"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::*"]}]),
            "iam-no-wildcards",
        ),
    ],
)
def test_bad_resources_fail(typ, props, rule):
    assert rule in rules_hit(typ, props)


def test_bucket_companions_rule():
    bucket = ("aws:s3/bucket:Bucket", "urn:b", {"bucket": "b"}, [])
    assert len(bucket_companions([bucket])) == 5
    assert bucket_companions([bucket, ("aws:s3/bucketPolicy:BucketPolicy", "u", {"bucket": "b"}, [])])


def test_policy_pack_objects_build_without_starting_a_server():
    names = {p.name for p in policies()}
    assert set(RESOURCE_CHECKS) <= names and "s3-bucket-fully-configured" in names


def _violations(run):
    found = [(r.name, rule, msg) for r in run.resources for rule, msg in check_resource(r.type, r.inputs)]
    found += bucket_companions((r.type, r.name, r.outputs, []) for r in run.resources)
    return found


def test_program_has_zero_violations(stack_run):
    assert _violations(stack_run) == []


def test_program_in_ecs_mode_has_zero_violations():
    run = run_stack(
        "prod", {"computeMode": "ecs", "acmCertificateArn": "arn:aws:acm:us-east-1:123456789012:certificate/x"}
    )
    assert run.of_type("aws:ecs/service:Service") and _violations(run) == []


def test_deliberately_broken_config_is_caught(prod_run):
    """Break the real program's resources the four ways the issue names; the policies must object."""
    by_type = {r.type: r for r in prod_run.resources}
    db = {**by_type[RDS].inputs, "publiclyAccessible": True}
    sg = {"fromPort": 5432, "toPort": 5432, "ipProtocol": "tcp", "cidrIpv4": "0.0.0.0/0", "tags": TAGS}
    iam = next(
        r for r in prod_run.of_type("aws:iam/rolePolicy:RolePolicy") if r.name.endswith("artifacts-secrets")
    ).inputs
    doc = json.loads(iam["policy"])
    doc["Statement"][0]["Resource"] = "*"
    sse = {**by_type[SSE].inputs, "rules": []}
    assert "rds-private-encrypted-backed-up" in rules_hit(RDS, db)
    assert "no-internet-to-db-or-ssh" in rules_hit(SGR, sg)
    assert iam_no_wildcards("aws:iam/rolePolicy:RolePolicy", {"policy": json.dumps(doc)})
    assert "s3-encryption-on" in rules_hit(SSE, sse)
    unencrypted = [r for r in prod_run.resources if r.type != SSE]
    assert bucket_companions((r.type, r.name, r.outputs, []) for r in unencrypted)
