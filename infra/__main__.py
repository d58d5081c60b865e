"""Pulumi entry point (Pulumi.yaml `main: infra/`): read config, wire components, export."""

import sys
from pathlib import Path

import pulumi

# Pulumi runs this directory as a script; the components import as the `infra` package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from infra.config import StackConfig  # noqa: E402
from infra.program import build  # noqa: E402

for output_name, value in build(StackConfig.load()).items():
    pulumi.export(output_name, value)
