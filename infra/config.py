"""Typed stack configuration: every key is declared (with its default) in Pulumi.yaml."""
from __future__ import annotations

from dataclasses import dataclass, field

import pulumi

ENVIRONMENTS = ("dev", "prod")
COMPUTE_MODES = ("ec2", "ecs")


@dataclass(frozen=True)
class StackConfig:
    """Everything __main__ needs, read once from `pulumi config` (project namespace)."""

    environment: str
    region: str
    public_host: str
    allowed_cidrs: list[str]
    owner: str = "platform"
    compute_mode: str = "ec2"
    vpc_id: str | None = None
    public_subnet_ids: list[str] = field(default_factory=list)
    private_subnet_ids: list[str] = field(default_factory=list)
    vpc_cidr: str = "10.20.0.0/16"
    artifact_encryption: str = "sse-kms"
    noncurrent_version_days: int = 30
    db_engine_version: str = "16"
    db_instance_class: str = "db.t4g.small"
    db_allocated_storage: int = 20
    db_backup_retention_days: int = 7
    db_read_replica: bool = False
    instance_type: str = "t3.medium"
    mlflow_image_tag: str = "latest"
    tls_certificate_secret_arn: str | None = None
    acm_certificate_arn: str | None = None
    ecs_min_tasks: int = 1
    ecs_max_tasks: int = 4

    @property
    def is_prod(self) -> bool:
        return self.environment == "prod"

    @property
    def tags(self) -> dict[str, str]:
        """The one tag dict merged into every resource."""
        return {"project": "mlflow-tracking", "environment": self.environment,
                "owner": self.owner, "managed-by": "pulumi"}

    def __post_init__(self) -> None:
        if self.environment not in ENVIRONMENTS:
            raise ValueError(f"environment must be one of {ENVIRONMENTS}, got {self.environment!r}")
        if self.compute_mode not in COMPUTE_MODES:
            raise ValueError(f"computeMode must be one of {COMPUTE_MODES}, got {self.compute_mode!r}")
        if not self.allowed_cidrs:
            raise ValueError("allowedCidrs must list who may reach the server (no default on purpose)")
        if self.compute_mode == "ecs" and not self.acm_certificate_arn:
            raise ValueError("computeMode ecs needs acmCertificateArn for the ALB's HTTPS listener")
        if self.vpc_id and not (self.public_subnet_ids and self.private_subnet_ids):
            raise ValueError("vpcId needs publicSubnetIds and privateSubnetIds")

    @classmethod
    def load(cls) -> "StackConfig":
        c = pulumi.Config()
        defaults = cls.__dataclass_fields__

        def d(name: str):
            f = defaults[name]
            return f.default_factory() if callable(f.default_factory) else f.default

        return cls(
            environment=c.require("environment"),
            region=pulumi.Config("aws").require("region"),
            public_host=c.require("publicHost"),
            allowed_cidrs=c.require_object("allowedCidrs"),
            owner=c.get("owner") or d("owner"),
            compute_mode=c.get("computeMode") or d("compute_mode"),
            vpc_id=c.get("vpcId"),
            public_subnet_ids=c.get_object("publicSubnetIds") or [],
            private_subnet_ids=c.get_object("privateSubnetIds") or [],
            vpc_cidr=c.get("vpcCidr") or d("vpc_cidr"),
            artifact_encryption=c.get("artifactEncryption") or d("artifact_encryption"),
            noncurrent_version_days=c.get_int("noncurrentVersionDays") or d("noncurrent_version_days"),
            db_engine_version=c.get("dbEngineVersion") or d("db_engine_version"),
            db_instance_class=c.get("dbInstanceClass") or d("db_instance_class"),
            db_allocated_storage=c.get_int("dbAllocatedStorage") or d("db_allocated_storage"),
            db_backup_retention_days=c.get_int("dbBackupRetentionDays") or d("db_backup_retention_days"),
            db_read_replica=c.get_bool("dbReadReplica") or False,
            instance_type=c.get("instanceType") or d("instance_type"),
            mlflow_image_tag=c.get("mlflowImageTag") or d("mlflow_image_tag"),
            tls_certificate_secret_arn=c.get("tlsCertificateSecretArn"),
            acm_certificate_arn=c.get("acmCertificateArn"),
            ecs_min_tasks=c.get_int("ecsMinTasks") or d("ecs_min_tasks"),
            ecs_max_tasks=c.get_int("ecsMaxTasks") or d("ecs_max_tasks"),
        )
