"""The Pulumi program (Pulumi.yaml `main: infra/`), its policy pack and the EC2 boot script."""

from pathlib import Path

# The repository root: the compose files, configs and Pulumi.yaml the program reads.
REPO_ROOT = Path(__file__).resolve().parent.parent
