"""The documentation: the generated parts (config reference, key table) are current, and the pages hold together."""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "config.md"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_the_config_reference_is_current():
    assert REFERENCE.read_text() == load_script("make_config_reference").render(), (
        "docs/config.md is stale: run `.venv/bin/python scripts/make_config_reference.py`")


def test_the_config_reference_has_a_row_for_every_key():
    from test_core_example_config import schema_keys

    rows = {line.split("`")[1] for line in REFERENCE.read_text().splitlines() if line.startswith("| `")}
    missing = [dotted for dotted in schema_keys() if dotted not in rows]
    assert not missing, f"keys without a row in docs/config.md: {missing}"


def test_the_key_table_is_the_dashboards_bindings():
    script = load_script("make_key_table")
    page = script.PAGE.read_text()
    assert page == script.render_page(page), (
        "the key table in docs/dashboard-basics.md is stale: run `.venv/bin/python scripts/make_key_table.py`")
    from loratui.ui.screens.dashboard import DashboardScreen

    documented = [binding for binding in DashboardScreen.BINDINGS if binding.tooltip]
    assert len(documented) >= 8  # the table is the screen's keys, not an empty block
    for binding in documented:
        assert f"| `{binding.key_display or binding.key}` |" in page and binding.tooltip in page


# ------------------------------------------------------------------ the pages hold together

README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """The text outside fenced code blocks: a `# comment` or `[x](y)` in code is neither heading nor link."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def github_anchor(heading: str) -> str:
    """The #fragment GitHub gives a heading: inline markup dropped, lower case, punctuation but - and _
    removed, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", prose(text), flags=re.M):
        anchor = github_anchor(heading)
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        found.add(anchor if count == 0 else f"{anchor}-{count}")  # GitHub numbers repeated headings
    return found


def relative_links(text: str) -> list[str]:
    text = re.sub(r"`[^`\n]*`", "", prose(text))
    return [target for target in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


def test_the_link_checker_reads_links_and_github_anchors():
    sample = ("# Intro\n## `[monitor.autopilot]`\n### Control (`control.jsonl`)\n## Intro\n"
              "See [keys](#keys), ![shot](../screenshots/a.png) and [site](https://example.com).\n"
              "Not links: `[a](b.md)` and\n```sh\n# a comment\necho '[c](d.md)'\n```\n")
    assert anchors(sample) == {"intro", "monitorautopilot", "control-controljsonl", "intro-1"}
    assert relative_links(sample) == ["#keys", "../screenshots/a.png"]
    assert github_anchor("fp16 or bf16 for LoRA on MiniCPM-V-2_6?") == "fp16-or-bf16-for-lora-on-minicpm-v-2_6"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for target in relative_links(page.read_text()):
        path, _, fragment = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked.read_text()):
            broken.append(f"{target}: no heading gives #{fragment}")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


def test_every_docs_page_is_reachable_from_the_readme():
    reached, todo = set(), [README]
    while todo:
        page = todo.pop()
        if page in reached:
            continue
        reached.add(page)
        for target in relative_links(page.read_text()):
            linked = (page.parent / target.partition("#")[0]).resolve()
            if linked.suffix == ".md" and linked.exists():
                todo.append(linked)
    unreached = [page.relative_to(ROOT).as_posix() for page in PAGES if page.resolve() not in reached]
    assert not unreached, f"no link leads from README.md to {unreached}"


def test_the_readme_is_short_with_the_screenshot_on_its_first_screen():
    assert len(README.read_bytes()) < 10 * 1024, "README.md is over 10 KB: move the detail to docs/"
    first_screen = "\n".join(README.read_text().splitlines()[:40])
    pictures = re.findall(r"!\[[^\]]*\]\((screenshots/[^)]+\.png)\)", first_screen)
    assert pictures, "no screenshot in the README's first 40 lines"
    assert all((ROOT / picture).is_file() for picture in pictures)
