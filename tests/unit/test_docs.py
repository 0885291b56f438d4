"""The README is a front door and docs/ holds the rest, each page with the same frame."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
# Pages other branches add (issue 24-26): linked before they land.
ELSEWHERE = {"scale.md", "locks.md", "report.md"}


def pages() -> list[Path]:
    return sorted(p for p in DOCS.glob("*.md") if p.name != "README.md")


def test_the_readme_is_a_front_door() -> None:
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 180, len(lines)
    headings = [line for line in lines if line.startswith("## ")]
    for heading in ("## The two commands", "## The preview", "## Point it at real servers",
                    "## Where to read on"):
        assert heading in headings, heading


def test_every_page_is_linked_from_the_readme_and_the_index() -> None:
    readme = (REPO / "README.md").read_text()
    index = (DOCS / "README.md").read_text()
    for page in pages():
        assert f"(docs/{page.name})" in readme, page.name
        assert f"({page.name})" in index, page.name
    linked = set(re.findall(r"\(docs/([\w-]+\.md)\)", readme))
    missing = {name for name in linked if not (DOCS / name).exists()} - ELSEWHERE
    assert missing == set(), missing


def test_every_page_has_the_fixed_headings() -> None:
    assert len(pages()) >= 10
    for page in [*pages(), DOCS / "README.md"]:
        text = page.read_text()
        outside_code = re.sub(r"```.*?```", "", text, flags=re.S)
        headings = [line for line in outside_code.splitlines() if line.startswith("## ")]
        assert text.startswith("# "), page.name
        assert headings[0] == "## In short", (page.name, headings[:1])
        assert headings[-1] == "## See also", (page.name, headings[-1:])


def test_links_between_pages_resolve() -> None:
    for page in [*pages(), DOCS / "README.md"]:
        for target in re.findall(r"\]\(([\w./-]+\.md)\)", page.read_text()):
            if Path(target).name in ELSEWHERE:
                continue
            assert (page.parent / target).resolve().exists(), (page.name, target)
