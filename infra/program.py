"""Wire the components together for one stack; returns the stack outputs (no secret among them)."""

from __future__ import annotations

import pulumi

from infra.components.alarms import Alarms, AlarmsArgs
from infra.components.app_secrets import AppSecrets, AppSecretsArgs
from infra.components.artifact_store import ArtifactStore, ArtifactStoreArgs
from infra.components.compute import Compute, ComputeArgs
from infra.components.network import Network, NetworkArgs
from infra.components.registry import ImageRegistry, ImageRegistryArgs, image_present
from infra.components.scale_out import ScaleOut, ScaleOutArgs, connections_needed
from infra.components.server_iam import ServerIam, ServerIamArgs
from infra.components.tracking_db import TrackingDb, TrackingDbArgs
from infra.config import StackConfig
from infra.connection_budget import connection_budget


def build(cfg: StackConfig) -> dict[str, pulumi.Input]:
    tags, prefix = cfg.tags, f"mlflow-{cfg.environment}"
    ecs = cfg.compute_mode == "ecs"
    budget = connection_budget()  # refuses files that break the connection budget
    network = Network(
        prefix,
        NetworkArgs(
            tags=tags,
            region=cfg.region,
            vpc_id=cfg.vpc_id or None,
            cidr=cfg.vpc_cidr,
            public_subnet_ids=cfg.public_subnet_ids,
            private_subnet_ids=cfg.private_subnet_ids,
        ),
    )
    store = ArtifactStore(
        f"{prefix}-artifacts",
        ArtifactStoreArgs(
            tags=tags,
            environment=cfg.environment,
            encryption=cfg.artifact_encryption,
            noncurrent_version_days=cfg.noncurrent_version_days,
            force_destroy=not cfg.is_prod,
        ),
    )
    db = TrackingDb(
        f"{prefix}-db",
        TrackingDbArgs(
            tags=tags,
            environment=cfg.environment,
            vpc_id=network.vpc_id,
            subnet_ids=network.private_subnet_ids,
            server_security_group_id=network.server_security_group_id,
            engine_version=cfg.db_engine_version,
            instance_class=cfg.db_instance_class,
            allocated_storage=cfg.db_allocated_storage,
            backup_retention_days=cfg.db_backup_retention_days,
            # EC2 goes through PgBouncer, whose pools postgresql.conf's max_connections covers.
            min_connections=connections_needed(budget, cfg.ecs_max_tasks) if ecs else 0,
        ),
    )
    alarms = Alarms(f"{prefix}-alarms", AlarmsArgs(tags=tags, db_identifier=db.identifier, email=cfg.alarm_email))
    secrets = AppSecrets(
        f"{prefix}-app-secrets",
        AppSecretsArgs(
            tags=tags,
            oidc_client_secret=cfg.oidc_client_secret if cfg.auth_mode == "oidc" else None,
            recovery_window_days=30 if cfg.is_prod else 0,
        ),
    )
    registry = ImageRegistry(f"{prefix}-mlflow", ImageRegistryArgs(tags=tags, force_delete=not cfg.is_prod))
    secret_arns = [secrets.secret_arn, db.master_secret_arn]
    if cfg.tls_certificate_secret_arn and not ecs:
        secret_arns.append(cfg.tls_certificate_secret_arn)
    iam = ServerIam(
        f"{prefix}-server",
        ServerIamArgs(
            tags=tags,
            bucket_arn=store.bucket_arn,
            secret_arns=secret_arns,
            kms_key_arn=store.kms_key_arn,
            repository_arn=registry.repository_arn,
            service="ecs-tasks.amazonaws.com" if ecs else "ec2.amazonaws.com",
        ),
    )
    image = pulumi.Output.concat(registry.repository_url, ":", cfg.mlflow_image_tag)

    common = dict(
        tags=tags,
        environment=cfg.environment,
        region=cfg.region,
        vpc_id=network.vpc_id,
        public_subnet_ids=network.public_subnet_ids,
        private_subnet_ids=network.private_subnet_ids,
        server_security_group_id=network.server_security_group_id,
        allowed_cidrs=cfg.allowed_cidrs,
        public_host=cfg.public_host,
        bucket_name=store.bucket_name,
        app_secret_arn=secrets.secret_arn,
        db_secret_arn=db.master_secret_arn,
        db_address=db.address,
        mlflow_image=image,
        image_present=image_present(registry.repository_name, cfg.mlflow_image_tag),
        alarm_topic_arn=alarms.topic_arn,
        auth_env=cfg.auth_env,
    )
    outputs: dict[str, pulumi.Input] = {}
    if ecs:
        server = ScaleOut(
            f"{prefix}-service",
            ScaleOutArgs(
                **common,
                acm_certificate_arn=cfg.acm_certificate_arn,
                task_role_arn=iam.role.arn,
                execution_role_arn=iam.execution_role.arn,
                execution_role_name=iam.execution_role.name,
                min_tasks=cfg.ecs_min_tasks,
                max_tasks=cfg.ecs_max_tasks,
                requests_per_ip_per_minute=cfg.ecs_requests_per_ip_per_minute,
            ),
        )
        outputs.update(ecs_cluster_name=server.cluster_name, ecs_service_name=server.service_name)
    else:
        server = Compute(
            f"{prefix}-server",
            ComputeArgs(
                **common,
                instance_profile_name=iam.instance_profile.name,
                artifact_role_arn=iam.artifact_role.arn,
                tls_secret_arn=cfg.tls_certificate_secret_arn,
                instance_type=cfg.instance_type,
                ami_id=cfg.ami_id,
                db_port=db.port,
            ),
        )
        outputs["instance_id"] = server.instance_id

    return {
        "tracking_url": server.tracking_url,
        "load_balancer_dns_name": server.load_balancer_dns_name,
        "artifact_bucket_name": store.bucket_name,
        "db_instance_endpoint": db.endpoint,
        "db_master_secret_arn": db.master_secret_arn,
        "app_secret_arn": secrets.secret_arn,
        "image_repository_url": registry.repository_url,
        "server_role_arn": iam.role.arn,
        "alarm_topic_arn": alarms.topic_arn,
        "vpc_id": network.vpc_id,
        **outputs,
    }
