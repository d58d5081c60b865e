"""Server IAM: the role the MLflow server runs as, allowed exactly its bucket and its secrets."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
from pulumi import ResourceOptions

from infra.bundle import BUNDLE_PREFIX as DEPLOY_BUNDLE_PREFIX

# Session Manager access instead of SSH (AWS-managed; the one managed policy we attach).
SSM_CORE_POLICY_ARN = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
# ecr:GetAuthorizationToken has no resource-level permissions: AWS only accepts "*" for it.
RESOURCE_WILDCARD_ONLY_ACTIONS = frozenset({"ecr:GetAuthorizationToken"})


def server_policy_document(bucket_arn: str, secret_arns: list[str], kms_key_arn: str | None = None) -> dict:
    """What MLflow's proxied artifact serving and `mlflow gc` need on the artifact bucket (list it;
    get, put, delete objects in it), plus reading the server's own secrets. Nothing else.
    The same function feeds the IAM component and the moto IAM test (tests/infra)."""
    statements = [
        {"Sid": "ListArtifactBucket", "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": [bucket_arn]},
        # AbortMultipartUpload: MLflow's proxied multipart upload cancels failed uploads.
        {
            "Sid": "ReadWriteDeleteArtifacts",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
            "Resource": [f"{bucket_arn}/*"],
        },
        # The boot bundle shares the bucket: the server (and so any MLflow user) may read, never alter it.
        {
            "Sid": "ProtectDeployBundle",
            "Effect": "Deny",
            "Action": ["s3:PutObject", "s3:DeleteObject"],
            "Resource": [f"{bucket_arn}/{DEPLOY_BUNDLE_PREFIX}*"],
        },
    ]
    if secret_arns:
        statements.append(secrets_statement(secret_arns))
    if kms_key_arn:
        # SSE-KMS: S3 calls KMS on the caller's behalf to encrypt and decrypt each object.
        statements.append(
            {
                "Sid": "UseArtifactKey",
                "Effect": "Allow",
                "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
                "Resource": [kms_key_arn],
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}


def secrets_statement(secret_arns: list[str]) -> dict:
    return {
        "Sid": "ReadOwnSecrets",
        "Effect": "Allow",
        "Action": ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"],
        "Resource": sorted(secret_arns),
    }


def assume_artifact_role_statement(artifact_role_arn: str) -> dict:
    """EC2: the host trades its instance role for the artifact role's short-lived credentials,
    which only the MLflow container gets (infra/boot/boot.sh, write_artifact_credentials)."""
    return {
        "Sid": "AssumeArtifactRole",
        "Effect": "Allow",
        "Action": ["sts:AssumeRole"],
        "Resource": [artifact_role_arn],
    }


def image_pull_policy_document(repository_arn: str, secret_arns: list[str] | None = None) -> dict:
    """Pull our image from its ECR repository (and get the registry token, which has no ARN); with
    secret_arns (an ECS execution role), also read the secrets ECS injects into the containers."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            *([secrets_statement(secret_arns)] if secret_arns else []),
            {
                "Sid": "RegistryToken",
                "Effect": "Allow",
                "Action": sorted(RESOURCE_WILDCARD_ONLY_ACTIONS),
                "Resource": "*",
            },
            {
                "Sid": "PullMlflowImage",
                "Effect": "Allow",
                "Action": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
                "Resource": [repository_arn],
            },
        ],
    }


@dataclass
class ServerIamArgs:
    """tags: merged into every resource. bucket_arn: the artifact bucket. secret_arns: secrets the
    server reads at boot (app secrets, the RDS master secret, an optional TLS certificate).
    kms_key_arn: the bucket's key when SSE-KMS is used. repository_arn: where our image lives.
    service: who assumes the role (ec2.amazonaws.com or ecs-tasks.amazonaws.com). On ECS the
    secrets and the image pull belong to a separate execution role (ECS uses it to start the
    task), so MLflow itself, with the task role, can read neither the master secret nor the app
    secret; it only reaches the bucket."""

    tags: dict[str, str]
    bucket_arn: pulumi.Input[str]
    secret_arns: list
    repository_arn: pulumi.Input[str]
    kms_key_arn: pulumi.Input[str] | None = None
    service: str = "ec2.amazonaws.com"


class ServerIam(pulumi.ComponentResource):
    role_arn: pulumi.Output[str]
    role_name: pulumi.Output[str]
    instance_profile_name: pulumi.Output[str]
    artifact_role_arn: pulumi.Output[str]
    execution_role_arn: pulumi.Output[str]
    execution_role_name: pulumi.Output[str]

    def __init__(self, name: str, args: ServerIamArgs, opts: ResourceOptions | None = None):
        super().__init__("mlflow:infra:ServerIam", name, {}, opts)
        child = ResourceOptions(parent=self)
        ec2 = args.service == "ec2.amazonaws.com"
        secrets = pulumi.Output.all(*args.secret_arns)
        role = self._role(name, args, "MLflow tracking server: artifact bucket" + (" and own secrets" if ec2 else ""))
        aws.iam.RolePolicy(
            f"{name}-artifacts-secrets" if ec2 else f"{name}-artifacts",
            role=role.id,
            opts=child,
            policy=pulumi.Output.all(args.bucket_arn, secrets, args.kms_key_arn).apply(
                lambda a: json.dumps(server_policy_document(a[0], list(a[1]) if ec2 else [], a[2]))
            ),
        )
        puller = role if ec2 else self._role(f"{name}-execution", args, "ECS: pull the image, inject the secrets")
        aws.iam.RolePolicy(
            f"{name}-image-pull",
            role=puller.id,
            opts=child,
            policy=pulumi.Output.all(args.repository_arn, secrets).apply(
                lambda a: json.dumps(image_pull_policy_document(a[0], None if ec2 else list(a[1])))
            ),
        )
        self.execution_role_arn, self.execution_role_name = puller.arn, puller.name
        if ec2:
            aws.iam.RolePolicyAttachment(f"{name}-ssm", role=role.name, policy_arn=SSM_CORE_POLICY_ARN, opts=child)
            profile = aws.iam.InstanceProfile(name, role=role.name, tags=args.tags, opts=child)
            self.instance_profile_name = profile.name
            self.artifact_role_arn = self._artifact_role(name, args, role).arn
        self.role_arn = role.arn
        self.role_name = role.name
        self.register_outputs({"role_arn": self.role_arn, "execution_role_arn": self.execution_role_arn})

    def _artifact_role(self, name: str, args: ServerIamArgs, instance_role: aws.iam.Role) -> aws.iam.Role:
        """EC2: the instance role reads the master secret and the TLS key, so no container may
        hold it (the instance's IMDS hop limit is 1). MLflow gets this role instead: the artifact
        bucket and nothing else, assumed by the host and handed to the MLflow container alone."""
        child = ResourceOptions(parent=self)
        artifact = aws.iam.Role(
            f"{name}-artifacts",
            tags={**args.tags, "Name": f"{name}-artifacts"},
            opts=child,
            description="MLflow tracking server on EC2: artifact bucket only (assumed by the instance)",
            max_session_duration=3600,
            assume_role_policy=instance_role.arn.apply(
                lambda arn: json.dumps(
                    {
                        "Version": "2012-10-17",
                        "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"AWS": arn}}],
                    }
                )
            ),
        )
        aws.iam.RolePolicy(
            f"{name}-artifacts-only",
            role=artifact.id,
            opts=child,
            policy=pulumi.Output.all(args.bucket_arn, args.kms_key_arn).apply(
                lambda a: json.dumps(server_policy_document(a[0], [], a[1]))
            ),
        )
        aws.iam.RolePolicy(
            f"{name}-assume-artifacts",
            role=instance_role.id,
            opts=child,
            policy=artifact.arn.apply(
                lambda arn: json.dumps({"Version": "2012-10-17", "Statement": [assume_artifact_role_statement(arn)]})
            ),
        )
        return artifact

    def _role(self, name: str, args: ServerIamArgs, description: str) -> aws.iam.Role:
        return aws.iam.Role(
            name,
            tags={**args.tags, "Name": name},
            opts=ResourceOptions(parent=self),
            description=description,
            assume_role_policy=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"Service": args.service}}
                    ],
                }
            ),
        )
