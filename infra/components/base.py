"""What every component shares: its Pulumi type token, its children's options, its Name tag."""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

import pulumi
from pulumi import ResourceOptions

TYPE_PREFIX = "mlflow:infra:"


class Tagged(Protocol):
    """What every component's args carry: the tags merged into each of its resources."""

    tags: dict[str, str]


A = TypeVar("A", bound=Tagged)


class Component(pulumi.ComponentResource, Generic[A]):
    """A component typed TYPE_PREFIX + its class name: the token is part of every child's URN, so
    renaming the class replaces all its resources in existing stacks. Construction runs create(),
    which makes the resources and returns the outputs to register. child: the options that put a
    resource under this component. tags: args.tags with Name set to the component's name."""

    def __init__(self, name: str, args: A, opts: ResourceOptions | None = None):
        super().__init__(TYPE_PREFIX + type(self).__name__, name, {}, opts)
        self.name, self.args = name, args
        self.child = ResourceOptions(parent=self)
        self.tags = named(args.tags, name)
        self.register_outputs(self.create(name, args))

    def create(self, name: str, args: A) -> dict:
        raise NotImplementedError


def named(tags: dict[str, str], name: str) -> dict[str, str]:
    """tags plus the Name tag (what the AWS console lists a resource by)."""
    return {**tags, "Name": name}
