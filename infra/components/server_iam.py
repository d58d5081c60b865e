"""Server IAM: the role the MLflow server runs as, allowed exactly its bucket and its secrets."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.bundle import BUNDLE_PREFIX as DEPLOY_BUNDLE_PREFIX
from infra.components.base import Component, named

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


def trust_policy(principal: dict) -> str:
    """The assume-role policy that lets principal ({"Service": ...} or {"AWS": arn}) assume a role."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": principal}],
        }
    )


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


class ServerIam(Component[ServerIamArgs]):
    """role: what the server runs as (the instance role on EC2, the task role on ECS).
    execution_role: pulls the image (and on ECS injects the secrets); on EC2 it is `role`.
    EC2 only: instance_profile (holds `role`) and artifact_role (the MLflow container's)."""

    role: aws.iam.Role
    execution_role: aws.iam.Role
    instance_profile: aws.iam.InstanceProfile
    artifact_role: aws.iam.Role

    def create(self, name: str, args: ServerIamArgs) -> dict:
        ec2 = args.service == "ec2.amazonaws.com"
        secrets = pulumi.Output.all(*args.secret_arns)
        role = self._role(name, args, "MLflow tracking server: artifact bucket" + (" and own secrets" if ec2 else ""))
        self._policy(
            f"{name}-artifacts-secrets" if ec2 else f"{name}-artifacts",
            role.id,
            pulumi.Output.all(args.bucket_arn, secrets, args.kms_key_arn).apply(
                lambda a: server_policy_document(a[0], list(a[1]) if ec2 else [], a[2])
            ),
        )
        puller = role if ec2 else self._role(f"{name}-execution", args, "ECS: pull the image, inject the secrets")
        self._policy(
            f"{name}-image-pull",
            puller.id,
            pulumi.Output.all(args.repository_arn, secrets).apply(
                lambda a: image_pull_policy_document(a[0], None if ec2 else list(a[1]))
            ),
        )
        self.role, self.execution_role = role, puller
        if ec2:
            aws.iam.RolePolicyAttachment(f"{name}-ssm", role=role.name, policy_arn=SSM_CORE_POLICY_ARN, opts=self.child)
            self.instance_profile = aws.iam.InstanceProfile(name, role=role.name, tags=args.tags, opts=self.child)
            self.artifact_role = self._artifact_role(name, args, role)
        return {"role_arn": role.arn, "execution_role_arn": puller.arn}

    def _artifact_role(self, name: str, args: ServerIamArgs, instance_role: aws.iam.Role) -> aws.iam.Role:
        """EC2: the instance role reads the master secret and the TLS key, so no container may
        hold it (the instance's IMDS hop limit is 1). MLflow gets this role instead: the artifact
        bucket and nothing else, assumed by the host and handed to the MLflow container alone."""
        artifact = self._role(
            f"{name}-artifacts",
            args,
            "MLflow tracking server on EC2: artifact bucket only (assumed by the instance)",
            principal=instance_role.arn.apply(lambda arn: {"AWS": arn}),
            max_session_duration=3600,
        )
        self._policy(
            f"{name}-artifacts-only",
            artifact.id,
            pulumi.Output.all(args.bucket_arn, args.kms_key_arn).apply(
                lambda a: server_policy_document(a[0], [], a[1])
            ),
        )
        self._policy(
            f"{name}-assume-artifacts",
            instance_role.id,
            artifact.arn.apply(
                lambda arn: {"Version": "2012-10-17", "Statement": [assume_artifact_role_statement(arn)]}
            ),
        )
        return artifact

    def _role(
        self, name: str, args: ServerIamArgs, description: str, principal: pulumi.Input[dict] | None = None, **extra
    ) -> aws.iam.Role:
        """A role named and tagged `name` that principal (default: args.service) may assume."""
        return aws.iam.Role(
            name,
            tags=named(args.tags, name),
            opts=self.child,
            description=description,
            assume_role_policy=pulumi.Output.from_input(principal or {"Service": args.service}).apply(trust_policy),
            **extra,
        )

    def _policy(self, name: str, role: pulumi.Input[str], document: pulumi.Output[dict]) -> None:
        """An inline policy of role (its id), from the policy document."""
        aws.iam.RolePolicy(name, role=role, opts=self.child, policy=document.apply(json.dumps))
