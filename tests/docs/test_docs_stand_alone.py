"""The docs stand alone: they cite no file outside the repository, and every link works."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Files that live outside this repository (the project's working notes): never cited.
OUTSIDE = re.compile(r"CONTRACT(\.md)?\b|STYLE\.md|\.\./shared/|\bshared/")
LINK = re.compile(r"\]\((?!https?://|mailto:|#)([^)#\s]+)(#[^)]*)?\)")


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_no_page_cites_a_file_outside_the_repository(page: Path) -> None:
    cited = [
        f"{page.name}:{number}: {line.strip()}"
        for number, line in enumerate(page.read_text().splitlines(), start=1)
        if OUTSIDE.search(line)
    ]
    assert not cited, cited


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_relative_link_resolves_inside_the_repository(page: Path) -> None:
    for target, _ in LINK.findall(page.read_text()):
        path = (page.parent / target).resolve()
        assert path.is_relative_to(ROOT), (page.name, target)
        assert path.exists(), (page.name, target)


def test_the_readme_says_what_cpc_stands_for() -> None:
    assert "Collaborative Presence and Comments" in (ROOT / "README.md").read_text()


def test_the_readme_links_every_docs_page() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [p.name for p in PAGES[1:] if f"(docs/{p.name})" not in readme]
    assert not missing, missing
