"""Typed stack configuration. Pulumi.yaml declares every key once (type, default, description);
StackConfig reads each key with the getter its declared type calls for."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import urlsplit

import pulumi
import yaml

from infra import REPO_ROOT

PULUMI_YAML = REPO_ROOT / "Pulumi.yaml"
ENVIRONMENTS = ("dev", "prod")
COMPUTE_MODES = ("ec2", "ecs")
AUTH_MODES = ("basic", "oidc")
# The sign-in settings, each the compose variable of its upper-cased name (AUTH_MODE, OIDC_ISSUER...).
AUTH_FIELDS = (
    "auth_mode",
    "oidc_issuer",
    "oidc_client_id",
    "oidc_audience",
    "oidc_groups_attribute",
    "oidc_group_name",
    "oidc_admin_group_name",
    "oidc_scope",
)
# Read with get_secret, and refused unless set with `pulumi config set --secret`. Not declared
# `secret: true` in Pulumi.yaml: the CLI refuses a secret key with a (plain) default, and basic
# mode needs none.
SECRET_CONFIG = ("oidcClientSecret",)
MAX_VPC_PREFIX = 17  # /24 subnets up to offset 101 (see infra/components/network.py)
# Declared type in Pulumi.yaml -> pulumi.Config getter and the Python type it returns.
GETTERS = {
    "string": ("get", str),
    "integer": ("get_int", int),
    "boolean": ("get_bool", bool),
    "array": ("get_object", list),
}


def config_key(field_name: str) -> str:
    """snake_case field -> the camelCase key in Pulumi.yaml."""
    first, *rest = field_name.split("_")
    return first + "".join(word.title() for word in rest)


def declared_config(path: Path = PULUMI_YAML) -> dict[str, dict]:
    """The project's own config keys (not `aws:...`) with their type and default."""
    return {k: v for k, v in yaml.safe_load(path.read_text())["config"].items() if ":" not in k}


def check_vpc_cidr(cidr: str) -> None:
    """The Network component carves /24 subnets at offsets 0.. (public) and 100.. (private): the
    range must hold at least 128 of them."""
    try:
        network = ipaddress.ip_network(cidr)
    except ValueError:
        raise ValueError(f"vpcCidr {cidr!r} is not an IPv4 network such as 10.20.0.0/16") from None
    if network.version != 4 or network.prefixlen > MAX_VPC_PREFIX:
        raise ValueError(f"vpcCidr {cidr!r} is too narrow: use a /{MAX_VPC_PREFIX} or wider (the default is a /16)")


def check_issuer(issuer: str) -> None:
    """The server fetches ISSUER/.well-known/openid-configuration and the JWKS over the internet:
    a real provider's https URL, not a loopback or plain-HTTP one (the trial `sso` provider)."""
    parts = urlsplit(issuer)
    if (
        parts.scheme != "https"
        or not parts.hostname
        or parts.query
        or parts.fragment
        or any(c.isspace() for c in issuer)
    ):
        raise ValueError(
            f"oidcIssuer must be the provider's https:// issuer URL (the `iss` of its tokens), got {issuer!r}"
        )


@dataclass(frozen=True)
class StackConfig:
    """Everything __main__ needs, read once from `pulumi config` (project namespace). No defaults
    here: they live in Pulumi.yaml only. An empty string means "not set" for optional ARNs/ids."""

    environment: str
    region: str
    public_host: str
    allowed_cidrs: list[str]
    owner: str
    compute_mode: str
    vpc_id: str
    public_subnet_ids: list[str]
    private_subnet_ids: list[str]
    vpc_cidr: str
    artifact_encryption: str
    noncurrent_version_days: int
    db_engine_version: str
    db_instance_class: str
    db_allocated_storage: int
    db_backup_retention_days: int
    instance_type: str
    ami_id: str
    mlflow_image_tag: str
    tls_certificate_secret_arn: str
    acm_certificate_arn: str
    ecs_min_tasks: int
    ecs_max_tasks: int
    ecs_requests_per_ip_per_minute: int
    alarm_email: str
    auth_mode: str
    oidc_issuer: str
    oidc_client_id: str
    oidc_client_secret: pulumi.Output[str] | None  # None: not set (basic mode needs none)
    oidc_audience: str
    oidc_groups_attribute: str
    oidc_group_name: str
    oidc_admin_group_name: str
    oidc_scope: str

    @property
    def is_prod(self) -> bool:
        return self.environment == "prod"

    @property
    def tags(self) -> dict[str, str]:
        """The one tag dict merged into every resource."""
        return {
            "project": "mlflow-tracking",
            "environment": self.environment,
            "owner": self.owner,
            "managed-by": "pulumi",
        }

    @property
    def auth_env(self) -> dict[str, str]:
        """The plain sign-in settings as compose variables (an empty value: the compose default).
        The client secret is not among them: it reaches the server from Secrets Manager."""
        return {name.upper(): getattr(self, name) for name in AUTH_FIELDS}

    def __post_init__(self) -> None:
        if self.environment not in ENVIRONMENTS:
            raise ValueError(f"environment must be one of {ENVIRONMENTS}, got {self.environment!r}")
        if self.compute_mode not in COMPUTE_MODES:
            raise ValueError(f"computeMode must be one of {COMPUTE_MODES}, got {self.compute_mode!r}")
        if not self.allowed_cidrs:
            raise ValueError("allowedCidrs must list who may reach the server (no default on purpose)")
        if self.compute_mode == "ecs" and not self.acm_certificate_arn:
            raise ValueError("computeMode ecs needs acmCertificateArn for the ALB's HTTPS listener")
        if self.compute_mode == "ec2" and self.is_prod and not self.tls_certificate_secret_arn:
            raise ValueError(
                "prod needs tlsCertificateSecretArn: clients must not be taught to accept a self-signed certificate"
            )
        if self.vpc_id and not (self.public_subnet_ids and self.private_subnet_ids):
            raise ValueError("vpcId needs publicSubnetIds and privateSubnetIds")
        if not self.vpc_id:
            check_vpc_cidr(self.vpc_cidr)
        # Target tracking scales on the CPU of running tasks: at 0 tasks there is no metric, and
        # the service would stay at 0 for good.
        if not 1 <= self.ecs_min_tasks <= self.ecs_max_tasks:
            raise ValueError(f"need 1 <= ecsMinTasks <= ecsMaxTasks, got {self.ecs_min_tasks}, {self.ecs_max_tasks}")
        # AWS WAF's rate-based rule limit range (AWS WAF Developer Guide, "Rate-based rule statement").
        if self.compute_mode == "ecs" and not 10 <= self.ecs_requests_per_ip_per_minute <= 2_000_000_000:
            raise ValueError(
                f"ecsRequestsPerIpPerMinute must be 10..2000000000, got {self.ecs_requests_per_ip_per_minute}"
            )
        if self.auth_mode not in AUTH_MODES:
            raise ValueError(f"authMode must be one of {AUTH_MODES}, got {self.auth_mode!r}")
        if any(c in value for value in self.auth_env.values() for c in "\r\n"):
            raise ValueError("authMode and oidc* values are one line each (they become lines of .env)")
        if self.auth_mode == "oidc":
            required = {
                "oidcIssuer": self.oidc_issuer,
                "oidcClientId": self.oidc_client_id,
                "oidcClientSecret": self.oidc_client_secret,
            }
            missing = [key for key, value in required.items() if not value]
            if missing:
                raise ValueError(f"authMode oidc needs {', '.join(missing)}: your provider's (docs/authentication.md)")
            check_issuer(self.oidc_issuer)

    @classmethod
    def load(cls) -> StackConfig:
        """Read each key with its declared type's getter; a missing key takes its Pulumi.yaml
        default (a configured 0, false, "" or [] is kept as given)."""
        c = pulumi.Config()
        declared = declared_config()
        values: dict = {}
        for f in fields(cls):
            if f.name == "region":
                continue
            key = config_key(f.name)
            if key in SECRET_CONFIG:
                values[f.name] = read_secret(c, key)
                continue
            spec = declared[key]
            value = getattr(c, GETTERS[spec["type"]][0])(key)
            if value is None:
                if "default" not in spec:
                    raise ValueError(f"config {key} is required (declared in Pulumi.yaml)")
                value = spec["default"]
            values[f.name] = value
        values["region"] = pulumi.Config("aws").require("region")
        return cls(**values)


def read_secret(c: pulumi.Config, key: str) -> pulumi.Output[str] | None:
    """A secret config value, or None when unset or empty. A value set without --secret sits in
    plain text in Pulumi.<stack>.yaml: refused."""
    value = c.get(key)
    if not value:
        return None
    if not pulumi.runtime.is_config_secret(c.full_key(key)):
        raise ValueError(f"{key} must be set with `pulumi config set --secret {key}`: it is in plain text now")
    return pulumi.Output.secret(value)
