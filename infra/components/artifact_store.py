"""Artifact store: the private, versioned, encrypted S3 bucket behind MLflow's proxied artifacts."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
from pulumi import ResourceOptions

from infra.components.base import Component

ENCRYPTIONS = ("sse-kms", "sse-s3")


def deny_insecure_transport_policy(bucket_arn: str) -> str:
    """Bucket policy: refuse every request that does not arrive over TLS."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "DenyInsecureTransport",
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "s3:*",
                    "Resource": [bucket_arn, f"{bucket_arn}/*"],
                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                }
            ],
        }
    )


@dataclass
class ArtifactStoreArgs:
    """tags: merged into every resource. encryption: 'sse-kms' (a dedicated, rotated KMS key) or
    'sse-s3'. noncurrent_version_days: how long overwritten/deleted artifact versions are kept.
    force_destroy: let `pulumi destroy` empty the bucket; only honoured for dev stacks."""

    tags: dict[str, str]
    environment: str
    encryption: str
    noncurrent_version_days: int
    force_destroy: bool = False


class ArtifactStore(Component[ArtifactStoreArgs]):
    bucket_name: pulumi.Output[str]
    bucket_arn: pulumi.Output[str]
    kms_key_arn: pulumi.Output[str] | None

    def create(self, name: str, args: ArtifactStoreArgs) -> dict:
        if args.encryption not in ENCRYPTIONS:
            raise ValueError(f"encryption must be one of {ENCRYPTIONS}, got {args.encryption!r}")

        bucket = aws.s3.Bucket(
            name, force_destroy=args.force_destroy and args.environment == "dev", tags=self.tags, opts=self.child
        )

        def setting(resource, suffix: str, opts: ResourceOptions = self.child, **props):
            """One of the bucket's settings: S3 keeps each as a resource of its own."""
            return resource(f"{name}-{suffix}", bucket=bucket.id, opts=opts, **props)

        setting(
            aws.s3.BucketOwnershipControls,
            "ownership",
            rule=aws.s3.BucketOwnershipControlsRuleArgs(object_ownership="BucketOwnerEnforced"),
        )
        pab = setting(
            aws.s3.BucketPublicAccessBlock,
            "public-access",
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
        )
        setting(
            aws.s3.BucketVersioning,
            "versioning",
            versioning_configuration=aws.s3.BucketVersioningVersioningConfigurationArgs(status="Enabled"),
        )

        self.kms_key_arn = None
        if args.encryption == "sse-kms":
            key = aws.kms.Key(
                f"{name}-key",
                description=f"{name} artifact encryption",
                enable_key_rotation=True,
                deletion_window_in_days=30,
                tags=self.tags,
                opts=self.child,
            )
            self.kms_key_arn = key.arn
            default = aws.s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                sse_algorithm="aws:kms", kms_master_key_id=key.arn
            )
        else:
            default = aws.s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                sse_algorithm="AES256"
            )
        setting(
            aws.s3.BucketServerSideEncryptionConfiguration,
            "encryption",
            rules=[
                aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                    apply_server_side_encryption_by_default=default, bucket_key_enabled=args.encryption == "sse-kms"
                )
            ],
        )  # fewer KMS calls, lower cost
        setting(
            aws.s3.BucketLifecycleConfiguration,
            "lifecycle",
            rules=[
                aws.s3.BucketLifecycleConfigurationRuleArgs(
                    id="expire-noncurrent-versions",
                    status="Enabled",
                    filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix=""),
                    noncurrent_version_expiration=aws.s3.BucketLifecycleConfigurationRuleNoncurrentVersionExpirationArgs(
                        noncurrent_days=args.noncurrent_version_days
                    ),
                    abort_incomplete_multipart_upload=aws.s3.BucketLifecycleConfigurationRuleAbortIncompleteMultipartUploadArgs(
                        days_after_initiation=7
                    ),
                )
            ],
        )
        # Applied after the public-access block so S3 judges the policy with the block in place.
        setting(
            aws.s3.BucketPolicy,
            "tls-only",
            policy=bucket.arn.apply(deny_insecure_transport_policy),
            opts=ResourceOptions(parent=self, depends_on=[pab]),
        )

        self.bucket_name = bucket.bucket
        self.bucket_arn = bucket.arn
        return {"bucket_name": self.bucket_name, "bucket_arn": self.bucket_arn}
