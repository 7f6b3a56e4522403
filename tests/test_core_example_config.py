"""config.example.toml is what scripts/make_example_config.py renders from the schema: every key,
its default, and a comment saying what it does."""

import importlib.util
import re

from helpers import ROOT
from loratui.config import load_config
from loratui.config.load import tomllib
from loratui.config.schema import Config, is_section, section_fields, to_dict

EXAMPLE = ROOT / "config.example.toml"


def rendered_example() -> str:
    spec = importlib.util.spec_from_file_location("make_example_config", ROOT / "scripts" / "make_example_config.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script.render()


def schema_keys(section_type=Config, prefix: str = "") -> list[str]:
    """Every key of the schema as a dotted name, nested sections included (a table is one key)."""
    keys = []
    for name, value_type, _rules in section_fields(section_type):
        if is_section(value_type):
            keys.extend(schema_keys(value_type, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def test_the_example_config_is_current():
    assert EXAMPLE.read_text() == rendered_example(), (
        "config.example.toml is stale: run `python scripts/make_example_config.py`")


def test_every_schema_key_is_in_the_example_below_a_comment():
    lines = EXAMPLE.read_text().splitlines()
    section = ""
    commented = {}  # dotted key -> the comment right above it
    for number, line in enumerate(lines):
        header = re.fullmatch(r"\[([\w.]+)\]", line)
        if header:
            section = header.group(1)
            commented[section] = lines[number - 1]
            continue
        assignment = re.match(r"(\w+) = ", line)
        if assignment:
            commented[f"{section}.{assignment.group(1)}"] = lines[number - 1]
    keys = schema_keys()
    assert len(keys) > 40  # the walk really found the schema
    for dotted in keys:
        assert dotted in commented, f"{dotted} is missing from config.example.toml"
        assert re.fullmatch(r"# \S.*", commented[dotted]), f"{dotted} has no comment above it"


def test_the_example_holds_the_defaults_and_loads_as_is():
    with open(EXAMPLE, "rb") as file:
        assert tomllib.load(file) == to_dict(Config())
    config = load_config(EXAMPLE, [])
    assert config.model.name_or_path.startswith("builtin:") and config.data.path.startswith("builtin:")
