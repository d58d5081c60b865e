"""Compute (scale-out): the same MLflow image on ECS Fargate behind an ALB, with autoscaling.
The container definitions are derived from the resolved compose model (the `mlflow` and `migrate`
services), never restated. Migrations run once per deploy, as their own one-shot task."""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_aws as aws
from pulumi import ResourceOptions

from infra import REPO_ROOT
from infra.bundle import EC2_CREDENTIALS_ENV, MADE_AT_BOOT
from infra.components.base import Component
from infra.components.runner import logs_statement, waiting_lambda
from infra.components.server import ServerArgs, front_door, internet_load_balancer, tcp_rule
from infra.compose_model import (
    aws_env,
    bind_mounts,
    derive_container,
    on_rds,
    option,
    placeholder_model,
    resolve,
    secret_env,
)
from infra.connection_budget import Budget

# A rolling deploy starts the new tasks before it stops the old ones: up to twice the tasks.
DEPLOY_MAX_PERCENT = 200
MIGRATE_RUNNER = Path(__file__).resolve().parent.parent / "migrate_runner.py"
# The init container writes the mlflow service's bind-mounted files (ECS has no bind mounts).
WRITE_FILES = (
    "import json, os\n"
    "for path, text in json.loads(os.environ['CONFIG_FILES']).items():\n"
    "    open(path, 'w').write(text)\n"
)


def nginx_proxy_timeout(template: Path = REPO_ROOT / "nginx" / "mlflow.conf.template") -> int:
    """Seconds Nginx (EC2 mode) lets a proxied request run: the ALB's idle timeout matches it. Its
    default of 60 s cuts large artifact transfers, which MLflow spools whole before it answers."""
    return int(re.search(r"^\s*proxy_read_timeout (\d+)s;", template.read_text(), re.M).group(1))


def connections_needed(budget: Budget, max_tasks: int) -> int:
    """max_connections for ECS: every task at max scale connects directly (no PgBouncer), twice
    as many while a rolling deploy runs old and new tasks side by side."""
    return budget.max_connections_needed(direct_servers=max_tasks * DEPLOY_MAX_PERCENT // 100)


def carried_mounts(service: dict) -> list[tuple[str, str]]:
    """The bind mounts a task carries: all but what the EC2 host makes at boot (its artifact
    credentials: a task has its task role)."""
    return [(src, target) for src, target in bind_mounts(service) if Path(src).parts[0] not in MADE_AT_BOOT]


def config_volumes(service: dict) -> dict[str, str]:
    """Task volume name -> directory, for each directory that receives a bind-mounted file."""
    dirs = sorted({posixpath.dirname(target) for _, target in carried_mounts(service)})
    return {f"config{i}": d for i, d in enumerate(dirs)}


def task_definitions(
    model: dict, *, image: str, db_host: str, secrets: dict[str, str], log: dict, region: str
) -> dict[str, list[dict]]:
    """{"service": [config init, mlflow], "migrate": [migrate]} from the resolved compose model."""
    names = set(model["services"])
    logging = lambda prefix: {
        "logDriver": "awslogs",
        "options": {  # noqa: E731
            **log,
            "awslogs-region": region,
            "awslogs-stream-prefix": prefix,
        },
    }
    mlflow_service = model["services"]["mlflow"]
    volumes = config_volumes(mlflow_service)
    files = {}
    for source, target in carried_mounts(mlflow_service):
        if not (REPO_ROOT / source).is_file():
            raise ValueError(f"mlflow mounts the directory {source}: ECS can only carry files")
        files[target] = on_rds((REPO_ROOT / source).read_text(), db_host, names)
    mounts = [{"sourceVolume": v, "containerPath": d} for v, d in volumes.items()]
    init = {
        "name": "config",
        "image": image,
        "essential": False,
        "user": "0",
        "command": ["python", "-c", WRITE_FILES],
        "environment": [{"name": "CONFIG_FILES", "value": json.dumps(files)}],
        "mountPoints": mounts,
        "logConfiguration": logging("config"),
    }
    mlflow = derive_container(model, "mlflow", image=image, secrets=secrets, db_host=db_host)
    mlflow["environment"] = [e for e in mlflow["environment"] if e["name"] not in EC2_CREDENTIALS_ENV]
    port = int(option(mlflow["command"], "--port") or 5000)
    mlflow.update(
        portMappings=[{"containerPort": port, "protocol": "tcp"}],
        mountPoints=[{**m, "readOnly": True} for m in mounts],
        dependsOn=[{"containerName": "config", "condition": "SUCCESS"}],
        logConfiguration=logging("mlflow"),
    )
    migrate = derive_container(model, "migrate", image=image, secrets=secrets, db_host=db_host)
    migrate.update(logConfiguration=logging("migrate"))
    return {"service": [init, mlflow], "migrate": [migrate]}


def lambda_runner_policy(migrate_family_arn: str, cluster_arn: str, role_arns: list[str], log_group_arn: str) -> dict:
    """Run the migrate task definition (any revision), watch its tasks, pass it its role, log."""
    family = migrate_family_arn
    tasks = cluster_arn.replace(":cluster/", ":task/", 1) + "/*"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "RunMigrate", "Effect": "Allow", "Action": ["ecs:RunTask"], "Resource": [f"{family}:*"]},
            {"Sid": "WatchMigrate", "Effect": "Allow", "Action": ["ecs:DescribeTasks"], "Resource": [tasks]},
            {"Sid": "PassTaskRole", "Effect": "Allow", "Action": ["iam:PassRole"], "Resource": sorted(role_arns)},
            logs_statement(log_group_arn),
        ],
    }


def rate_limit_acl(name: str, per_minute: int) -> dict:
    """A regional WAF web ACL: each client address above PER_MINUTE requests in a one-minute
    window is answered 429 until its rate drops. WAF sees requests, never MLflow's answers, so
    unlike Nginx (which counts only 401s) every request counts, a valid user's too; it bounds
    password guessing and the scrypt check each guess costs to that rate per address."""
    metric = name.replace("-", "_")[:100]
    return dict(
        scope="REGIONAL",
        default_action=aws.wafv2.WebAclDefaultActionArgs(allow=aws.wafv2.WebAclDefaultActionAllowArgs()),
        rules=[
            aws.wafv2.WebAclRuleArgs(
                name="requests-per-ip",
                priority=1,
                action=aws.wafv2.WebAclRuleActionArgs(
                    block=aws.wafv2.WebAclRuleActionBlockArgs(
                        custom_response=aws.wafv2.WebAclRuleActionBlockCustomResponseArgs(response_code=429)
                    )
                ),
                statement=aws.wafv2.WebAclRuleStatementArgs(
                    rate_based_statement=aws.wafv2.WebAclRuleStatementRateBasedStatementArgs(
                        aggregate_key_type="IP", limit=per_minute, evaluation_window_sec=60
                    )
                ),
                visibility_config=aws.wafv2.WebAclRuleVisibilityConfigArgs(
                    cloudwatch_metrics_enabled=True, metric_name=f"{metric}_per_ip", sampled_requests_enabled=True
                ),
            )
        ],
        visibility_config=aws.wafv2.WebAclVisibilityConfigArgs(
            cloudwatch_metrics_enabled=True, metric_name=metric, sampled_requests_enabled=True
        ),
    )


@dataclass
class ScaleOutArgs(ServerArgs):
    """min_tasks/max_tasks: autoscaling bounds (the database's max_connections covers max_tasks,
    see connections_needed). acm_certificate_arn: the ALB's certificate for public_host (ACM
    renews it). task_role_arn: what MLflow runs as (the bucket only). execution_role_arn/_name:
    what ECS starts the task with (image pull, secrets, logs). requests_per_ip_per_minute: the
    WAF's per-address rate limit (rate_limit_acl)."""

    acm_certificate_arn: str
    task_role_arn: pulumi.Input[str]
    execution_role_arn: pulumi.Input[str]
    execution_role_name: pulumi.Input[str]
    min_tasks: int
    max_tasks: int
    requests_per_ip_per_minute: int


class ScaleOut(Component[ScaleOutArgs]):
    tracking_url: pulumi.Output[str]
    load_balancer_dns_name: pulumi.Output[str]
    cluster_name: pulumi.Output[str]
    service_name: pulumi.Output[str]

    def create(self, name: str, args: ScaleOutArgs) -> dict:
        self.present = pulumi.Output.from_input(args.image_present)
        mlflow_service = placeholder_model()["services"]["mlflow"]
        port = int(option(mlflow_service["command"], "--port") or 5000)

        logs, cluster = self._logs_and_cluster()
        alb, tg, listeners = self._load_balancer(port)
        self._rate_limit(alb)
        task, migrate_task = self._task_definitions(mlflow_service, logs)
        migration = self._run_once(name, args, self.tags, cluster, migrate_task, self.present)
        service = self._service(cluster, task, tg, port, depends_on=[*listeners, migration])
        self._alarms(alb, tg)

        self.tracking_url = pulumi.Output.from_input(f"https://{args.public_host}")
        self.load_balancer_dns_name = alb.dns_name
        self.cluster_name = cluster.name
        self.service_name = service.name
        return {"tracking_url": self.tracking_url}

    def _logs_and_cluster(self):
        """The task log group (written with the execution role) and the cluster."""
        name, args, tags, child = self.name, self.args, self.tags, self.child
        logs = aws.cloudwatch.LogGroup(f"{name}-logs", retention_in_days=30, tags=tags, opts=child)
        aws.iam.RolePolicy(
            f"{name}-logs",
            role=args.execution_role_name,  # the awslogs driver writes with the execution role
            opts=child,
            policy=logs.arn.apply(
                lambda arn: json.dumps(
                    {
                        "Version": "2012-10-17",
                        "Statement": [
                            {
                                "Effect": "Allow",
                                "Resource": [f"{arn}:*"],
                                "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                            }
                        ],
                    }
                )
            ),
        )
        cluster = aws.ecs.Cluster(
            name,
            tags=tags,
            opts=child,
            settings=[aws.ecs.ClusterSettingArgs(name="containerInsights", value="enabled")],
        )

        return logs, cluster

    def _load_balancer(self, port: int):
        """The ALB and its security group, target group and listeners (HTTP redirects to HTTPS)."""
        name, args, tags, child = self.name, self.args, self.tags, self.child
        lb_sg = front_door(f"{name}-alb", "ALB: HTTPS (and HTTP redirect) from allowed CIDRs", args, tags, self)
        tcp_rule(
            aws.vpc.SecurityGroupEgressRule,
            f"{name}-alb-egress",
            lb_sg.id,
            port,
            args.tags,
            self,
            referenced_security_group_id=args.server_security_group_id,
        )
        tcp_rule(
            aws.vpc.SecurityGroupIngressRule,
            f"{name}-tasks-from-alb",
            args.server_security_group_id,
            port,
            args.tags,
            self,
            referenced_security_group_id=lb_sg.id,
            description="MLflow from the ALB",
        )
        alb = internet_load_balancer(
            f"{name}-alb",
            "application",
            lb_sg,
            args,
            tags,
            self,
            drop_invalid_header_fields=True,
            idle_timeout=nginx_proxy_timeout(),
        )
        tg = aws.lb.TargetGroup(
            f"{name}-tg",
            port=port,
            protocol="HTTP",
            target_type="ip",
            vpc_id=args.vpc_id,
            tags=tags,
            opts=child,
            health_check=aws.lb.TargetGroupHealthCheckArgs(path="/health", matcher="200"),
        )
        https = aws.lb.Listener(
            f"{name}-https",
            load_balancer_arn=alb.arn,
            port=443,
            protocol="HTTPS",
            ssl_policy="ELBSecurityPolicy-TLS13-1-2-2021-06",
            certificate_arn=args.acm_certificate_arn,
            tags=tags,
            opts=child,
            default_actions=[aws.lb.ListenerDefaultActionArgs(type="forward", target_group_arn=tg.arn)],
        )
        http = aws.lb.Listener(
            f"{name}-http",
            load_balancer_arn=alb.arn,
            port=80,
            protocol="HTTP",
            tags=tags,
            opts=child,
            default_actions=[
                aws.lb.ListenerDefaultActionArgs(
                    type="redirect",
                    redirect=aws.lb.ListenerDefaultActionRedirectArgs(
                        port="443", protocol="HTTPS", status_code="HTTP_301"
                    ),
                )
            ],
        )

        # As Nginx does in EC2 mode: Prometheus metrics are for an internal scraper, not the internet.
        aws.lb.ListenerRule(
            f"{name}-no-metrics",
            listener_arn=https.arn,
            priority=1,
            conditions=[
                aws.lb.ListenerRuleConditionArgs(
                    path_pattern=aws.lb.ListenerRuleConditionPathPatternArgs(values=["/metrics", "/metrics/*"])
                )
            ],
            actions=[
                aws.lb.ListenerRuleActionArgs(
                    type="fixed-response",
                    fixed_response=aws.lb.ListenerRuleActionFixedResponseArgs(
                        content_type="text/plain", status_code="404", message_body="not found"
                    ),
                )
            ],
            tags=tags,
            opts=child,
        )

        return alb, tg, [https, http]

    def _rate_limit(self, alb) -> None:
        """The ALB's stand-in for Nginx's failed-login limit (ec2 mode), which ECS mode lacks."""
        name, child = self.name, self.child
        acl = aws.wafv2.WebAcl(
            f"{name}-waf",
            tags=self.tags,
            opts=child,
            **rate_limit_acl(name, self.args.requests_per_ip_per_minute),
        )
        aws.wafv2.WebAclAssociation(f"{name}-waf", resource_arn=alb.arn, web_acl_arn=acl.arn, opts=child)

    def _task_definitions(self, mlflow_service: dict, logs):
        """The service and migrate task definitions, derived from the resolved compose model."""
        name, args, tags, child = self.name, self.args, self.tags, self.child

        def definitions(a) -> str:
            image, db_host, bucket, app_secret, db_secret, log_group = a
            secrets = {
                key: f"{app_secret if where == 'app' else db_secret}:{json_key}::"
                for key, (where, json_key) in secret_env(args.auth_env["AUTH_MODE"]).items()
            }  # one JSON key of a secret
            model = resolve(
                aws_env(
                    public_host=args.public_host,
                    bucket=bucket,
                    region=args.region,
                    db_host=db_host,
                    image=image,
                    auth=args.auth_env,
                )
            )
            return json.dumps(
                task_definitions(
                    model,
                    image=image,
                    db_host=db_host,
                    secrets=secrets,
                    log={"awslogs-group": log_group},
                    region=args.region,
                )
            )

        defs = pulumi.Output.all(
            args.mlflow_image, args.db_address, args.bucket_name, args.app_secret_arn, args.db_secret_arn, logs.name
        ).apply(definitions)
        fargate = dict(
            cpu="1024",
            memory="2048",
            network_mode="awsvpc",
            requires_compatibilities=["FARGATE"],
            task_role_arn=args.task_role_arn,
            execution_role_arn=args.execution_role_arn,
            runtime_platform=aws.ecs.TaskDefinitionRuntimePlatformArgs(
                operating_system_family="LINUX", cpu_architecture="X86_64"
            ),
            tags=tags,
            opts=child,
        )
        task = aws.ecs.TaskDefinition(
            name,
            family=name,
            container_definitions=defs.apply(lambda d: json.dumps(json.loads(d)["service"])),
            volumes=[aws.ecs.TaskDefinitionVolumeArgs(name=v) for v in config_volumes(mlflow_service)],
            **fargate,
        )
        migrate_task = aws.ecs.TaskDefinition(
            f"{name}-migrate",
            family=f"{name}-migrate",
            container_definitions=defs.apply(lambda d: json.dumps(json.loads(d)["migrate"])),
            **fargate,
        )
        return task, migrate_task

    def _service(self, cluster, task, tg, port: int, depends_on: list):
        """The Fargate service and its CPU target tracking between min_tasks and max_tasks."""
        name, args, tags, child, present = self.name, self.args, self.tags, self.child, self.present
        service = aws.ecs.Service(
            name,
            cluster=cluster.arn,
            task_definition=task.arn,
            desired_count=present.apply(lambda p: args.min_tasks if p else 0),
            deployment_maximum_percent=DEPLOY_MAX_PERCENT,
            deployment_minimum_healthy_percent=100,
            launch_type="FARGATE",
            health_check_grace_period_seconds=120,
            propagate_tags="SERVICE",
            network_configuration=aws.ecs.ServiceNetworkConfigurationArgs(
                subnets=args.private_subnet_ids, security_groups=[args.server_security_group_id], assign_public_ip=False
            ),
            load_balancers=[
                aws.ecs.ServiceLoadBalancerArgs(target_group_arn=tg.arn, container_name="mlflow", container_port=port)
            ],
            deployment_circuit_breaker=aws.ecs.ServiceDeploymentCircuitBreakerArgs(enable=True, rollback=True),
            tags=tags,
            # The target group takes traffic only once a listener forwards to it; the schema must
            # be migrated before a new revision starts; autoscaling owns the desired count.
            opts=ResourceOptions(parent=self, ignore_changes=["desiredCount"], depends_on=depends_on),
        )
        target = aws.appautoscaling.Target(
            f"{name}-scaling",
            service_namespace="ecs",
            scalable_dimension="ecs:service:DesiredCount",
            resource_id=pulumi.Output.concat("service/", cluster.name, "/", service.name),
            min_capacity=present.apply(lambda p: args.min_tasks if p else 0),
            max_capacity=present.apply(lambda p: args.max_tasks if p else 0),
            tags=tags,
            opts=child,
        )
        aws.appautoscaling.Policy(
            f"{name}-cpu",
            policy_type="TargetTrackingScaling",
            resource_id=target.resource_id,
            scalable_dimension=target.scalable_dimension,
            service_namespace=target.service_namespace,
            target_tracking_scaling_policy_configuration=aws.appautoscaling.PolicyTargetTrackingScalingPolicyConfigurationArgs(
                target_value=60,
                predefined_metric_specification=aws.appautoscaling.PolicyTargetTrackingScalingPolicyConfigurationPredefinedMetricSpecificationArgs(
                    predefined_metric_type="ECSServiceAverageCPUUtilization"
                ),
            ),
            opts=child,
        )

        return service

    def _alarms(self, alb, tg) -> None:
        name, args, tags, child = self.name, self.args, self.tags, self.child
        for metric, threshold, what in (
            ("UnHealthyHostCount", 0, "MLflow tasks failing health checks"),
            ("HTTPCode_Target_5XX_Count", 10, "MLflow answering 5xx"),
        ):
            aws.cloudwatch.MetricAlarm(
                f"{name}-{metric.lower().replace('_', '-')}",
                namespace="AWS/ApplicationELB",
                metric_name=metric,
                statistic="Maximum" if metric.startswith("Un") else "Sum",
                dimensions={"LoadBalancer": alb.arn_suffix, "TargetGroup": tg.arn_suffix},
                period=60,
                evaluation_periods=3,
                threshold=threshold,
                comparison_operator="GreaterThanThreshold",
                treat_missing_data="notBreaching",
                alarm_description=what,
                alarm_actions=[args.alarm_topic_arn],
                ok_actions=[args.alarm_topic_arn],
                tags=tags,
                opts=child,
            )

    def _run_once(self, name, args: ScaleOutArgs, tags, cluster, migrate_task, present):
        """A Lambda that runs the migrate task and waits for it, invoked by Pulumi whenever the
        migrate task definition (image, settings) changes: once per deploy."""
        fn, ready = waiting_lambda(
            self,
            f"{name}-migrate",
            f"{name}-migrate-runner",
            description="Runs the one-shot migrate task once per deploy",
            source=MIGRATE_RUNNER,
            tags=tags,
            policy=lambda log_group_arn: pulumi.Output.all(
                migrate_task.arn_without_revision,
                cluster.arn,
                pulumi.Output.all(args.task_role_arn, args.execution_role_arn),
                log_group_arn,
            ).apply(lambda a: json.dumps(lambda_runner_policy(*a))),
        )
        event = pulumi.Output.all(
            cluster.arn,
            migrate_task.arn,
            present,
            pulumi.Output.all(*args.private_subnet_ids),
            args.server_security_group_id,
        ).apply(
            lambda a: json.dumps(
                {
                    "cluster": a[0],
                    "taskDefinition": a[1],
                    "imagePresent": bool(a[2]),
                    "subnets": list(a[3]),
                    "securityGroups": [a[4]],
                }
            )
        )
        return aws.lambda_.Invocation(
            f"{name}-migrate",
            function_name=fn.name,
            input=event,
            triggers={"taskDefinition": migrate_task.arn, "imagePresent": present.apply(str)},
            opts=ResourceOptions(parent=self, depends_on=ready),
        )
