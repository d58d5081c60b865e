"""Application secrets: generated once, kept in Secrets Manager, read by the server at boot."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from infra.components.base import Component
from infra.compose_model import OIDC_SECRET_ENV

# The generated keys of the JSON secret; the boot script and the ECS task read exactly these (and
# OIDC_CLIENT_SECRET in oidc mode).
SECRET_KEYS = ("MLFLOW_DB_PASSWORD", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY")


@dataclass
class AppSecretsArgs:
    """tags: merged into every resource. oidc_client_secret: the provider's client secret (oidc
    mode), stored beside the generated ones; None in basic mode. recovery_window_days: how long a
    deleted secret can be restored (0 = delete at once; only sensible in dev)."""

    tags: dict[str, str]
    oidc_client_secret: pulumi.Input[str] | None
    recovery_window_days: int = 30


class AppSecrets(Component[AppSecretsArgs]):
    secret_arn: pulumi.Output[str]

    def create(self, name: str, args: AppSecretsArgs) -> dict:
        values = {}
        for key in SECRET_KEYS:
            # Alphanumeric only: safe inside connection URIs, INI files and SQL literals.
            pw = random.RandomPassword(
                f"{name}-{key.lower().replace('_', '-')}", length=40, special=False, opts=self.child
            )
            values[key] = pulumi.Output.secret(pw.result)  # not secret under mocks otherwise
        if args.oidc_client_secret is not None:  # given by the operator: it cannot be generated
            (key,) = OIDC_SECRET_ENV
            values[key] = pulumi.Output.secret(args.oidc_client_secret)
        secret = aws.secretsmanager.Secret(
            name,
            description="MLflow server secrets (DB user, admin, Flask session key)",
            recovery_window_in_days=args.recovery_window_days,
            tags=self.tags,
            opts=self.child,
        )
        aws.secretsmanager.SecretVersion(
            f"{name}-value",
            secret_id=secret.id,
            secret_string=pulumi.Output.secret(pulumi.Output.all(**values).apply(json.dumps)),
            opts=self.child,
        )
        self.secret_arn = secret.arn
        return {"secret_arn": self.secret_arn}
