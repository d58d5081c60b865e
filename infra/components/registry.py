"""Image registry: the ECR repository our docker/ image is pushed to (see infra/README.md)."""
from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
from pulumi import ResourceOptions


@dataclass
class ImageRegistryArgs:
    """tags: merged into every resource. keep_images: untagged/old images beyond this are expired."""

    tags: dict[str, str]
    keep_images: int = 20


class ImageRegistry(pulumi.ComponentResource):
    repository_url: pulumi.Output[str]
    repository_arn: pulumi.Output[str]

    def __init__(self, name: str, args: ImageRegistryArgs, opts: ResourceOptions | None = None):
        super().__init__("mlflow:infra:ImageRegistry", name, {}, opts)
        child = ResourceOptions(parent=self)
        repo = aws.ecr.Repository(
            name, image_tag_mutability="IMMUTABLE", tags={**args.tags, "Name": name}, opts=child,
            image_scanning_configuration=aws.ecr.RepositoryImageScanningConfigurationArgs(scan_on_push=True),
            encryption_configurations=[aws.ecr.RepositoryEncryptionConfigurationArgs(encryption_type="KMS")])
        aws.ecr.LifecyclePolicy(
            f"{name}-lifecycle", repository=repo.name, opts=child,
            policy=(f'{{"rules":[{{"rulePriority":1,"description":"keep the last {args.keep_images}",'
                    f'"selection":{{"tagStatus":"any","countType":"imageCountMoreThan",'
                    f'"countNumber":{args.keep_images}}},"action":{{"type":"expire"}}}}]}}'))
        self.repository_url = repo.repository_url
        self.repository_arn = repo.arn
        self.register_outputs({"repository_url": self.repository_url})
