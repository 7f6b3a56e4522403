"""The documentation: the config reference is what the schema validates, and the pages hold together."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "config.md"


def rendered_reference() -> str:
    spec = importlib.util.spec_from_file_location("make_config_reference",
                                                  ROOT / "scripts" / "make_config_reference.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script.render()


def test_the_config_reference_is_current():
    assert REFERENCE.read_text() == rendered_reference(), (
        "docs/config.md is stale: run `.venv/bin/python scripts/make_config_reference.py`")


def test_the_config_reference_has_a_row_for_every_key():
    from test_core_example_config import schema_keys

    rows = {line.split("`")[1] for line in REFERENCE.read_text().splitlines() if line.startswith("| `")}
    missing = [dotted for dotted in schema_keys() if dotted not in rows]
    assert not missing, f"keys without a row in docs/config.md: {missing}"
