"""What both server components (Compute on EC2, ScaleOut on ECS) take, and their front door."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
from pulumi import ResourceOptions

WEB_PORTS = (443, 80)  # 80 only redirects to 443


@dataclass
class ServerArgs:
    """tags: merged into every resource. environment: 'prod' adds deletion/termination protection.
    allowed_cidrs: who may reach 443/80 (no default). public_host: the DNS name clients use.
    image_present: the image is in ECR (else the server does not start yet). alarm_topic_arn:
    where alarms notify. auth_env: the plain sign-in settings (StackConfig.auth_env). The rest
    comes from the other components."""

    tags: dict[str, str]
    environment: str
    region: str
    vpc_id: pulumi.Input[str]
    public_subnet_ids: list
    private_subnet_ids: list
    server_security_group_id: pulumi.Input[str]
    allowed_cidrs: list[str]
    public_host: str
    bucket_name: pulumi.Input[str]
    app_secret_arn: pulumi.Input[str]
    db_secret_arn: pulumi.Input[str]
    db_address: pulumi.Input[str]
    mlflow_image: pulumi.Input[str]
    image_present: pulumi.Input[bool]
    alarm_topic_arn: pulumi.Input[str]
    auth_env: dict[str, str]


def tcp_rule(rule, name: str, sg_id, ports, tags: dict, parent, **peer) -> None:
    """One security-group rule (rule: aws.vpc.SecurityGroupIngressRule or ...EgressRule) for a TCP
    port or an inclusive (first, last) range; peer: referenced_security_group_id= or cidr_ipv4=,
    and description=."""
    first, last = ports if isinstance(ports, tuple) else (ports, ports)
    rule(
        name,
        security_group_id=sg_id,
        ip_protocol="tcp",
        from_port=first,
        to_port=last,
        tags=tags,
        opts=ResourceOptions(parent=parent),
        **peer,
    )


def front_door(name: str, description: str, args: ServerArgs, tags: dict, parent) -> aws.ec2.SecurityGroup:
    """The load balancer's security group: 443 and 80 from the configured CIDRs only."""
    sg = aws.ec2.SecurityGroup(
        name, vpc_id=args.vpc_id, tags=tags, opts=ResourceOptions(parent=parent), description=description
    )
    for port in WEB_PORTS:
        for i, cidr in enumerate(args.allowed_cidrs):
            tcp_rule(
                aws.vpc.SecurityGroupIngressRule,
                f"{name}-{port}-{i}",
                sg.id,
                port,
                args.tags,
                parent,
                cidr_ipv4=cidr,
                description=f"{port} from {cidr}",
            )
    return sg


def internet_load_balancer(
    name: str, lb_type: str, sg: aws.ec2.SecurityGroup, args: ServerArgs, tags: dict, parent, **settings
) -> aws.lb.LoadBalancer:
    """The load balancer (lb_type "network" or "application") in the public subnets, in its front
    door group sg; deletion-protected in prod. settings: what only that type takes."""
    return aws.lb.LoadBalancer(
        name,
        load_balancer_type=lb_type,
        internal=False,
        subnets=args.public_subnet_ids,
        security_groups=[sg.id],
        enable_deletion_protection=args.environment == "prod",
        tags=tags,
        opts=ResourceOptions(parent=parent),
        **settings,
    )
