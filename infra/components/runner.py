"""A Lambda that Pulumi invokes to run one step and wait for it (ECS migrations, EC2 deploys):
its role, function, log group and role policy. A failed invocation fails `pulumi up`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pulumi
import pulumi_aws as aws
from pulumi import ResourceOptions

from infra.components.server_iam import trust_policy


def waiting_lambda(
    parent: pulumi.Resource,
    function_name: str,
    runner_name: str,
    *,
    description: str,
    source: Path,
    tags: dict,
    policy: Callable[[pulumi.Output[str]], pulumi.Output[str]],
) -> tuple[aws.lambda_.Function, list[pulumi.Resource]]:
    """The function (handler in `source`) and what an invocation must wait for (policy, logs).
    policy: the role's policy document (JSON) from the log group's ARN."""
    child = ResourceOptions(parent=parent)
    role = aws.iam.Role(
        runner_name,
        tags=tags,
        opts=child,
        description=description,
        assume_role_policy=trust_policy({"Service": "lambda.amazonaws.com"}),
    )
    fn = aws.lambda_.Function(
        function_name,
        runtime="python3.12",
        handler="index.handler",
        role=role.arn,
        timeout=900,
        memory_size=128,
        tags=tags,
        opts=child,
        code=pulumi.AssetArchive({"index.py": pulumi.StringAsset(source.read_text())}),
    )
    log_group = aws.cloudwatch.LogGroup(
        runner_name,
        name=fn.name.apply(lambda n: f"/aws/lambda/{n}"),
        retention_in_days=30,
        tags=tags,
        opts=child,
    )
    role_policy = aws.iam.RolePolicy(runner_name, role=role.id, opts=child, policy=policy(log_group.arn))
    return fn, [role_policy, log_group]


def logs_statement(log_group_arn: str) -> dict:
    return {
        "Sid": "Logs",
        "Effect": "Allow",
        "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
        "Resource": [f"{log_group_arn}:*"],
    }
