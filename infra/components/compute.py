"""Compute (single host): one EC2 instance running our compose stack behind a network load balancer.
Deploys are in place: SSM runs the boot script again with the new bundle, image and settings; the
instance itself is never replaced by a deploy (it is protected in prod)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
from pulumi import ResourceOptions

from infra.bundle import BUNDLE_PREFIX, bundle_files, bundle_hash
from infra.compose_model import REPO_ROOT
from infra.userdata import BootSettings, deployment_id, render_user_data, ssm_deploy_document

WEB_PORTS = (443, 80)  # 80 only redirects to 443 (Nginx)


def front_door_rules(name: str, sg_id, cidrs: list[str], tags: dict, parent) -> None:
    """443 and 80 from the configured CIDRs only, on the load balancer's security group."""
    for port in WEB_PORTS:
        for i, cidr in enumerate(cidrs):
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-{port}-{i}",
                security_group_id=sg_id,
                ip_protocol="tcp",
                from_port=port,
                to_port=port,
                cidr_ipv4=cidr,
                description=f"{port} from {cidr}",
                tags=tags,
                opts=ResourceOptions(parent=parent),
            )


@dataclass
class ComputeArgs:
    """tags: merged into every resource. environment: 'prod' adds termination protection.
    allowed_cidrs: who may reach 443/80 (no default). public_host: the DNS name clients use.
    tls_secret_arn: Secrets Manager secret {certificate, private_key} for Nginx, re-read hourly
    (renewal); empty = a self-signed certificate made at boot (dev only). image_present: the
    image is in ECR (else the boot script waits for the next deploy). alarm_topic_arn: where
    alarms notify. The rest comes from the other components."""

    tags: dict[str, str]
    environment: str
    region: str
    vpc_id: pulumi.Input[str]
    public_subnet_ids: list
    private_subnet_ids: list
    server_security_group_id: pulumi.Input[str]
    instance_profile_name: pulumi.Input[str]
    allowed_cidrs: list[str]
    public_host: str
    bucket_name: pulumi.Input[str]
    app_secret_arn: pulumi.Input[str]
    db_secret_arn: pulumi.Input[str]
    db_address: pulumi.Input[str]
    mlflow_image: pulumi.Input[str]
    image_present: pulumi.Input[bool]
    alarm_topic_arn: pulumi.Input[str]
    tls_secret_arn: str
    instance_type: str
    root_volume_gb: int = 30


class Compute(pulumi.ComponentResource):
    tracking_url: pulumi.Output[str]
    load_balancer_dns_name: pulumi.Output[str]
    instance_id: pulumi.Output[str]

    def __init__(self, name: str, args: ComputeArgs, opts: ResourceOptions | None = None):
        super().__init__("mlflow:infra:Compute", name, {}, opts)
        child = ResourceOptions(parent=self)
        tags = {**args.tags, "Name": name}

        objects = [
            aws.s3.BucketObjectv2(
                f"{name}-bundle-{str(rel).replace('/', '-')}",
                bucket=args.bucket_name,
                key=f"{BUNDLE_PREFIX}{rel}",
                source=pulumi.FileAsset(str(REPO_ROOT / rel)),
                tags=args.tags,
                opts=child,
            )
            for rel in bundle_files()
        ]

        ami = aws.ec2.get_ami(
            most_recent=True,
            owners=["amazon"],
            filters=[
                aws.ec2.GetAmiFilterArgs(name="name", values=["al2023-ami-2023.*-x86_64"]),
                aws.ec2.GetAmiFilterArgs(name="architecture", values=["x86_64"]),
            ],
        )

        script = pulumi.Output.all(
            args.bucket_name,
            args.app_secret_arn,
            args.db_secret_arn,
            args.db_address,
            args.mlflow_image,
            args.image_present,
        ).apply(
            lambda a: render_user_data(
                BootSettings(
                    region=args.region,
                    bundle_uri=f"s3://{a[0]}/{BUNDLE_PREFIX}",
                    bundle_hash=bundle_hash(),
                    app_secret_arn=a[1],
                    db_secret_arn=a[2],
                    db_host=a[3],
                    db_port="5432",
                    public_host=args.public_host,
                    artifact_bucket=a[0],
                    mlflow_image=a[4],
                    image_present=bool(a[5]),
                    tls_secret_arn=args.tls_secret_arn,
                )
            )
        )

        instance = aws.ec2.Instance(
            name,
            ami=ami.id,
            instance_type=args.instance_type,
            subnet_id=args.private_subnet_ids[0],
            associate_public_ip_address=False,
            vpc_security_group_ids=[args.server_security_group_id],
            iam_instance_profile=args.instance_profile_name,
            # hop limit 2: containers on Docker's bridge reach IMDSv2 for the role's credentials.
            metadata_options=aws.ec2.InstanceMetadataOptionsArgs(
                http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=2
            ),
            root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
                encrypted=True, volume_type="gp3", volume_size=args.root_volume_gb, delete_on_termination=True
            ),
            # User-data runs once, at first boot; later deploys go through SSM (below). A newer
            # AMI or new user-data must never replace the server: both are ignored after creation.
            user_data=script,
            user_data_replace_on_change=False,
            monitoring=True,
            disable_api_termination=args.environment == "prod",
            tags=tags,
            volume_tags=tags,
            opts=ResourceOptions(
                parent=self, depends_on=objects, protect=args.environment == "prod", ignore_changes=["ami", "userData"]
            ),
        )

        # Every deploy: SSM runs the current boot script on the instance. Updating the
        # association's parameter makes SSM run it at once; pulumi up waits for the result.
        document = aws.ssm.Document(
            f"{name}-deploy",
            document_type="Command",
            document_format="JSON",
            tags=tags,
            opts=child,
            content=script.apply(lambda text: json.dumps(ssm_deploy_document(text))),
        )
        aws.ssm.Association(
            f"{name}-deploy",
            name=document.name,
            tags=tags,
            targets=[aws.ssm.AssociationTargetArgs(key="InstanceIds", values=[instance.id])],
            parameters={"deployment": script.apply(deployment_id)},
            max_errors="0",
            wait_for_success_timeout_seconds=1800,
            opts=ResourceOptions(parent=self, depends_on=objects),
        )

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

        lb_sg = aws.ec2.SecurityGroup(
            f"{name}-lb",
            vpc_id=args.vpc_id,
            tags=tags,
            opts=child,
            description="Front door: HTTPS (and HTTP redirect) from allowed CIDRs",
        )
        front_door_rules(f"{name}-lb", lb_sg.id, args.allowed_cidrs, args.tags, self)
        for port in WEB_PORTS:
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-server-{port}",
                security_group_id=args.server_security_group_id,
                ip_protocol="tcp",
                from_port=port,
                to_port=port,
                referenced_security_group_id=lb_sg.id,
                description=f"{port} from the load balancer",
                tags=args.tags,
                opts=child,
            )
        aws.vpc.SecurityGroupEgressRule(
            f"{name}-lb-egress",
            security_group_id=lb_sg.id,
            ip_protocol="tcp",
            from_port=80,
            to_port=443,
            referenced_security_group_id=args.server_security_group_id,
            tags=args.tags,
            opts=child,
        )

        # TCP pass-through: Nginx on the instance terminates TLS with the bundle's config.
        nlb = aws.lb.LoadBalancer(
            f"{name}-nlb",
            load_balancer_type="network",
            internal=False,
            subnets=args.public_subnet_ids,
            security_groups=[lb_sg.id],
            enable_deletion_protection=args.environment == "prod",
            tags=tags,
            opts=child,
        )
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

        self.tracking_url = pulumi.Output.from_input(f"https://{args.public_host}")
        self.load_balancer_dns_name = nlb.dns_name
        self.instance_id = instance.id
        self.register_outputs({"tracking_url": self.tracking_url, "instance_id": self.instance_id})
