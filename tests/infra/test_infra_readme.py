"""infra/README.md's first deploy is executable: every shell block parses (`bash -n`), and every
image build it runs (a `docker build` line, or `./mlflowctl image-push`) passes each Dockerfile ARG
that has no default and builds for the x86_64 server. A plain `docker build -f docker/Dockerfile .`
from the repository root needs no argument and finds every file it copies."""

from __future__ import annotations

import fnmatch
import re
import shlex
import subprocess

import pytest

from infra import REPO_ROOT

README = (REPO_ROOT / "infra" / "README.md").read_text()
DOCKERFILE = (REPO_ROOT / "docker" / "Dockerfile").read_text()
DOCKERIGNORE = (REPO_ROOT / ".dockerignore").read_text().split("\n")
BLOCKS = re.findall(r"^ *```(?:sh|bash)\n(.*?)^ *```", README, re.M | re.S)


def required_args() -> set[str]:
    return set(re.findall(r"^ARG ([A-Z0-9_]+)\s*$", DOCKERFILE, re.M))


def check_build(cmd: list[str]) -> None:
    given = {cmd[i + 1].split("=", 1)[0] for i, arg in enumerate(cmd) if arg == "--build-arg"}
    assert required_args() <= given, f"{' '.join(cmd)}: no --build-arg for {required_args() - given}"
    assert cmd[cmd.index("--platform") + 1] == "linux/amd64", cmd


def test_readme_has_shell_blocks():
    assert len(BLOCKS) >= 5


def test_a_plain_build_needs_no_argument_and_its_base_is_the_compose_pin():
    """`docker build -f docker/Dockerfile .` passes no --build-arg: every image ARG has a default,
    the official pin the compose file holds (its one definition; the test keeps them equal)."""
    from ctl.engine.images import image_variables

    assert required_args() == set()
    bases = set(re.findall(r"^FROM (?:--\S+ )*\$\{([A-Z0-9_]+)\}", DOCKERFILE, re.M))
    defaults = dict(re.findall(r"^ARG ([A-Z0-9_]+)=(\S+)$", DOCKERFILE, re.M))
    assert bases == {"PYTHON_IMAGE"} and defaults["PYTHON_IMAGE"] == image_variables()["PYTHON_IMAGE"]


def in_context(rel: str) -> bool:
    """Whether the repository-root build context holds REL, after .dockerignore (the last
    matching pattern decides; a pattern that matches a parent directory matches REL)."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    kept = True
    for line in filter(None, (raw.strip() for raw in DOCKERIGNORE)):
        if line.startswith("#"):
            continue
        pattern = line.removeprefix("!").rstrip("/")
        if any(fnmatch.fnmatchcase(p, pattern) for p in prefixes):
            kept = line.startswith("!")
    return kept and (REPO_ROOT / rel).exists()


def test_every_file_the_build_copies_is_in_a_plain_build_context():
    """Each COPY source (a glob may match nothing: the optional build CA) is in the repository and
    not dropped by .dockerignore, so the build does not stop at a COPY outside ./mlflowctl."""
    copies = [
        shlex.split(line)[1:-1]
        for line in DOCKERFILE.splitlines()
        if line.startswith("COPY ") and "--from=" not in line
    ]
    assert copies
    for sources in copies:
        fixed = [src for src in sources if not re.search(r"[*?\[]", src)]
        assert fixed, sources
        for src in fixed:
            assert in_context(src.rstrip("/")), f"COPY {src}: not in the build context of a plain build"


@pytest.mark.parametrize("block", BLOCKS, ids=[b.splitlines()[0][:40] for b in BLOCKS])
def test_shell_block_parses(block):
    dedented = "\n".join(line[3:] if line.startswith("   ") else line for line in block.splitlines())
    result = subprocess.run(["bash", "-n"], input=dedented, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_every_image_build_in_the_readme_passes_the_dockerfile_args():
    text = "\n".join(BLOCKS)
    builds = [line for line in text.splitlines() if "docker build" in line or "mlflowctl image-push" in line]
    assert any("mlflowctl image-push" in b for b in builds), "the first deploy builds with ./mlflowctl image-push"
    for line in builds:
        if "docker build" in line:
            check_build(["docker", "build", *shlex.split(line.split("docker build", 1)[1].split("&&")[0])])


def test_image_push_runs_a_build_with_every_arg_for_amd64():
    out = subprocess.run(
        [str(REPO_ROOT / "mlflowctl"), "image-push", "123456789012.dkr.ecr.us-east-1.amazonaws.com/m:1", "--print"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    build, push = [shlex.split(line) for line in out.stdout.splitlines() if line.startswith("docker ")]
    check_build(build)
    assert build[-3:] == ["-t", "123456789012.dkr.ecr.us-east-1.amazonaws.com/m:1", "."]
    assert push == ["docker", "push", "123456789012.dkr.ecr.us-east-1.amazonaws.com/m:1"]
