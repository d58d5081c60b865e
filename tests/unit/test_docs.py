"""The README is a reference: under 200 lines, linking out to the documents that hold the rest,
and no relative link in the project's Markdown points at a missing file."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINKED_FROM_README = [
    "docs/benchmarks.md",
    "docs/operations.md",
    "docs/security.md",
    "docs/lifecycle.md",
    "tests/README.md",
    "docker/standins/README.md",
    "infra/README.md",
    "scripts/README.md",
]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def markdown_files() -> list:
    skip = {".venv", "var", "node_modules", ".git"}
    return [p for p in ROOT.rglob("*.md") if not skip & set(p.relative_to(ROOT).parts)]


def test_readme_is_short_and_links_out():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 200, "README.md is a reference: move long material to docs/"
    missing = [doc for doc in LINKED_FROM_README if f"]({doc})" not in text and f"]({doc}#" not in text]
    assert not missing, f"README.md does not link to {missing}"
    assert "./mlflowctl up" in text and "./mlflowctl test" in text


def test_relative_links_resolve():
    broken = []
    for md in markdown_files():
        for target in LINK.findall(md.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a URL or an anchor in the same file
            if not (md.parent / target.split("#")[0]).exists():
                broken.append(f"{md.relative_to(ROOT)}: {target}")
    assert not broken, f"links to missing files: {broken}"
