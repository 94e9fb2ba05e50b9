"""The README's and docs' relative links: each names a file that exists and,
into a Markdown file, a heading it has (GitHub's anchors).  The docs are
the front door and cross-reference each other by section; a renamed
heading must not leave a dead link behind."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])

_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but '-' and
    '_' dropped, spaces to '-'."""
    text = heading.replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for heading in _HEADING.findall(_FENCE.sub("", path.read_text())):
        anchor = github_anchor(heading)
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        found.add(anchor if count == 0 else f"{anchor}-{count}")
    return found


def links(path: Path) -> list[str]:
    return [target for target in _LINK.findall(_FENCE.sub("", path.read_text()))
            if not re.match(r"[a-z]+:", target)]


def test_the_anchor_rule() -> None:
    assert github_anchor("Results (2026-12-06, evening)") == "results-2026-12-06-evening"
    assert github_anchor("The `lte-3g` link: a test") == "the-lte-3g-link-a-test"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(document: Path) -> None:
    dead = []
    for target in links(document):
        name, _, anchor = target.partition("#")
        path = (document.parent / name).resolve() if name else document
        if not path.exists():
            dead.append(f"{target}: no file {path}")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            dead.append(f"{target}: no heading with that anchor in {path.name}")
    assert not dead, f"{document.name}: " + "; ".join(dead)
