"""Image registry: the ECR repository our docker/ image is pushed to (see infra/README.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.components.base import Component


@dataclass
class ImageRegistryArgs:
    """tags: merged into every resource. untagged_days: untagged images (layers of failed pushes)
    expire after this many days; a tagged image never expires by rule, since any tag may be the
    one deployed (delete old tags yourself). force_delete: let `pulumi destroy` delete the
    repository with its images (dev only)."""

    tags: dict[str, str]
    untagged_days: int = 7
    force_delete: bool = False


class ImageRegistry(Component[ImageRegistryArgs]):
    repository_url: pulumi.Output[str]
    repository_arn: pulumi.Output[str]
    repository_name: pulumi.Output[str]

    def create(self, name: str, args: ImageRegistryArgs) -> dict:
        repo = aws.ecr.Repository(
            name,
            image_tag_mutability="IMMUTABLE",
            force_delete=args.force_delete,
            tags=self.tags,
            opts=self.child,
            image_scanning_configuration=aws.ecr.RepositoryImageScanningConfigurationArgs(scan_on_push=True),
            encryption_configurations=[aws.ecr.RepositoryEncryptionConfigurationArgs(encryption_type="KMS")],
        )
        aws.ecr.LifecyclePolicy(
            f"{name}-lifecycle",
            repository=repo.name,
            opts=self.child,
            policy=json.dumps(
                {
                    "rules": [
                        {
                            "rulePriority": 1,
                            "description": f"expire untagged images after {args.untagged_days} days",
                            "selection": {
                                "tagStatus": "untagged",
                                "countType": "sinceImagePushed",
                                "countUnit": "days",
                                "countNumber": args.untagged_days,
                            },
                            "action": {"type": "expire"},
                        }
                    ]
                }
            ),
        )
        self.repository_url = repo.repository_url
        self.repository_arn = repo.arn
        self.repository_name = repo.name
        return {"repository_url": self.repository_url}


def image_present(repository_name: pulumi.Input[str], tag: str) -> pulumi.Output[bool]:
    """Whether `tag` has been pushed. On the first `pulumi up` the repository is new and empty:
    the server then waits (no tasks, no stack start) until the image is pushed and `pulumi up`
    runs again."""
    images = aws.ecr.get_images_output(repository_name=repository_name)
    return images.image_ids.apply(lambda ids: any(i.image_tag == tag for i in ids or []))
