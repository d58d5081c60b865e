"""Network: a VPC with public subnets (load balancer, NAT) and private subnets (server, database)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
from pulumi import ResourceOptions

from infra.components.base import Component, named


@dataclass
class NetworkArgs:
    """tags: merged into every resource. vpc_id: use an existing VPC instead of creating one
    (then public_subnet_ids and private_subnet_ids are required). cidr: the new VPC's range.
    az_count: availability zones to spread subnets over (RDS needs at least two). region: for the
    S3 gateway endpoint's service name."""

    tags: dict[str, str]
    region: str
    vpc_id: str | None
    public_subnet_ids: list[str]
    private_subnet_ids: list[str]
    cidr: str
    az_count: int = 2


class Network(Component[NetworkArgs]):
    vpc_id: pulumi.Output[str]
    public_subnet_ids: list
    private_subnet_ids: list
    server_security_group_id: pulumi.Output[str]

    def create(self, name: str, args: NetworkArgs) -> dict:
        if args.vpc_id:
            self.vpc_id = pulumi.Output.from_input(args.vpc_id)
            self.public_subnet_ids = list(args.public_subnet_ids)
            self.private_subnet_ids = list(args.private_subnet_ids)
            self._server_security_group(name, args)
            return {"vpc_id": self.vpc_id}

        tags = lambda suffix: named(args.tags, f"{name}-{suffix}")  # noqa: E731
        # Local and Wavelength Zones need an opt-in and sort before the region's own zones.
        zones = aws.get_availability_zones(
            state="available",
            filters=[aws.GetAvailabilityZonesFilterArgs(name="opt-in-status", values=["opt-in-not-required"])],
        ).names[: args.az_count]
        subnets = list(ipaddress.ip_network(args.cidr).subnets(new_prefix=24))

        vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=args.cidr,
            enable_dns_hostnames=True,
            enable_dns_support=True,
            tags=tags("vpc"),
            opts=self.child,
        )
        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags=tags("igw"), opts=self.child)

        def default_route(kind: str, **target) -> aws.ec2.RouteTable:
            """The route table of the `kind` subnets: everything outside the VPC goes to target."""
            return aws.ec2.RouteTable(
                f"{name}-{kind}",
                vpc_id=vpc.id,
                tags=tags(kind),
                opts=self.child,
                routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", **target)],
            )

        public_rt = default_route("public", gateway_id=igw.id)

        public, private = [], []
        for i, zone in enumerate(zones):
            # Public subnets never auto-assign public IPs: only the load balancer and NAT live there.
            pub = aws.ec2.Subnet(
                f"{name}-public-{i}",
                vpc_id=vpc.id,
                cidr_block=str(subnets[i]),
                availability_zone=zone,
                map_public_ip_on_launch=False,
                tags=tags(f"public-{i}"),
                opts=self.child,
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-public-{i}", subnet_id=pub.id, route_table_id=public_rt.id, opts=self.child
            )
            priv = aws.ec2.Subnet(
                f"{name}-private-{i}",
                vpc_id=vpc.id,
                cidr_block=str(subnets[100 + i]),
                availability_zone=zone,
                map_public_ip_on_launch=False,
                tags=tags(f"private-{i}"),
                opts=self.child,
            )
            public.append(pub)
            private.append(priv)

        # One NAT gateway: the server needs outbound HTTPS for packages and images.
        eip = aws.ec2.Eip(f"{name}-nat", domain="vpc", tags=tags("nat"), opts=self.child)
        nat = aws.ec2.NatGateway(
            f"{name}-nat",
            subnet_id=public[0].id,
            allocation_id=eip.id,
            tags=tags("nat"),
            opts=ResourceOptions(parent=self, depends_on=[igw]),
        )
        private_rt = default_route("private", nat_gateway_id=nat.id)
        for i, priv in enumerate(private):
            aws.ec2.RouteTableAssociation(
                f"{name}-private-{i}", subnet_id=priv.id, route_table_id=private_rt.id, opts=self.child
            )
        # Artifact traffic to S3 through a gateway endpoint: free, where the NAT bills per GB.
        aws.ec2.VpcEndpoint(
            f"{name}-s3",
            vpc_id=vpc.id,
            vpc_endpoint_type="Gateway",
            service_name=f"com.amazonaws.{args.region}.s3",
            route_table_ids=[private_rt.id],
            tags=tags("s3"),
            opts=self.child,
        )

        self.vpc_id = vpc.id
        self.public_subnet_ids = [s.id for s in public]
        self.private_subnet_ids = [s.id for s in private]
        self._server_security_group(name, args)
        return {"vpc_id": self.vpc_id, "private_subnet_ids": self.private_subnet_ids}

    def _server_security_group(self, name: str, args: NetworkArgs) -> None:
        """The server's group: other components add ingress to it (front door) and from it (database)."""
        sg = aws.ec2.SecurityGroup(
            f"{name}-server",
            vpc_id=self.vpc_id,
            description="MLflow server (instance or ECS tasks)",
            tags=named(args.tags, f"{name}-server"),
            opts=self.child,
        )
        # Outbound: RDS, S3, Secrets Manager, package and image registries.
        aws.vpc.SecurityGroupEgressRule(
            f"{name}-server-egress",
            security_group_id=sg.id,
            ip_protocol="-1",
            cidr_ipv4="0.0.0.0/0",
            tags=args.tags,
            opts=self.child,
        )
        self.server_security_group_id = sg.id
