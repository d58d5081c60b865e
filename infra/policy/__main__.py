"""Policy pack entry: `pulumi preview --policy-pack infra/policy` (needs the Pulumi CLI)."""

import sys
from pathlib import Path

# Pulumi runs this directory as a script; the rules import as the `infra` package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from pulumi_policy import PolicyPack  # noqa: E402

from infra.policy.rules import policies  # noqa: E402

PolicyPack(name="mlflow-tracking-aws", policies=policies())
