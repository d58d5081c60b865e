"""Alarms: one SNS topic every alarm notifies, and the database's own alarms. The compute
components add theirs (instance recovery, unhealthy targets, 5xx) on the same topic."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.components.base import Component


@dataclass
class AlarmsArgs:
    """tags: merged into every resource. db_identifier: the RDS instance watched. email: who is
    subscribed to the topic (empty: subscribe yourself, e.g. a chat integration)."""

    tags: dict[str, str]
    db_identifier: pulumi.Input[str]
    email: str


# (metric, comparison, threshold, what it means): RDS instance metrics, 5-minute averages.
DB_ALARMS = (
    ("CPUUtilization", "GreaterThanThreshold", 80, "database CPU above 80%"),
    ("FreeStorageSpace", "LessThanThreshold", 2 * 1024**3, "database storage below 2 GB free"),
    ("FreeableMemory", "LessThanThreshold", 100 * 1024**2, "database memory below 100 MB free"),
)


class Alarms(Component[AlarmsArgs]):
    topic_arn: pulumi.Output[str]

    def create(self, name: str, args: AlarmsArgs) -> dict:
        # Not KMS-encrypted: CloudWatch cannot publish to a topic under the AWS-managed SNS key,
        # and alarm messages carry no secret.
        topic = aws.sns.Topic(name, tags=self.tags, opts=self.child)
        if args.email:
            aws.sns.TopicSubscription(
                f"{name}-email", topic=topic.arn, protocol="email", endpoint=args.email, opts=self.child
            )
        for metric, comparison, threshold, description in DB_ALARMS:
            aws.cloudwatch.MetricAlarm(
                f"{name}-db-{metric.lower()}",
                namespace="AWS/RDS",
                metric_name=metric,
                dimensions={"DBInstanceIdentifier": args.db_identifier},
                statistic="Average",
                period=300,
                evaluation_periods=2,
                threshold=threshold,
                comparison_operator=comparison,
                alarm_description=description,
                alarm_actions=[topic.arn],
                ok_actions=[topic.arn],
                tags=self.tags,
                opts=self.child,
            )
        self.topic_arn = topic.arn
        return {"topic_arn": self.topic_arn}
