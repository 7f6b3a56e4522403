"""Shared by the integration tests (no tests here): the documented snippets they run as written."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def docs_snippet(name: str) -> str:
    """The code block between <!-- snippet:NAME --> and <!-- /snippet:NAME --> in README.md or docs/*.md."""
    start, end = f"<!-- snippet:{name} -->", f"<!-- /snippet:{name} -->"
    holders = [page for page in DOC_PAGES if start in page.read_text()]
    assert len(holders) == 1, f"snippet {name!r} should be on exactly one page, found on {holders}"
    text = holders[0].read_text()
    block = text[text.index(start):text.index(end)]
    return block.split("\n", 2)[2].rsplit("```", 1)[0]
