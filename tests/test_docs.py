"""The README and docs/ point only at things that exist in the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _headings(text: str) -> set[str]:
    """GitHub's anchors of a page's headings."""
    return {
        re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)
    }


def test_every_relative_link_resolves_inside_the_repository() -> None:
    broken = []
    for doc in DOCS:
        text = doc.read_text()
        for target in _LINK.findall(text):
            if re.match(r"[a-z]+://|mailto:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            if not file.is_relative_to(ROOT) or not file.exists():
                broken.append(f"{doc.name}: {target}")
            elif anchor and file.suffix == ".md" and anchor not in _headings(file.read_text()):
                broken.append(f"{doc.name}: {target} (no such heading)")
    assert broken == []


def test_nothing_tracked_points_outside_the_repository() -> None:
    """The design notes the code once cited live in docs/ now; ../shared is not part of a clone."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    this = Path(__file__).resolve().relative_to(ROOT).as_posix()
    citing = [
        name
        for name in tracked
        if name != this and (ROOT / name).is_file() and "shared/design" in (ROOT / name).read_text(errors="ignore")
    ]
    assert citing == []


def test_no_page_carries_an_unfilled_placeholder() -> None:
    """A figure still to be measured is not a figure: a line that is only SOME_NAME is a hole."""
    holes = [
        f"{doc.name}:{n}: {line}"
        for doc in DOCS
        for n, line in enumerate(doc.read_text().splitlines(), start=1)
        if re.fullmatch(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)+", line.strip())
    ]
    assert holes == []
