"""Team namespaces: users, experiments and permissions from a checked-in YAML file; safe registration."""

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ctl.errors import CommandError
from ctl.lifecycle.common import MODEL_NAME_RE, PREFIX_RE, TEAM_RE, auth_client, client, error_code, tracking_uri
from ctl.settings import setting

PERMISSIONS = ("READ", "USE", "EDIT", "MANAGE")
DEFAULT_EXPERIMENT_TYPES = ("training", "tuning", "evaluation")


@dataclass
class Team:
    name: str
    prefixes: list
    members: dict = field(default_factory=dict)  # username -> permission
    group: str = ""  # AUTH_MODE=oidc: the provider group whose members get group_permission
    group_permission: str = "EDIT"

    def experiments(self, types) -> list:
        return [f"{self.name}/{prefix}/{kind}" for prefix in self.prefixes for kind in types]

    def owns_model(self, model_name: str) -> bool:
        m = MODEL_NAME_RE.match(model_name)
        return m is not None and any(m["project"].startswith(p) for p in self.prefixes)


@dataclass
class TeamsFile:
    teams: list
    experiment_types: list


def load_teams(path) -> TeamsFile:
    """Parse and check the YAML: names, permissions, and that no two teams claim the same prefix."""
    path = Path(path)
    if not path.exists():
        raise CommandError(f"teams file {path} not found")
    data = yaml.safe_load(path.read_text()) or {}
    types = list(data.get("experiment_types") or DEFAULT_EXPERIMENT_TYPES)
    teams = []
    for raw in data.get("teams") or []:
        name = str(raw.get("name", ""))
        if not TEAM_RE.match(name):
            raise CommandError(f"{path}: team name {name!r} must match {TEAM_RE.pattern}")
        prefixes = [str(p) for p in raw.get("project_prefixes") or []]
        bad = [p for p in prefixes if not PREFIX_RE.match(p)]
        if not prefixes or bad:
            raise CommandError(f"{path}: team {name}: project_prefixes must be non-empty and match {PREFIX_RE.pattern}")
        members = {}
        for m in raw.get("members") or []:
            m = {"username": m} if isinstance(m, str) else m
            perm = str(m.get("permission", "EDIT")).upper()
            if perm not in PERMISSIONS:
                raise CommandError(
                    f"{path}: team {name}: member {m.get('username')}: permission must be one of {PERMISSIONS}"
                )
            members[str(m["username"])] = perm
        group_permission = str(raw.get("group_permission", "EDIT")).upper()
        if group_permission not in PERMISSIONS:
            raise CommandError(f"{path}: team {name}: group_permission must be one of {PERMISSIONS}")
        teams.append(Team(name, prefixes, members, str(raw.get("group") or name), group_permission))
    names = [t.name for t in teams]
    if len(set(names)) != len(names):
        raise CommandError(f"{path}: duplicate team names")
    claimed = [(p, t.name) for t in teams for p in t.prefixes]
    for p, owner in claimed:
        for q, other in claimed:
            # "reco" and "recommend" would both own model "recommend-als": ownership must be unique.
            if owner != other and q.startswith(p):
                raise CommandError(f"{path}: prefix {q!r} of team {other} overlaps prefix {p!r} of team {owner}")
    return TeamsFile(teams, types)


class Changes:
    def __init__(self, dry_run: bool):
        self.dry_run = dry_run
        self.items: list = []

    def __call__(self, what: str, apply):
        self.items.append(what)
        print(("would " if self.dry_run else "") + what, flush=True)
        if not self.dry_run:
            apply()


def _ensure_grant(auth, changes, username, resource_type, resource_id, label, permission):
    current = auth.get_user_permission(username, resource_type, resource_id).permission
    if current == permission:
        return

    def apply():
        try:
            auth.grant_user_permission(username, resource_type, resource_id, permission)
        except Exception as exc:  # a different grant exists: the auth API has no update, so replace it
            if error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                raise
            auth.revoke_user_permission(username, resource_type, resource_id)
            auth.grant_user_permission(username, resource_type, resource_id, permission)

    changes(f"grant {username} {permission} on {resource_type} {label} (was {current})", apply)


def cmd_teams(args):
    """Apply a teams YAML file to the server, idempotently (a second run changes nothing).

    For each team: every member exists as a user; the experiments TEAM/PREFIX/TYPE exist (one per
    project prefix and experiment type, tagged team/project); each member has the team permission
    (default EDIT) on those experiments and on every registered model named PREFIX...-ALGORITHM.
    New users get a random password, written to --credentials-out (mode 0600), never printed.
    Users and grants absent from the file are left alone (revoke by hand: docs/lifecycle.md).
    Needs an admin user in MLFLOW_TRACKING_USERNAME/PASSWORD.
    """
    spec = load_teams(args.file)
    if setting("AUTH_MODE", "basic") == "oidc":
        return _teams_oidc(spec, args)
    mlf, auth = client(), auth_client()
    changes = Changes(args.dry_run)

    new_passwords = {}
    for username in sorted({u for t in spec.teams for u in t.members}):
        try:
            auth.get_user(username)
        except Exception as exc:
            if error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
                raise
            new_passwords[username] = secrets.token_urlsafe(24)
    if new_passwords and not args.credentials_out and not args.dry_run:
        raise CommandError(f"{len(new_passwords)} new user(s) need a password: pass --credentials-out FILE")
    if new_passwords and not args.dry_run:  # written first: a user whose password was lost is useless
        _write_credentials(Path(args.credentials_out), new_passwords)
    for username, password in new_passwords.items():
        changes(f"create user {username}", lambda u=username, p=password: auth.create_user(u, p))

    def grant(username, perm, resource_type, resource_id, label):
        if resource_id is None or (args.dry_run and username in new_passwords):  # dry run: nothing to ask yet
            changes(f"grant {username} {perm} on {resource_type} {label}", lambda: None)
        else:
            _ensure_grant(auth, changes, username, resource_type, resource_id, label, perm)

    models = _all_model_names(mlf)
    for team in spec.teams:
        for exp_name, exp in _ensure_experiments(mlf, team, spec, changes, args.dry_run):
            for username, perm in sorted(team.members.items()):
                grant(username, perm, "experiment", exp and exp.experiment_id, exp_name)
        for model in sorted(m for m in models if team.owns_model(m)):
            for username, perm in sorted(team.members.items()):
                grant(username, perm, "registered_model", model, model)
    return _summary(changes, args.dry_run)


def _summary(changes: Changes, dry_run: bool) -> int:
    verb = "would make" if dry_run else "made"
    print(f"teams: {verb} {len(changes.items)} change(s)" if changes.items else "teams: no changes")
    return 0


def _ensure_experiments(mlf, team: Team, spec: TeamsFile, changes: Changes, dry_run: bool) -> list:
    """(name, experiment or None in a dry run) of each of TEAM's experiments, created where missing."""
    found = []
    for exp_name in team.experiments(spec.experiment_types):
        exp = mlf.get_experiment_by_name(exp_name)
        if exp is None:
            tags = {"team": team.name, "project": exp_name.split("/")[1]}
            changes(f"create experiment {exp_name}", lambda n=exp_name, t=tags: mlf.create_experiment(n, tags=t))
            exp = None if dry_run else mlf.get_experiment_by_name(exp_name)
        elif exp.lifecycle_stage != "active":
            raise CommandError(f"experiment {exp_name} is deleted: restore it (mlflow experiments restore) or purge it")
        found.append((exp_name, exp))
    return found


def _teams_oidc(spec: TeamsFile, args) -> int:
    """AUTH_MODE=oidc: users and their groups live at the provider. Each team's provider group
    (`group`, default the team's name) is created in the plugin's database (so it can be granted
    before its first member signs in) and gets `group_permission` (default EDIT) on the team's
    experiments and models. `members` are not used: membership is the provider's."""
    mlf, changes = client(), Changes(args.dry_run)
    groups = set(_plugin("GET", "").json())
    models = _all_model_names(mlf)
    for team in spec.teams:
        group, perm = team.group, team.group_permission
        if group not in groups:
            changes(f"create group {group}", lambda g=group: _plugin("POST", "", {"group_name": g}))
        have = {}  # kind -> {experiment id or model name: the group's permission}
        for kind in ("experiments", "registered-models") if group in groups else ():
            items = _plugin("GET", f"/{group}/{kind}").json()
            have[kind] = {str(item.get("id") or item.get("name")): item["permission"] for item in items}
        targets = [
            ("experiments", exp and exp.experiment_id, name)
            for name, exp in _ensure_experiments(mlf, team, spec, changes, args.dry_run)
        ]
        targets += [("registered-models", model, model) for model in sorted(m for m in models if team.owns_model(m))]
        for kind, key, label in targets:
            current = have.get(kind, {}).get(key)
            if current == perm:
                continue
            method = "PATCH" if current else "POST"
            changes(
                f"grant group {group} {perm} on {kind[:-1]} {label} (was {current or 'NO_PERMISSIONS'})",
                lambda m=method, path=f"/{group}/{kind}/{key}", body={"permission": perm}: _plugin(m, path, body),
            )
    return _summary(changes, args.dry_run)


def _plugin(method: str, path: str, body: dict = None):
    """A call to the OIDC plugin's group API, as the caller of MLFLOW_TRACKING_TOKEN (an admin)."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    creds = get_default_host_creds(tracking_uri())
    response = http_request(creds, f"/api/2.0/mlflow/permissions/groups{path}", method, json=body, max_retries=0)
    if not response.ok:
        raise CommandError(f"{method} groups{path}: HTTP {response.status_code}: {response.text[:300]}")
    return response


def _all_model_names(mlf) -> list:
    names, token = [], None
    for _ in range(10_000):  # bounded pagination
        page = mlf.search_registered_models(max_results=1000, page_token=token)
        names += [m.name for m in page]
        token = page.token
        if not token:
            return names
    raise CommandError("search_registered_models did not finish paging")


def _write_credentials(path: Path, passwords: dict):
    """Merge new passwords into a 0600 JSON file (created 0600 before any secret is written)."""
    existing = json.loads(path.read_text()) if path.exists() else {}
    existing.update(passwords)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(existing, fh, indent=2)
    os.chmod(path, 0o600)
    print(f"passwords of {len(passwords)} new user(s) written to {path} (mode 0600)")
