"""Shared by the integration tests (no tests here): the README snippets they run as written."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_snippet(name: str) -> str:
    """The code block between <!-- snippet:NAME --> and <!-- /snippet:NAME --> in README.md."""
    text = README.read_text()
    block = text[text.index(f"<!-- snippet:{name} -->"):text.index(f"<!-- /snippet:{name} -->")]
    return block.split("\n", 2)[2].rsplit("```", 1)[0]
