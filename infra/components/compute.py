"""Compute (single host): one EC2 instance running our compose stack behind a network load balancer.
Deploys are in place: a Lambda sends the deploy SSM command (run the current boot script) and waits
for it; the instance itself is never replaced by a deploy (it is protected in prod)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_aws as aws
from pulumi import ResourceOptions

from infra import REPO_ROOT
from infra.bundle import BUNDLE_PREFIX, bundle_files, bundle_hash
from infra.components.base import Component
from infra.components.runner import logs_statement, waiting_lambda
from infra.components.server import WEB_PORTS, ServerArgs, front_door, internet_load_balancer, tcp_rule
from infra.compose_binary import instance_compose_binary
from infra.userdata import (
    BOOT_SCRIPT_OBJECT,
    COMPOSE_OBJECT,
    BootSettings,
    deployment_id,
    first_boot_user_data,
    render_boot_script,
    ssm_deploy_document,
)

DEPLOY_RUNNER = Path(__file__).resolve().parent.parent / "deploy_runner.py"
# Amazon Linux 2023, x86_64: the Compose binary shipped (infra/compose_binary.py) is x86_64 too.
AMI_NAME = "al2023-ami-2023.*-x86_64"
IMDS_HOP_LIMIT = 1
# ssm:ListCommandInvocations and ssm:DescribeInstanceInformation take no resource ARN (Service
# Authorization Reference, AWS Systems Manager): only "*".
SSM_WILDCARD_ONLY_ACTIONS = ["ssm:DescribeInstanceInformation", "ssm:ListCommandInvocations"]


def deploy_runner_policy(document_arn: str, instance_arn: str, log_group_arn: str) -> dict:
    """Send the deploy document to this instance only, follow the run, write its logs."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "SendDeploy",
                "Effect": "Allow",
                "Action": ["ssm:SendCommand"],
                "Resource": [document_arn, instance_arn],
            },
            {"Sid": "FollowDeploy", "Effect": "Allow", "Action": SSM_WILDCARD_ONLY_ACTIONS, "Resource": "*"},
            logs_statement(log_group_arn),
        ],
    }


@dataclass
class ComputeArgs(ServerArgs):
    """tls_secret_arn: Secrets Manager secret {certificate, private_key} for Nginx, re-read every 15 minutes
    (renewal); empty = a self-signed certificate made at boot (dev only). ami_id: empty = the
    newest Amazon Linux 2023 at creation, then kept; a new value replaces the instance.
    db_port: the database's port (TrackingDb). artifact_role_arn: the role whose credentials only
    the MLflow container gets (ServerIam)."""

    instance_profile_name: pulumi.Input[str]
    artifact_role_arn: pulumi.Input[str]
    tls_secret_arn: str
    instance_type: str
    ami_id: str
    db_port: pulumi.Input[int]
    root_volume_gb: int = 30


class Compute(Component[ComputeArgs]):
    tracking_url: pulumi.Output[str]
    load_balancer_dns_name: pulumi.Output[str]
    instance_id: pulumi.Output[str]

    def create(self, name: str, args: ComputeArgs) -> dict:
        script = self._boot_script()
        shipped = self._ship(script)
        instance = self._instance(shipped)
        self._deploy_on_every_change(instance, script, shipped)
        self._recover_on_host_failure(instance)
        nlb = self._load_balancer(instance)

        self.tracking_url = pulumi.Output.from_input(f"https://{args.public_host}")
        self.load_balancer_dns_name = nlb.dns_name
        self.instance_id = instance.id
        return {"tracking_url": self.tracking_url, "instance_id": self.instance_id}

    def _boot_script(self) -> pulumi.Output[str]:
        args, compose = self.args, instance_compose_binary()
        return pulumi.Output.all(
            args.bucket_name,
            args.app_secret_arn,
            args.db_secret_arn,
            args.db_address,
            args.db_port,
            args.mlflow_image,
            args.image_present,
            args.artifact_role_arn,
        ).apply(
            lambda a: render_boot_script(
                BootSettings(
                    region=args.region,
                    bundle_uri=f"s3://{a[0]}/{BUNDLE_PREFIX}",
                    bundle_hash=bundle_hash(),
                    app_secret_arn=a[1],
                    db_secret_arn=a[2],
                    db_host=a[3],
                    db_port=str(int(a[4])),
                    public_host=args.public_host,
                    artifact_bucket=a[0],
                    mlflow_image=a[5],
                    compose_version=compose.version,
                    compose_sha256=compose.sha256,
                    image_present=bool(a[6]),
                    tls_secret_arn=args.tls_secret_arn,
                    artifact_role_arn=a[7],
                    auth_env=args.auth_env,
                )
            )
        )

    def _ship(self, script: pulumi.Output[str]) -> list[aws.s3.BucketObjectv2]:
        """The bundle, the boot script and the Compose binary, under the bundle prefix."""
        name, args, child = self.name, self.args, self.child
        body = {str(rel): {"source": pulumi.FileAsset(str(REPO_ROOT / rel))} for rel in bundle_files()}
        body[COMPOSE_OBJECT] = {"source": pulumi.FileAsset(str(instance_compose_binary().path))}
        body[BOOT_SCRIPT_OBJECT] = {"content": script}
        return [
            aws.s3.BucketObjectv2(
                f"{name}-bundle-{rel.replace('/', '-')}",
                bucket=args.bucket_name,
                key=f"{BUNDLE_PREFIX}{rel}",
                tags=args.tags,
                opts=child,
                **content,
            )
            for rel, content in body.items()
        ]

    def _instance(self, shipped: list) -> aws.ec2.Instance:
        args, prod = self.args, self.args.environment == "prod"
        ami = args.ami_id or (
            aws.ec2.get_ami(
                most_recent=True,
                owners=["amazon"],
                filters=[
                    aws.ec2.GetAmiFilterArgs(name="name", values=[AMI_NAME]),
                    aws.ec2.GetAmiFilterArgs(name="architecture", values=["x86_64"]),
                ],
            ).id
        )
        return aws.ec2.Instance(
            self.name,
            ami=ami,
            instance_type=args.instance_type,
            subnet_id=args.private_subnet_ids[0],
            associate_public_ip_address=False,
            vpc_security_group_ids=[args.server_security_group_id],
            iam_instance_profile=args.instance_profile_name,
            # Hop limit 1: IMDSv2 answers the host only, not a container behind Docker's bridge
            # (one more hop). The instance role reads the master secret and the TLS key; the boot
            # script hands the MLflow container the artifact role's credentials alone.
            metadata_options=aws.ec2.InstanceMetadataOptionsArgs(
                http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=IMDS_HOP_LIMIT
            ),
            root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
                encrypted=True, volume_type="gp3", volume_size=args.root_volume_gb, delete_on_termination=True
            ),
            # The same on every deploy (it runs the current boot script), so it is never ignored:
            # a replacement boots with today's script. User-data runs at first boot only.
            user_data=pulumi.Output.from_input(args.bucket_name).apply(
                lambda bucket: first_boot_user_data(bucket, args.region)
            ),
            user_data_replace_on_change=False,
            monitoring=True,
            disable_api_termination=prod,
            tags=self.tags,
            volume_tags=self.tags,
            # Without amiId, the newest AMI at creation is kept: a newer one must not replace the
            # server. With amiId, a new value is the deliberate replacement (the OS upgrade path).
            opts=ResourceOptions(
                parent=self, depends_on=shipped, protect=prod, ignore_changes=[] if args.ami_id else ["ami"]
            ),
        )

    def _deploy_on_every_change(self, instance: aws.ec2.Instance, script: pulumi.Output[str], shipped: list) -> None:
        """Every deploy (new script, bundle, image, Compose binary, or a new instance) invokes the
        runner, which sends the deploy document and fails `pulumi up` with the run's output when
        the run fails."""
        name, args, child = self.name, self.args, self.child
        document = aws.ssm.Document(
            f"{name}-deploy",
            document_type="Command",
            document_format="JSON",
            tags=self.tags,
            opts=child,
            content=pulumi.Output.from_input(args.bucket_name).apply(
                lambda bucket: json.dumps(ssm_deploy_document(bucket, args.region))
            ),
        )
        fn, ready = waiting_lambda(
            self,
            f"{name}-deploy",
            f"{name}-deploy-runner",
            description="Runs the deploy SSM command on the MLflow instance and waits for it",
            source=DEPLOY_RUNNER,
            tags=self.tags,
            policy=lambda log_group_arn: pulumi.Output.all(document.arn, instance.arn, log_group_arn).apply(
                lambda a: json.dumps(deploy_runner_policy(*a))
            ),
        )
        deployment = script.apply(deployment_id)
        aws.lambda_.Invocation(
            f"{name}-deploy",
            function_name=fn.name,
            input=pulumi.Output.all(instance.id, document.name, deployment).apply(
                lambda a: json.dumps({"instanceId": a[0], "documentName": a[1], "deployment": a[2]})
            ),
            triggers={"deployment": deployment, "instance": instance.id},
            opts=ResourceOptions(parent=self, depends_on=[*ready, *shipped]),
        )

    def _recover_on_host_failure(self, instance: aws.ec2.Instance) -> None:
        name, args, tags, child = self.name, self.args, self.tags, self.child
        # Hardware or host failure: EC2 recovers the instance onto healthy hardware (same id, disk).
        aws.cloudwatch.MetricAlarm(
            f"{name}-status-check",
            namespace="AWS/EC2",
            metric_name="StatusCheckFailed_System",
            dimensions={"InstanceId": instance.id},
            statistic="Maximum",
            period=60,
            evaluation_periods=2,
            threshold=1,
            comparison_operator="GreaterThanOrEqualToThreshold",
            alarm_actions=[
                pulumi.Output.concat("arn:aws:automate:", args.region, ":ec2:recover"),
                args.alarm_topic_arn,
            ],
            alarm_description="EC2 system status check failing: recovering the instance",
            tags=tags,
            opts=child,
        )

    def _load_balancer(self, instance: aws.ec2.Instance) -> aws.lb.LoadBalancer:
        """TCP pass-through: Nginx on the instance terminates TLS with the bundle's config."""
        name, args, tags, child = self.name, self.args, self.tags, self.child
        lb_sg = front_door(f"{name}-lb", "Front door: HTTPS (and HTTP redirect) from allowed CIDRs", args, tags, self)
        for port in WEB_PORTS:
            tcp_rule(
                aws.vpc.SecurityGroupIngressRule,
                f"{name}-server-{port}",
                args.server_security_group_id,
                port,
                args.tags,
                self,
                referenced_security_group_id=lb_sg.id,
                description=f"{port} from the load balancer",
            )
        tcp_rule(
            aws.vpc.SecurityGroupEgressRule,
            f"{name}-lb-egress",
            lb_sg.id,
            (80, 443),
            args.tags,
            self,
            referenced_security_group_id=args.server_security_group_id,
        )

        nlb = internet_load_balancer(f"{name}-nlb", "network", lb_sg, args, tags, self)
        for port in WEB_PORTS:
            tg = aws.lb.TargetGroup(
                f"{name}-{port}",
                port=port,
                protocol="TCP",
                vpc_id=args.vpc_id,
                target_type="instance",
                tags=tags,
                opts=child,
                health_check=aws.lb.TargetGroupHealthCheckArgs(protocol="TCP"),
            )
            aws.lb.TargetGroupAttachment(
                f"{name}-{port}", target_group_arn=tg.arn, target_id=instance.id, port=port, opts=child
            )
            aws.lb.Listener(
                f"{name}-{port}",
                load_balancer_arn=nlb.arn,
                port=port,
                protocol="TCP",
                tags=tags,
                opts=child,
                default_actions=[aws.lb.ListenerDefaultActionArgs(type="forward", target_group_arn=tg.arn)],
            )
            aws.cloudwatch.MetricAlarm(
                f"{name}-{port}-unhealthy",
                namespace="AWS/NetworkELB",
                metric_name="UnHealthyHostCount",
                dimensions={"LoadBalancer": nlb.arn_suffix, "TargetGroup": tg.arn_suffix},
                statistic="Maximum",
                period=60,
                evaluation_periods=3,
                threshold=0,
                comparison_operator="GreaterThanThreshold",
                alarm_actions=[args.alarm_topic_arn],
                ok_actions=[args.alarm_topic_arn],
                alarm_description=f"Nginx on {port} not answering",
                tags=tags,
                opts=child,
            )
        return nlb
