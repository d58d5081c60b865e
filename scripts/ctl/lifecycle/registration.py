"""Safe registration: a logged model is registered only under the project prefix of one of the
user's teams (teams.yaml), and the new registered model is granted to that team."""

from ctl.errors import CommandError
from ctl.lifecycle.common import MODEL_NAME_RE, auth_client, client, current_user, error_code
from ctl.lifecycle.teams import Team, TeamsFile, load_teams


def team_for_model(spec: TeamsFile, name: str, username: str, is_admin: bool, team: str = None) -> Team:
    """The team that may register NAME for USERNAME, or a one-line refusal (the design's register_model_safe)."""
    m = MODEL_NAME_RE.match(name)
    if not m:
        raise CommandError(f"model name {name!r} is not PROJECT-ALGORITHM (lowercase, e.g. reco-als)")
    mine = [t for t in spec.teams if username in t.members]
    if team:
        mine = [t for t in (spec.teams if is_admin else mine) if t.name == team]
        if not mine:
            raise CommandError(f"user {username!r} is not a member of team {team!r}")
    elif not mine:
        raise CommandError(f"user {username!r} is in no team of the teams file" + (": pass --team" if is_admin else ""))
    for t in mine:
        if t.owns_model(name):
            return t
    allowed = "; ".join(f"{t.name}: {', '.join(p + '*-ALGORITHM' for p in t.prefixes)}" for t in mine)
    owner = next((t.name for t in spec.teams if t.owns_model(name)), None)
    raise CommandError(
        f"model name {name!r} is outside the prefixes of your team(s) ({allowed})"
        + (f"; it belongs to team {owner}" if owner else "")
    )


def register_model_safe(model_uri: str, name: str, spec: TeamsFile, team: str = None):
    """Register MODEL_URI as NAME if NAME is within the user's team prefixes; grant the team on a new model."""
    import mlflow

    mlf, auth = client(), auth_client()
    username = current_user()
    try:
        is_admin = auth.get_user(username).is_admin
    except Exception as exc:  # non-admins may not read user records
        if error_code(exc) != "PERMISSION_DENIED":
            raise
        is_admin = False
    owner = team_for_model(spec, name, username, is_admin, team)
    project = name.split("-", 1)[0]  # team_for_model checked NAME against MODEL_NAME_RE
    try:  # create first: a non-admin gets 403, not 404, for a model it cannot see
        mlf.create_registered_model(name, tags={"team": owner.name, "project": project})
        created = True
    except Exception as exc:
        if error_code(exc) != "RESOURCE_ALREADY_EXISTS":
            raise
        created = False
    if not created:
        try:
            existing = mlf.get_registered_model(name)
        except Exception as exc:
            if error_code(exc) != "PERMISSION_DENIED":
                raise
            raise CommandError(
                f"registered model {name} exists and {username!r} has no permission on it: "
                f"ask an admin to run `mlflowctl teams`"
            ) from exc
        if existing.tags.get("team", owner.name) != owner.name:
            raise CommandError(f"registered model {name} belongs to team {existing.tags['team']}")
    version = mlflow.register_model(model_uri, name, tags={"team": owner.name})
    if created:  # the creator holds MANAGE on a new model; share it with the team as the YAML says
        for member, perm in owner.members.items():
            if member != username:
                auth.grant_user_permission(member, "registered_model", name, perm)
    return version


def cmd_register(args):
    """Register a logged model as NAME, refusing names outside the user's team prefixes.

    NAME must be PROJECT-ALGORITHM where PROJECT starts with one of the project prefixes of a team
    the user (MLFLOW_TRACKING_USERNAME) belongs to in the teams file. A new registered model is
    tagged team/project and shared with the team's members. Prints the new version number.
    """
    spec = load_teams(args.file)
    version = register_model_safe(args.model_uri, args.name, spec, args.team)
    print(f"registered {args.name} version {version.version}")
    return 0
