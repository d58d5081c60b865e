"""Lambda handler (shipped as is by ScaleOut): run the one-shot `migrate` ECS task once and wait for
it. Pulumi invokes it once per deploy, before the service rolls, so tasks never race each other
through the migrations. A non-zero exit fails the invocation, and with it `pulumi up`."""

import boto3

WAIT_DELAY_S, WAIT_ATTEMPTS = 10, 85  # about 14 minutes: under Lambda's 15-minute limit


def handler(event, context, ecs=None):
    if not event.get("imagePresent"):
        return {"skipped": "the image is not in ECR yet"}
    ecs = ecs or boto3.client("ecs")
    started = ecs.run_task(
        cluster=event["cluster"],
        taskDefinition=event["taskDefinition"],
        launchType="FARGATE",
        count=1,
        startedBy="pulumi-migrate",
        networkConfiguration={
            "awsvpcConfiguration": {
                "subnets": event["subnets"],
                "securityGroups": event["securityGroups"],
                "assignPublicIp": "DISABLED",
            }
        },
    )
    if started.get("failures") or not started.get("tasks"):
        raise RuntimeError(f"migrate task did not start: {started.get('failures')}")
    arn = started["tasks"][0]["taskArn"]
    ecs.get_waiter("tasks_stopped").wait(
        cluster=event["cluster"], tasks=[arn], WaiterConfig={"Delay": WAIT_DELAY_S, "MaxAttempts": WAIT_ATTEMPTS}
    )
    task = ecs.describe_tasks(cluster=event["cluster"], tasks=[arn])["tasks"][0]
    codes = {c["name"]: c.get("exitCode") for c in task["containers"]}
    if any(code != 0 for code in codes.values()):
        raise RuntimeError(f"migrate failed: exit codes {codes}, {task.get('stoppedReason')}")
    return {"task": arn, "exitCodes": codes}
