"""The docs: the generated reference pages match the code, and every page is in the site."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tuner import reference

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


@pytest.mark.parametrize("page", sorted(reference.PAGES))
def test_the_generated_reference_pages_match_the_code(page):
    """A flag or a plan key added without `python -m tuner.reference docs/reference` fails."""
    assert (DOCS / "reference" / page).read_text() == reference.PAGES[page](), (
        f"docs/reference/{page} is stale: run `python -m tuner.reference docs/reference`"
    )


def test_every_command_and_flag_is_in_the_cli_reference():
    from tuner.cli import build_parser

    text = (DOCS / "reference" / "cli.md").read_text()
    parser = build_parser()
    sub = next(a for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    for name, command in sub.choices.items():
        assert f"## `{name}`" in text
        for action in command._actions:
            for flag in action.option_strings:
                assert flag in ("-h", "--help") or f"`{flag}`" in text, (name, flag)


def test_every_page_is_in_the_navigation_and_the_readme_is_short():
    nav = (REPO / "mkdocs.yml").read_text()
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    listed = set(re.findall(r":\s*([\w/.-]+\.md)\s*$", nav, flags=re.M))
    assert pages == listed
    assert len((REPO / "README.md").read_text().splitlines()) <= 200
