"""Lambda handler (shipped as is by Compute): send the deploy SSM document to the instance and wait
for the run. Pulumi invokes it on every deploy (new boot script, bundle, image, Compose binary or
instance). A run that fails, or is still going near Lambda's 15-minute limit, fails the invocation
with the command's output, and with it `pulumi up`. (An ssm.Association would wait only when it
is created: an update returns at once.)"""

import time

import boto3

POLL_S = 10
DEADLINE_S = 840  # under Lambda's 15-minute limit, with room to report
DONE = {"Success", "Failed", "Cancelled", "TimedOut"}
OUTPUT_CHARS = 3000


def handler(event, context, ssm=None, clock=time.monotonic, sleep=time.sleep):
    ssm = ssm or boto3.client("ssm")
    deadline = clock() + DEADLINE_S
    instance, deployment = event["instanceId"], event["deployment"]

    def wait(what: str, ready):
        while True:
            found = ready()
            if found:
                return found
            if clock() > deadline:
                raise RuntimeError(f"deployment {deployment}: {what} after {DEADLINE_S}s")
            sleep(POLL_S)

    # A new instance registers with SSM a minute or two after it starts.
    filters = [{"Key": "InstanceIds", "Values": [instance]}]
    wait(
        f"{instance} not registered with SSM",
        lambda: ssm.describe_instance_information(Filters=filters)["InstanceInformationList"],
    )
    command = ssm.send_command(
        InstanceIds=[instance],
        DocumentName=event["documentName"],
        DocumentVersion="$LATEST",
        Parameters={"deployment": [deployment]},
        Comment=f"mlflow deployment {deployment}",
    )["Command"]["CommandId"]

    def finished():
        rows = ssm.list_command_invocations(CommandId=command, InstanceId=instance, Details=True)
        rows = rows["CommandInvocations"]
        return rows[0] if rows and rows[0]["Status"] in DONE else None

    follow = f"aws ssm list-command-invocations --command-id {command} --details"
    row = wait(f"SSM command {command} still running (follow it: {follow})", finished)
    output = "\n".join(p.get("Output") or "" for p in row.get("CommandPlugins") or [])
    if row["Status"] != "Success":
        raise RuntimeError(
            f"deployment {deployment}: SSM command {command} {row['Status']} on {instance}:\n{output[-OUTPUT_CHARS:]}"
        )
    return {"commandId": command, "status": row["Status"], "output": output[-OUTPUT_CHARS:]}
