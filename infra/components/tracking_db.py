"""Tracking database: RDS PostgreSQL in private subnets, tuned from postgres/postgresql.conf."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_random as random
from pulumi import ResourceOptions

from infra.components.base import Component
from infra.components.server import tcp_rule
from infra.compose_model import POSTGRES_PORT
from infra.pgconf import rds_parameters

# The compose stack's PostgreSQL major: RDS runs the same one (parameter group family postgres17).
POSTGRES_MAJOR = "17"
# The base compose file's migrate step connects as `postgres` (RDS's default master name too).
MASTER_USERNAME = "postgres"


@dataclass
class TrackingDbArgs:
    """tags: merged into every resource. environment: 'prod' turns on Multi-AZ, deletion protection
    and a final snapshot. subnet_ids: private subnets (two AZs). server_security_group_id: the only
    source allowed on POSTGRES_PORT. engine_version: PostgreSQL 17 (a major or a 17.x minor), matching the
    compose image. backup_retention_days: automated backups (forced to at least 7 in prod).
    min_connections: what the clients need at most (max_connections is raised to it). No initial
    database: the compose `migrate` step creates `mlflow` and `mlflow_auth` owned by the `mlflow`
    role. The master password is generated and kept by RDS in Secrets Manager
    (manage_master_user_password, rotated every 7 days), never by Pulumi."""

    tags: dict[str, str]
    environment: str
    vpc_id: pulumi.Input[str]
    subnet_ids: list
    server_security_group_id: pulumi.Input[str]
    engine_version: str
    instance_class: str
    allocated_storage: int
    backup_retention_days: int
    min_connections: int
    max_allocated_storage: int = 100

    @property
    def is_prod(self) -> bool:
        return self.environment == "prod"


class TrackingDb(Component[TrackingDbArgs]):
    endpoint: pulumi.Output[str]
    address: pulumi.Output[str]
    port: pulumi.Output[int]
    master_secret_arn: pulumi.Output[str]
    identifier: pulumi.Output[str]

    def create(self, name: str, args: TrackingDbArgs) -> dict:
        major = args.engine_version.split(".")[0]
        if major != POSTGRES_MAJOR:
            raise ValueError(
                f"engine_version must be PostgreSQL {POSTGRES_MAJOR} (what the compose "
                f"stack runs), got {args.engine_version!r}"
            )

        sg = aws.ec2.SecurityGroup(
            f"{name}-sg",
            vpc_id=args.vpc_id,
            tags=self.tags,
            opts=self.child,
            description="PostgreSQL: only from the MLflow server",
        )
        tcp_rule(
            aws.vpc.SecurityGroupIngressRule,
            f"{name}-from-server",
            sg.id,
            POSTGRES_PORT,
            args.tags,
            self,
            referenced_security_group_id=args.server_security_group_id,
            description="PostgreSQL from the MLflow server",
        )
        subnets = aws.rds.SubnetGroup(f"{name}-subnets", subnet_ids=args.subnet_ids, tags=self.tags, opts=self.child)
        params = aws.rds.ParameterGroup(
            f"{name}-params",
            family=f"postgres{major}",
            tags=self.tags,
            opts=self.child,
            description=f"postgres/postgresql.conf sized for {args.instance_class}, plus rds.force_ssl",
            parameters=[
                aws.rds.ParameterGroupParameterArgs(**p)
                for p in rds_parameters(args.instance_class, args.min_connections)
            ],
        )

        # RDS refuses a final snapshot name that exists: a new suffix for every database instance.
        snapshot_suffix = (
            random.RandomId(f"{name}-final-snapshot", byte_length=4, opts=self.child) if args.is_prod else None
        )
        backups = max(args.backup_retention_days, 7) if args.is_prod else max(args.backup_retention_days, 1)
        primary = aws.rds.Instance(
            name,
            engine="postgres",
            engine_version=args.engine_version,
            instance_class=args.instance_class,
            allocated_storage=args.allocated_storage,
            max_allocated_storage=args.max_allocated_storage,
            storage_type="gp3",
            storage_encrypted=True,
            username=MASTER_USERNAME,
            manage_master_user_password=True,
            port=POSTGRES_PORT,
            db_subnet_group_name=subnets.name,
            vpc_security_group_ids=[sg.id],
            parameter_group_name=params.name,
            publicly_accessible=False,
            backup_retention_period=backups,
            copy_tags_to_snapshot=True,
            multi_az=args.is_prod,
            deletion_protection=args.is_prod,
            skip_final_snapshot=not args.is_prod,
            final_snapshot_identifier=snapshot_suffix.hex.apply(lambda h: f"{name}-final-{h}")
            if snapshot_suffix
            else None,
            auto_minor_version_upgrade=True,
            iam_database_authentication_enabled=False,
            allow_major_version_upgrade=True,  # 16 -> 17 for stacks created before the move to 17
            performance_insights_enabled=args.is_prod,
            enabled_cloudwatch_logs_exports=["postgresql"],
            apply_immediately=not args.is_prod,
            tags=self.tags,
            opts=ResourceOptions(parent=self, protect=args.is_prod),
        )

        self.endpoint = primary.endpoint
        self.address = primary.address
        self.port = primary.port
        self.identifier = primary.identifier
        self.master_secret_arn = primary.master_user_secrets.apply(lambda s: s[0].secret_arn)
        return {"endpoint": self.endpoint, "master_secret_arn": self.master_secret_arn}
