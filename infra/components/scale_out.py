"""Compute (scale-out): the same MLflow image on ECS Fargate behind an ALB, with autoscaling."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
from pulumi import ResourceOptions

from infra.bundle import REPO_ROOT
from infra.components.compute import front_door_rules
from infra.pgconf import POSTGRESQL_CONF, parse_postgresql_conf

MLFLOW_PORT = 5000
# Per task: gunicorn workers x SQLAlchemy pool; no PgBouncer here, so this hits RDS directly.
WORKERS, POOL_SIZE, MAX_OVERFLOW = 2, 3, 2
RESERVED_CONNECTIONS = 15  # migrate step, admin sessions, RDS's own


def max_tasks_for_connections(max_connections: int | None = None) -> int:
    """How many tasks fit under PostgreSQL's max_connections (from postgres/postgresql.conf)."""
    if max_connections is None:
        max_connections = int(parse_postgresql_conf(POSTGRESQL_CONF.read_text())["max_connections"])
    # Each worker also opens the auth app's engine (same pool settings).
    per_task = WORKERS * 2 * (POOL_SIZE + MAX_OVERFLOW)
    return (max_connections - RESERVED_CONNECTIONS) // per_task


def auth_ini_for(db_host: str) -> str:
    """docker/basic_auth.ini with the auth database reached directly on RDS (no PgBouncer)."""
    text = (REPO_ROOT / "docker" / "basic_auth.ini").read_text()
    uri = f"postgresql+psycopg2://mlflow@{db_host}:5432/mlflow_auth?sslmode=require"
    return re.sub(r"(?m)^database_uri = .*$", f"database_uri = {uri}", text)


@dataclass
class ScaleOutArgs:
    """tags: merged into every resource. min_tasks/max_tasks: autoscaling bounds (max is checked
    against max_connections). acm_certificate_arn: the ALB's certificate for public_host.
    task_role_arn: the ServerIam role (also the execution role: it may read the same secrets)."""

    tags: dict[str, str]
    environment: str
    region: str
    vpc_id: pulumi.Input[str]
    public_subnet_ids: list
    private_subnet_ids: list
    server_security_group_id: pulumi.Input[str]
    allowed_cidrs: list[str]
    public_host: str
    acm_certificate_arn: str
    task_role_arn: pulumi.Input[str]
    task_role_name: pulumi.Input[str]
    bucket_name: pulumi.Input[str]
    app_secret_arn: pulumi.Input[str]
    db_secret_arn: pulumi.Input[str]
    db_address: pulumi.Input[str]
    mlflow_image: pulumi.Input[str]
    db_replica_address: pulumi.Input[str] | None = None
    min_tasks: int = 1
    max_tasks: int = 4


class ScaleOut(pulumi.ComponentResource):
    tracking_url: pulumi.Output[str]
    load_balancer_dns_name: pulumi.Output[str]

    def __init__(self, name: str, args: ScaleOutArgs, opts: ResourceOptions | None = None):
        super().__init__("mlflow:infra:ScaleOut", name, {}, opts)
        limit = max_tasks_for_connections()
        if args.max_tasks > limit:
            raise ValueError(f"max_tasks {args.max_tasks} would exceed max_connections (at most {limit})")
        child = ResourceOptions(parent=self)
        tags = {**args.tags, "Name": name}

        logs = aws.cloudwatch.LogGroup(f"{name}-logs", retention_in_days=30, tags=tags, opts=child)
        aws.iam.RolePolicy(f"{name}-logs", role=args.task_role_name, opts=child,
                           policy=logs.arn.apply(lambda arn: json.dumps({
                               "Version": "2012-10-17", "Statement": [{
                                   "Effect": "Allow", "Resource": [f"{arn}:*"],
                                   "Action": ["logs:CreateLogStream", "logs:PutLogEvents"]}]})))
        cluster = aws.ecs.Cluster(name, tags=tags, opts=child, settings=[
            aws.ecs.ClusterSettingArgs(name="containerInsights", value="enabled")])

        lb_sg = aws.ec2.SecurityGroup(f"{name}-alb", vpc_id=args.vpc_id, tags=tags, opts=child,
                                      description="ALB: HTTPS (and HTTP redirect) from allowed CIDRs")
        front_door_rules(f"{name}-alb", lb_sg.id, args.allowed_cidrs, args.tags, self)
        aws.vpc.SecurityGroupEgressRule(f"{name}-alb-egress", security_group_id=lb_sg.id,
                                        ip_protocol="tcp", from_port=MLFLOW_PORT, to_port=MLFLOW_PORT,
                                        referenced_security_group_id=args.server_security_group_id,
                                        tags=args.tags, opts=child)
        aws.vpc.SecurityGroupIngressRule(f"{name}-tasks-from-alb",
                                         security_group_id=args.server_security_group_id,
                                         ip_protocol="tcp", from_port=MLFLOW_PORT, to_port=MLFLOW_PORT,
                                         referenced_security_group_id=lb_sg.id, tags=args.tags,
                                         description="MLflow from the ALB", opts=child)
        alb = aws.lb.LoadBalancer(f"{name}-alb", load_balancer_type="application", internal=False,
                                  subnets=args.public_subnet_ids, security_groups=[lb_sg.id],
                                  drop_invalid_header_fields=True,
                                  enable_deletion_protection=args.environment == "prod",
                                  tags=tags, opts=child)
        tg = aws.lb.TargetGroup(f"{name}-mlflow", port=MLFLOW_PORT, protocol="HTTP", target_type="ip",
                                vpc_id=args.vpc_id, tags=tags, opts=child,
                                health_check=aws.lb.TargetGroupHealthCheckArgs(path="/health", matcher="200"))
        aws.lb.Listener(f"{name}-https", load_balancer_arn=alb.arn, port=443, protocol="HTTPS",
                        ssl_policy="ELBSecurityPolicy-TLS13-1-2-2021-06",
                        certificate_arn=args.acm_certificate_arn, tags=tags, opts=child,
                        default_actions=[aws.lb.ListenerDefaultActionArgs(type="forward",
                                                                          target_group_arn=tg.arn)])
        aws.lb.Listener(f"{name}-http", load_balancer_arn=alb.arn, port=80, protocol="HTTP",
                        tags=tags, opts=child, default_actions=[aws.lb.ListenerDefaultActionArgs(
                            type="redirect", redirect=aws.lb.ListenerDefaultActionRedirectArgs(
                                port="443", protocol="HTTPS", status_code="HTTP_301"))])

        containers = pulumi.Output.all(
            args.mlflow_image, args.db_address, args.bucket_name, args.app_secret_arn,
            args.db_secret_arn, logs.name, args.db_replica_address or "").apply(
                lambda a: json.dumps(self._containers(args, *a)))
        task = aws.ecs.TaskDefinition(
            name, family=name, cpu="1024", memory="2048", network_mode="awsvpc",
            requires_compatibilities=["FARGATE"], task_role_arn=args.task_role_arn,
            execution_role_arn=args.task_role_arn, container_definitions=containers,
            runtime_platform=aws.ecs.TaskDefinitionRuntimePlatformArgs(
                operating_system_family="LINUX", cpu_architecture="X86_64"),
            tags=tags, opts=child)
        service = aws.ecs.Service(
            name, cluster=cluster.arn, task_definition=task.arn, desired_count=args.min_tasks,
            launch_type="FARGATE", health_check_grace_period_seconds=120, propagate_tags="SERVICE",
            network_configuration=aws.ecs.ServiceNetworkConfigurationArgs(
                subnets=args.private_subnet_ids, security_groups=[args.server_security_group_id],
                assign_public_ip=False),
            load_balancers=[aws.ecs.ServiceLoadBalancerArgs(
                target_group_arn=tg.arn, container_name="mlflow", container_port=MLFLOW_PORT)],
            deployment_circuit_breaker=aws.ecs.ServiceDeploymentCircuitBreakerArgs(enable=True, rollback=True),
            tags=tags, opts=ResourceOptions(parent=self, ignore_changes=["desiredCount"]))
        target = aws.appautoscaling.Target(
            f"{name}-scaling", service_namespace="ecs", scalable_dimension="ecs:service:DesiredCount",
            resource_id=pulumi.Output.concat("service/", cluster.name, "/", service.name),
            min_capacity=args.min_tasks, max_capacity=args.max_tasks, tags=tags, opts=child)
        aws.appautoscaling.Policy(
            f"{name}-cpu", policy_type="TargetTrackingScaling", resource_id=target.resource_id,
            scalable_dimension=target.scalable_dimension, service_namespace=target.service_namespace,
            target_tracking_scaling_policy_configuration=aws.appautoscaling.PolicyTargetTrackingScalingPolicyConfigurationArgs(
                target_value=60, predefined_metric_specification=aws.appautoscaling.PolicyTargetTrackingScalingPolicyConfigurationPredefinedMetricSpecificationArgs(
                    predefined_metric_type="ECSServiceAverageCPUUtilization")), opts=child)

        self.tracking_url = pulumi.Output.from_input(f"https://{args.public_host}")
        self.load_balancer_dns_name = alb.dns_name
        self.register_outputs({"tracking_url": self.tracking_url})

    @staticmethod
    def _containers(args: ScaleOutArgs, image, db_host, bucket, app_secret, db_secret, log_group,
                    replica_host) -> list[dict]:
        """Container definitions: a one-shot `migrate` (as in compose), then the MLflow server."""
        log = lambda prefix: {"logDriver": "awslogs", "options": {  # noqa: E731
            "awslogs-group": log_group, "awslogs-region": args.region, "awslogs-stream-prefix": prefix}}
        app = lambda key: f"{app_secret}:{key}::"  # noqa: E731 (ECS reads one JSON key of a secret)
        uri = f"postgresql+psycopg2://mlflow@{db_host}:5432/mlflow?sslmode=require"
        command = ["mlflow", "server", "--app-name", "basic-auth", "--host", "0.0.0.0",
                   "--port", str(MLFLOW_PORT), "--workers", str(WORKERS)]
        if replica_host:
            command += ["--read-replica-backend-store-uri",
                        f"postgresql+psycopg2://mlflow@{replica_host}:5432/mlflow?sslmode=require"]
        # ECS has no bind mounts: the auth INI (no secret in it) travels as an env var.
        shell = 'printf "%s" "$MLFLOW_AUTH_INI" > /tmp/basic_auth.ini && exec "$@"'
        return [
            {"name": "migrate", "image": image, "essential": False,
             "command": ["python", "-m", "scripts.migrate"], "logConfiguration": log("migrate"),
             "environment": [{"name": "POSTGRES_HOST", "value": db_host},
                             {"name": "POSTGRES_PORT", "value": "5432"},
                             {"name": "POSTGRES_USER", "value": "postgres"},
                             {"name": "PGSSLMODE", "value": "require"}],
             "secrets": [{"name": "POSTGRES_PASSWORD", "valueFrom": f"{db_secret}:password::"},
                         {"name": "MLFLOW_DB_PASSWORD", "valueFrom": app("MLFLOW_DB_PASSWORD")}]},
            {"name": "mlflow", "image": image, "essential": True,
             "dependsOn": [{"containerName": "migrate", "condition": "SUCCESS"}],
             "entryPoint": ["sh", "-c", shell, "sh"], "command": command,
             "portMappings": [{"containerPort": MLFLOW_PORT, "protocol": "tcp"}],
             "logConfiguration": log("mlflow"), "readonlyRootFilesystem": False,
             "environment": [
                 {"name": "MLFLOW_BACKEND_STORE_URI", "value": uri},
                 {"name": "MLFLOW_AUTH_INI", "value": auth_ini_for(db_host)},
                 {"name": "MLFLOW_AUTH_CONFIG_PATH", "value": "/tmp/basic_auth.ini"},
                 {"name": "MLFLOW_AUTH_ADMIN_USERNAME", "value": "admin"},
                 {"name": "MLFLOW_SERVER_ALLOWED_HOSTS", "value": args.public_host},
                 {"name": "MLFLOW_ARTIFACTS_DESTINATION", "value": f"s3://{bucket}"},
                 {"name": "AWS_DEFAULT_REGION", "value": args.region},
                 {"name": "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "value": "false"},
                 {"name": "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE", "value": str(POOL_SIZE)},
                 {"name": "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW", "value": str(MAX_OVERFLOW)},
                 {"name": "MLFLOW_SQLALCHEMYSTORE_POOL_RECYCLE", "value": "1800"},
                 {"name": "MLFLOW_GUNICORN_OPTS",
                  "value": "--worker-class gthread --threads 2 --timeout 600 --no-control-socket"}],
             "secrets": [{"name": "PGPASSWORD", "valueFrom": app("MLFLOW_DB_PASSWORD")},
                         {"name": "MLFLOW_AUTH_ADMIN_PASSWORD", "valueFrom": app("MLFLOW_ADMIN_PASSWORD")},
                         {"name": "MLFLOW_FLASK_SERVER_SECRET_KEY",
                          "valueFrom": app("MLFLOW_FLASK_SERVER_SECRET_KEY")}]},
        ]
