"""Every security-relevant property of the components, for the dev and prod stacks.

Mock boundary: AWS and the Pulumi engine cannot run here, so the program runs under Pulumi's
mocks (infra/mockrun.py). These tests prove what the program ASKS AWS for, not that AWS accepts it.
"""

import json

import pytest

from infra.components.server_iam import RESOURCE_WILDCARD_ONLY_ACTIONS, SSM_CORE_POLICY_ARN, server_policy_document
from infra.mockrun import run_stack
from infra.pgconf import rds_parameters
from infra.policy.rules import REQUIRED_TAGS, TAGGABLE_TYPES

SECRET_SIG = "4dabf18193072939515e22adb298388d"  # pulumi.runtime.rpc._special_sig_key


def inputs(run, typ):
    return run.one(typ).inputs


def test_bucket_secure_defaults(stack_run):
    bucket = inputs(stack_run, "aws:s3/bucket:Bucket")
    env = bucket["tags"]["environment"]
    assert bucket.get("forceDestroy", False) is (env == "dev")
    assert (
        inputs(stack_run, "aws:s3/bucketVersioning:BucketVersioning")["versioningConfiguration"]["status"] == "Enabled"
    )
    pab = inputs(stack_run, "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    assert all(
        pab[k] is True for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
    )
    own = inputs(stack_run, "aws:s3/bucketOwnershipControls:BucketOwnershipControls")
    assert own["rule"]["objectOwnership"] == "BucketOwnerEnforced"
    policy = json.loads(inputs(stack_run, "aws:s3/bucketPolicy:BucketPolicy")["policy"])
    deny = policy["Statement"][0]
    assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    rule = inputs(stack_run, "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")["rules"][0]
    assert rule["status"] == "Enabled" and rule["noncurrentVersionExpiration"]["noncurrentDays"] > 0


def test_bucket_encryption_follows_config(dev_run, prod_run):
    sse = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
    algo = lambda run: inputs(run, sse)["rules"][0]["applyServerSideEncryptionByDefault"]  # noqa: E731
    assert algo(dev_run)["sseAlgorithm"] == "AES256" and not dev_run.of_type("aws:kms/key:Key")
    assert algo(prod_run)["sseAlgorithm"] == "aws:kms" and algo(prod_run)["kmsMasterKeyId"]
    assert inputs(prod_run, "aws:kms/key:Key")["enableKeyRotation"] is True


def test_database(stack_run):
    db = inputs(stack_run, "aws:rds/instance:Instance")
    prod = db["tags"]["environment"] == "prod"
    assert db["engine"] == "postgres" and db["engineVersion"].split(".")[0] == "17"
    assert db["publiclyAccessible"] is False and db["storageEncrypted"] is True
    assert db["manageMasterUserPassword"] is True and "password" not in db
    assert db["backupRetentionPeriod"] >= (7 if prod else 1)
    assert db["deletionProtection"] is prod and db["multiAz"] is prod
    assert db["skipFinalSnapshot"] is (not prod)
    if prod:
        assert db["finalSnapshotIdentifier"]
    subnets = inputs(stack_run, "aws:rds/subnetGroup:SubnetGroup")["subnetIds"]
    private = {r.name + "-id" for r in stack_run.of_type("aws:ec2/subnet:Subnet") if "private" in r.name}
    assert set(subnets) == private and len(subnets) >= 2


def test_parameter_group_comes_from_postgresql_conf(stack_run):
    pg = inputs(stack_run, "aws:rds/parameterGroup:ParameterGroup")
    db = inputs(stack_run, "aws:rds/instance:Instance")
    assert pg["family"] == f"postgres{db['engineVersion'].split('.')[0]}"
    got = {p["name"]: p["value"] for p in pg["parameters"]}
    assert got == {p["name"]: p["value"] for p in rds_parameters(db["instanceClass"])}
    assert got["rds.force_ssl"] == "1"


def test_database_reachable_only_from_server_sg(stack_run):
    db_sg = next(r for r in stack_run.of_type("aws:ec2/securityGroup:SecurityGroup") if r.name.endswith("-db-sg"))
    server_sg = next(
        r
        for r in stack_run.of_type("aws:ec2/securityGroup:SecurityGroup")
        if r.name.endswith("-server") and "Compute" not in r.name
    )
    rules = [
        r.inputs
        for r in stack_run.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
        if r.inputs["securityGroupId"] == db_sg.name + "-id"
    ]
    assert rules == [
        {**rules[0], "fromPort": 5432, "toPort": 5432, "referencedSecurityGroupId": server_sg.name + "-id"}
    ]
    assert "cidrIpv4" not in rules[0]


def test_server_policy_document_is_exact():
    doc = server_policy_document("arn:aws:s3:::b", ["arn:s2", "arn:s1"], "arn:aws:kms:k")
    allows = {s["Sid"]: s for s in doc["Statement"] if s["Effect"] == "Allow"}
    assert allows["ListArtifactBucket"]["Action"] == ["s3:ListBucket"]
    assert allows["ListArtifactBucket"]["Resource"] == ["arn:aws:s3:::b"]
    assert set(allows["ReadWriteDeleteArtifacts"]["Action"]) == {
        "s3:GetObject",
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:AbortMultipartUpload",
    }
    assert allows["ReadWriteDeleteArtifacts"]["Resource"] == ["arn:aws:s3:::b/*"]
    assert allows["ReadOwnSecrets"]["Resource"] == ["arn:s1", "arn:s2"]
    assert allows["UseArtifactKey"]["Resource"] == ["arn:aws:kms:k"]
    for st in doc["Statement"]:
        assert "*" not in st["Resource"] and not any(a.endswith("*") for a in st["Action"])
    assert "UseArtifactKey" not in {s["Sid"] for s in server_policy_document("arn:aws:s3:::b", [])["Statement"]}


def test_role_uses_that_document(stack_run):
    bucket = stack_run.one("aws:s3/bucket:Bucket").outputs
    import yaml

    from infra.mockrun import REPO_ROOT

    stack = stack_run.one("aws:s3/bucket:Bucket").inputs["tags"]["environment"]
    tls = yaml.safe_load((REPO_ROOT / f"Pulumi.{stack}.yaml").read_text())["config"].get(
        "mlflow-tracking:tlsCertificateSecretArn"
    )
    secrets = [
        stack_run.one("aws:secretsmanager/secret:Secret").outputs["arn"],
        stack_run.one("aws:rds/instance:Instance").outputs["masterUserSecrets"][0]["secretArn"],
        *([tls] if tls else []),
    ]
    key = stack_run.of_type("aws:kms/key:Key")
    policies = {r.name: json.loads(r.inputs["policy"]) for r in stack_run.of_type("aws:iam/rolePolicy:RolePolicy")}
    main = next(v for k, v in policies.items() if k.endswith("artifacts-secrets"))
    assert main == server_policy_document(bucket["arn"], secrets, key[0].outputs["arn"] if key else None)
    pull = next(v for k, v in policies.items() if k.endswith("image-pull"))
    wild = [s for s in pull["Statement"] if s["Resource"] == "*"]
    assert [set(s["Action"]) for s in wild] == [set(RESOURCE_WILDCARD_ONLY_ACTIONS)]
    assert [r.inputs["policyArn"] for r in stack_run.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")] == [
        SSM_CORE_POLICY_ARN
    ]
    assert stack_run.one("aws:iam/instanceProfile:InstanceProfile")


def test_no_container_gets_the_instance_role(stack_run):
    """Under mocks (what AWS does with these inputs is not run here): IMDSv2 answers the host
    only (hop limit 1; a container behind Docker's bridge is one hop more), and MLflow's S3
    credentials come from a separate role that reaches the bucket and nothing else, which only
    the instance role may assume."""
    ec2 = inputs(stack_run, "aws:ec2/instance:Instance")
    assert ec2["metadataOptions"]["httpPutResponseHopLimit"] == 1
    roles = {r.name: r for r in stack_run.of_type("aws:iam/role:Role")}
    artifact = next(r for name, r in roles.items() if name.endswith("-server-artifacts"))
    instance_role = next(r for name, r in roles.items() if name.endswith("-server"))
    trust = json.loads(artifact.inputs["assumeRolePolicy"])["Statement"]
    assert trust == [
        {"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"AWS": instance_role.outputs["arn"]}}
    ]
    policies = {r.name: r.inputs for r in stack_run.of_type("aws:iam/rolePolicy:RolePolicy")}
    only = next(v for k, v in policies.items() if k.endswith("artifacts-only"))
    key = stack_run.of_type("aws:kms/key:Key")
    bucket = stack_run.one("aws:s3/bucket:Bucket").outputs["arn"]
    assert json.loads(only["policy"]) == server_policy_document(bucket, [], key[0].outputs["arn"] if key else None)
    assert only["role"] == f"{artifact.name}-id" and "secretsmanager" not in only["policy"]
    assume = next(v for k, v in policies.items() if k.endswith("assume-artifacts"))
    assert assume["role"] == f"{instance_role.name}-id"
    assert json.loads(assume["policy"])["Statement"] == [
        {
            "Sid": "AssumeArtifactRole",
            "Effect": "Allow",
            "Action": ["sts:AssumeRole"],
            "Resource": [artifact.outputs["arn"]],
        }
    ]
    assert f"readonly ARTIFACT_ROLE_ARN={artifact.outputs['arn']}" in "".join(
        r.inputs.get("content", "") for r in stack_run.of_type("aws:s3/bucketObjectv2:BucketObjectv2")
    )


def test_instance(stack_run):
    ec2 = inputs(stack_run, "aws:ec2/instance:Instance")
    assert ec2["metadataOptions"]["httpTokens"] == "required"
    assert ec2["rootBlockDevice"]["encrypted"] is True
    assert "keyName" not in ec2 and ec2["associatePublicIpAddress"] is False
    private = {r.name + "-id" for r in stack_run.of_type("aws:ec2/subnet:Subnet") if "private" in r.name}
    assert ec2["subnetId"] in private


def test_front_door_only_from_configured_cidrs(stack_run):
    import yaml

    from infra.mockrun import REPO_ROOT

    stack = stack_run.one("aws:s3/bucket:Bucket").inputs["tags"]["environment"]
    cidrs = yaml.safe_load((REPO_ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]["mlflow-tracking:allowedCidrs"]
    rules = [
        r.inputs
        for r in stack_run.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
        if "cidrIpv4" in r.inputs
    ]
    assert {(r["fromPort"], r["cidrIpv4"]) for r in rules} == {(p, c) for p in (443, 80) for c in cidrs}


def test_boot_script_and_user_data_have_no_secrets(stack_run):
    user_data, script = inputs(stack_run, "aws:ec2/instance:Instance")["userData"], stack_run.boot_script()
    assert len(user_data.encode()) <= 16 * 1024
    assert stack_run.secret_values and not any(s in user_data + script for s in stack_run.secret_values)
    assert "secretsmanager get-secret-value" in script
    assert 'docker-compose.aws.yml" "$@"' in script and "up -d --wait" in script


def test_secrets_never_exported_in_plain_text(stack_run):
    for name, (value, secret) in stack_run.outputs.items():
        assert secret or not any(s in json.dumps(value) for s in stack_run.secret_values), name
    assert {"tracking_url", "artifact_bucket_name", "db_instance_endpoint"} <= set(stack_run.outputs)
    version = inputs(stack_run, "aws:secretsmanager/secretVersion:SecretVersion")
    # The engine receives it wrapped as a secret (Pulumi's secret signature), so state encrypts it.
    envelope = version["secretString"]
    assert envelope.get(SECRET_SIG) == "1b47061264138c4ac30d75fd1eb44270"
    assert set(json.loads(envelope["value"])) == {
        "MLFLOW_DB_PASSWORD",
        "MLFLOW_ADMIN_PASSWORD",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
    }


def test_every_taggable_resource_has_the_tag_dict(stack_run):
    for r in stack_run.resources:
        if r.type in TAGGABLE_TYPES:
            assert all(r.inputs.get("tags", {}).get(t) for t in REQUIRED_TAGS), r.name
    assert (
        not {r.type for r in stack_run.resources if r.type.startswith("aws:") and "tags" in r.inputs} - TAGGABLE_TYPES
    )


def test_existing_vpc_mode_creates_no_network():
    run = run_stack(
        "dev",
        {
            "vpcId": "vpc-123",
            "publicSubnetIds": ["subnet-p1", "subnet-p2"],
            "privateSubnetIds": ["subnet-a", "subnet-b"],
        },
    )
    assert not run.of_type("aws:ec2/vpc:Vpc") and not run.of_type("aws:ec2/natGateway:NatGateway")
    assert inputs(run, "aws:rds/subnetGroup:SubnetGroup")["subnetIds"] == ["subnet-a", "subnet-b"]
    assert inputs(run, "aws:ec2/instance:Instance")["subnetId"] == "subnet-a"


def test_scale_out_mode_is_one_config_value():
    run = run_stack(
        "prod", {"computeMode": "ecs", "acmCertificateArn": "arn:aws:acm:us-east-1:123456789012:certificate/x"}
    )
    assert not run.of_type("aws:ec2/instance:Instance")
    svc = inputs(run, "aws:ecs/service:Service")
    assert svc["launchType"] == "FARGATE" and svc["networkConfiguration"]["assignPublicIp"] is False
    https = next(r.inputs for r in run.of_type("aws:lb/listener:Listener") if r.inputs["port"] == 443)
    assert https["protocol"] == "HTTPS" and https["certificateArn"].startswith("arn:aws:acm")
    task = next(
        r for r in run.of_type("aws:ecs/taskDefinition:TaskDefinition") if r.inputs["family"] == "mlflow-prod-service"
    )
    containers = json.loads(task.inputs["containerDefinitions"])
    mlflow = next(c for c in containers if c["name"] == "mlflow")
    env_text = json.dumps(
        [json.loads(t.inputs["containerDefinitions"]) for t in run.of_type("aws:ecs/taskDefinition:TaskDefinition")]
    )
    assert not any(s in env_text for s in run.secret_values)
    assert {s["name"] for s in mlflow["secrets"]} == {
        "PGPASSWORD",
        "MLFLOW_AUTH_ADMIN_PASSWORD",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
        "SECRET_KEY",  # the OIDC plugin's session key: the same secret, from Secrets Manager too
    }


ACM = {"acmCertificateArn": "arn:aws:acm:us-east-1:123456789012:certificate/x"}
OIDC = {
    "authMode": "oidc",
    "oidcIssuer": "https://login.example.com/tenant/v2.0",
    "oidcClientId": "mlflow-prod",
    "oidcClientSecret": "Provider-Given-Client-Secret-1",
    "oidcAudience": "api://mlflow",
    "oidcGroupName": "team-a,team-b",
}


def _mlflow_container(run) -> dict:
    task = next(r for r in run.of_type("aws:ecs/taskDefinition:TaskDefinition") if r.name.endswith("-service"))
    return next(c for c in json.loads(task.inputs["containerDefinitions"]) if c["name"] == "mlflow")


def test_ecs_oidc_client_secret_is_an_ecs_secret_from_the_app_secret():
    """Under mocks: the task definition asks ECS to inject OIDC_CLIENT_SECRET from the app
    secret's JSON key; the value itself is in the (Pulumi-secret) secret version only, never in
    a task definition, the plan, or an output. Whether ECS resolves the key is AWS's to prove."""
    run = run_stack("prod", {"computeMode": "ecs", **ACM, **OIDC})
    mlflow = _mlflow_container(run)
    app_arn = run.one("aws:secretsmanager/secret:Secret").outputs["arn"]
    assert {"name": "OIDC_CLIENT_SECRET", "valueFrom": f"{app_arn}:OIDC_CLIENT_SECRET::"} in mlflow["secrets"]
    env = {e["name"]: e["value"] for e in mlflow["environment"]}
    assert "OIDC_CLIENT_SECRET" not in env
    task_text = json.dumps([r.inputs for r in run.of_type("aws:ecs/taskDefinition:TaskDefinition")])
    assert OIDC["oidcClientSecret"] in run.secret_values and OIDC["oidcClientSecret"] not in task_text
    envelope = inputs(run, "aws:secretsmanager/secretVersion:SecretVersion")["secretString"]
    assert envelope.get(SECRET_SIG) and json.loads(envelope["value"])["OIDC_CLIENT_SECRET"] == OIDC["oidcClientSecret"]
    assert all(secret or OIDC["oidcClientSecret"] not in json.dumps(v) for v, secret in run.outputs.values())


def test_ecs_oidc_settings_reach_the_task_environment_through_the_compose_model():
    """The plain settings go through aws_env and the compose file's own expressions: the
    discovery URL and redirect URI are derived there, unset ones take the compose defaults."""
    env = {
        e["name"]: e["value"]
        for e in _mlflow_container(run_stack("prod", {"computeMode": "ecs", **ACM, **OIDC}))["environment"]
    }
    assert env["AUTH_MODE"] == "oidc" and env["OIDC_ISSUER"] == OIDC["oidcIssuer"]
    assert env["OIDC_DISCOVERY_URL"] == OIDC["oidcIssuer"] + "/.well-known/openid-configuration"
    assert env["OIDC_CLIENT_ID"] == "mlflow-prod" and env["OIDC_AUDIENCE"] == "api://mlflow"
    assert env["OIDC_GROUP_NAME"] == "team-a,team-b" and env["OIDC_ADMIN_GROUP_NAME"] == "mlflow-admins"
    assert env["OIDC_REDIRECT_URI"] == "https://mlflow.example.com:443/callback"


def test_basic_mode_injects_no_client_secret_and_oidc_mode_grants_nothing_new():
    """basic (the default): no OIDC_CLIENT_SECRET key to inject (test_secrets_never_exported_in_plain_text
    holds the secret's keys; test_ecs_mlflow_container_is_the_compose_service the task env). oidc
    mode changes no IAM policy: the app secret's ARN was already readable."""
    basic = run_stack("prod", {"computeMode": "ecs", **ACM})
    oidc = run_stack("prod", {"computeMode": "ecs", **ACM, **OIDC})
    assert "OIDC_CLIENT_SECRET" not in json.dumps(_mlflow_container(basic)["secrets"])
    assert {e["name"]: e["value"] for e in _mlflow_container(basic)["environment"]}["AUTH_MODE"] == "basic"
    policies = lambda run: sorted(r.inputs["policy"] for r in run.of_type("aws:iam/rolePolicy:RolePolicy"))  # noqa: E731
    assert policies(basic) == policies(oidc)


def test_ec2_oidc_boot_script_reads_the_client_secret_from_secrets_manager():
    """Under mocks: the uploaded boot script names the key it reads from the app secret and
    carries the plain settings; the secret value is not in it, nor in the user-data."""
    run = run_stack("prod", OIDC)
    script, user_data = run.boot_script(), inputs(run, "aws:ec2/instance:Instance")["userData"]
    assert (
        "readonly APP_SECRET_KEYS='MLFLOW_DB_PASSWORD MLFLOW_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY OIDC_CLIENT_SECRET'"
        in script
    )
    assert f"OIDC_ISSUER={OIDC['oidcIssuer']}\n" in script and "AUTH_MODE=oidc\n" in script
    assert OIDC["oidcClientSecret"] in run.secret_values
    assert not any(s in script + user_data for s in run.secret_values)


def test_scale_out_refuses_more_tasks_than_the_database_supports():
    with pytest.raises(Exception, match="connections"):
        run_stack(
            "prod",
            {
                "computeMode": "ecs",
                "ecsMaxTasks": 40,
                "acmCertificateArn": "arn:aws:acm:us-east-1:123456789012:certificate/x",
            },
        )


def test_config_refuses_missing_cidrs():
    with pytest.raises(Exception, match="allowedCidrs"):
        run_stack("dev", {"allowedCidrs": []})


# A component's type token is part of the URN of every resource under it: a new token would make
# Pulumi replace them all in existing stacks.
COMPONENT_TYPES = ["Network", "ArtifactStore", "TrackingDb", "Alarms", "AppSecrets", "ImageRegistry", "ServerIam"]


def parent_types(run) -> set[str]:
    """The types resources are registered under, but the stack's: from the URNs, whose type part
    is the chain of parent types (pulumi:pulumi:Stack$mlflow:infra:Network$aws:ec2/vpc:Vpc)."""
    chains = (r.urn.split("::")[2].split("$") for r in run.resources)
    return {t for chain in chains for t in chain[:-1]} - {"pulumi:pulumi:Stack"}


def test_component_type_tokens_stay_the_same(dev_run):
    ecs_run = run_stack(
        "prod", {"computeMode": "ecs", "acmCertificateArn": "arn:aws:acm:us-east-1:123456789012:certificate/x"}
    )
    assert parent_types(dev_run) == {f"mlflow:infra:{c}" for c in [*COMPONENT_TYPES, "Compute"]}
    assert parent_types(ecs_run) == {f"mlflow:infra:{c}" for c in [*COMPONENT_TYPES, "ScaleOut"]}
