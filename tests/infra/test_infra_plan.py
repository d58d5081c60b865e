"""`python -m infra.plan`: the reviewer's view of what `pulumi up` would create.

Mock boundary: it runs the program under Pulumi's mocks (no AWS, no Pulumi CLI here)."""

import json
import subprocess
import sys

from infra.mockrun import REPO_ROOT
from infra.plan import main


def test_plan_prints_table_and_masks_secrets(capsys):
    assert main(["--stack", "prod"]) == 0
    out = capsys.readouterr().out
    assert "aws:rds/instance:Instance" in out and "policy violations: 0" in out
    assert "MockSecret" not in out


def test_plan_json_masks_secret_inputs(capsys):
    assert main(["--stack", "dev", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    version = next(r for r in plan["resources"] if r["type"].startswith("aws:secretsmanager/secretVersion"))
    assert version["inputs"]["secretString"] == "[secret]"
    assert "MockSecret" not in json.dumps(plan)
    assert plan["outputs"]["tracking_url"] == "https://mlflow-dev.example.com"


def test_plan_masks_the_oidc_client_secret(capsys):
    """`--set oidcClientSecret=...` is handed over as `pulumi config set --secret` would."""
    sets = ["authMode=oidc", "oidcIssuer=https://idp.example.com", "oidcClientId=c", "oidcClientSecret=Plan-Secret-9"]
    assert main(["--stack", "dev", "--json", *(a for s in sets for a in ("--set", s))]) == 0
    out = capsys.readouterr().out
    assert "Plan-Secret-9" not in out and "OIDC_CLIENT_SECRET" in out


def test_plan_command_line_help():
    result = subprocess.run(
        [sys.executable, "-m", "infra.plan", "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "--stack" in result.stdout
