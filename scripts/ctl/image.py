"""image-push: build our MLflow image for the AWS server and push it to ECR (infra/README.md,
first deploy, step 2). The server is x86_64 (EC2 AMI and Fargate task), so the build pins
`--platform linux/amd64`, whatever the machine building it; the base image is the build argument
PYTHON_IMAGE, whose official pin docker-compose.production.yml holds.

  REPO=$(pulumi stack output image_repository_url); TAG=$(pulumi config get mlflow-tracking:mlflowImageTag)
  aws ecr get-login-password | docker login --username AWS --password-stdin "${REPO%%/*}"
  ./mlflowctl image-push "$REPO:$TAG"
"""

import re
import shutil
import subprocess

from ctl import engine
from ctl.errors import CommandError

DOCKERFILE = "docker/Dockerfile"
PLATFORM = "linux/amd64"  # the EC2 AMI (al2023 x86_64) and the Fargate task (X86_64)


def build_args() -> dict[str, str]:
    """Every image ARG the Dockerfile's FROM lines use, with the compose file's pin (its one
    definition; the Dockerfile's default only lets a plain `docker build` work)."""
    text = (engine.ROOT / DOCKERFILE).read_text()
    pins = engine.image_variables()
    needed = sorted(set(re.findall(r"^FROM (?:--\S+ )*\$\{([A-Z0-9_]+)\}", text, re.M)))
    missing = [name for name in needed if name not in pins]
    if missing:
        raise CommandError(f"{DOCKERFILE} needs {missing} with no pin in the compose file")
    return {name: pins[name] for name in needed}


def commands(image: str, docker: str = "docker") -> list[list[str]]:
    build = [docker, "build", "--platform", PLATFORM, "-f", DOCKERFILE]
    for name, value in build_args().items():
        build += ["--build-arg", f"{name}={value}"]
    return [[*build, "-t", image, "."], [docker, "push", image]]


def image_push(args) -> int:
    if not re.fullmatch(r"[^\s:/]+(/[^\s:]+)+:[\w][\w.-]{0,127}", args.image):
        raise CommandError(f"{args.image!r} is not REPOSITORY_URL:TAG (e.g. 1234.dkr.ecr.us-east-1.amazonaws.com/x:1)")
    steps = commands(args.image, args.docker)[: 1 if args.no_push else 2]
    if args.print:
        for cmd in steps:
            print(" ".join(cmd))
        return 0
    if not shutil.which(args.docker):
        raise CommandError(f"{args.docker} not found on PATH")
    for cmd in steps:
        engine.log(" ".join(cmd))
        if subprocess.run(cmd, cwd=engine.ROOT).returncode != 0:
            raise CommandError(f"`{' '.join(cmd[:2])}` failed (see its output above)")
    return 0


def register(sub):
    """Register `image-push` on mlflowctl's subparsers."""
    p = sub.add_parser(
        "image-push", help="build our image for linux/amd64 and push it (AWS first deploy)", description=__doc__
    )
    p.add_argument("image", help="REPOSITORY_URL:TAG, e.g. the image_repository_url output and mlflowImageTag")
    p.add_argument("--docker", default="docker", help="the Docker CLI to run (default: %(default)s)")
    p.add_argument("--no-push", action="store_true", help="build only")
    p.add_argument("--print", action="store_true", help="print the commands instead of running them")
    p.set_defaults(func=image_push)
