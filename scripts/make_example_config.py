"""Write config.example.toml from the schema: every key, its default and its documentation.

Run after adding or changing a config key: `python scripts/make_example_config.py`.
A test checks that the file is current.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loratui.config.load import _toml_value  # noqa: E402
from loratui.config.schema import Config, is_section, section_fields  # noqa: E402

HEADER = """\
# loratui example config: runs offline as is (`loratui run config.example.toml`).
# Every key is shown with its default. Relative paths are relative to this file.
# Override any key on the command line: --set train.precision=fp16
"""


def render() -> str:
    lines = [HEADER]

    def section(prefix: str, section_type: type, instance) -> None:
        subsections, tables = [], []
        lines.append(f"[{prefix}]")
        for name, value_type, rules in section_fields(section_type):
            value = getattr(instance, name)
            if is_section(value_type):
                subsections.append((f"{prefix}.{name}", value_type, value))
                continue
            doc = rules.get("doc", "")
            if rules.get("choices") and rules.get("kind") != "str_list":
                doc += f" One of: {', '.join(rules['choices'])}."
            if isinstance(value, dict):
                tables.append((f"{prefix}.{name}", doc, value))  # TOML puts a table after the plain keys
                continue
            lines.append(f"# {doc}")
            lines.append(f"{name} = {_toml_value(value)}")
        lines.append("")
        for table_prefix, doc, table in tables:
            lines.append(f"# {doc}")
            lines.append(f"[{table_prefix}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())
            lines.append("")
        for sub_prefix, sub_type, sub_value in subsections:
            section(sub_prefix, sub_type, sub_value)

    config = Config()
    for name, value_type, _rules in section_fields(Config):
        section(name, value_type, getattr(config, name))
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    (ROOT / "config.example.toml").write_text(render())
