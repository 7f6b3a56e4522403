"""Property: no config file and no --set override, however odd, makes `loratui check` raise.

Generated configs mix the real keys with made-up ones, and values of every
TOML type (non-finite floats, huge integers, odd strings, arrays, inline
tables); some files are then cut or spliced into syntax errors, and random
--set overrides are added. `loratui check` must answer 0 (valid) or 2 (a
clear error) every time: never an exception, never a traceback.
"""

from __future__ import annotations

import contextlib
import io
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loratui import cli
from loratui.config.schema import Config, is_section, section_fields
from test_reliability_support import torture_count


def known_keys(section_type=Config, prefix: str = "") -> list[str]:
    keys = []
    for name, value_type, _rules in section_fields(section_type):
        dotted = f"{prefix}{name}"
        keys += known_keys(value_type, dotted + ".") if is_section(value_type) else [dotted]
    return keys


KNOWN = known_keys()
SECTIONS = sorted({key.split(".")[0] for key in KNOWN})

names = st.one_of(st.sampled_from([key.rsplit(".", 1)[-1] for key in KNOWN]),
                  st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,12}", fullmatch=True), st.text(max_size=8))
scalars = st.one_of(st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
                    st.sampled_from(["fp16", "bf16", "fp32", "auto", "cuda", "cpu", "builtin:tiny-chat",
                                     "all-linear", "skip", "truncate", "constant", ""]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(names, inner, max_size=3)), max_leaves=8)
tables = st.dictionaries(st.one_of(st.sampled_from(SECTIONS), names), st.dictionaries(names, values, max_size=6),
                         max_size=5)


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(str(value), repr(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"


def toml_document(document: dict) -> str:
    lines = []
    for section, keys in document.items():
        lines.append(f"[{toml_key(section)}]")
        lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


def plausible(value_type, rules) -> st.SearchStrategy:
    """Values near what a key accepts: its choices, its bounds and just past them, a wrong type now and then."""
    wrong = st.one_of(st.text(max_size=6), st.booleans(), st.lists(st.integers(), max_size=2))
    if rules.get("choices") and value_type is str:
        right = st.sampled_from(rules["choices"])
    elif rules.get("kind") == "str_list":
        right = st.lists(st.sampled_from(list(rules.get("choices") or ("a", "b"))), max_size=2)
    elif rules.get("kind") == "modules":
        right = st.sampled_from(["all-linear", ["q_proj", "v_proj"], [], ["no_such_module"]])
    elif rules.get("kind") == "action_map":
        right = st.dictionaries(st.sampled_from(["overflow", "underflow", "bogus"]),
                                st.sampled_from(["none", "rollback", "panic"]), max_size=2)
    elif value_type is bool:
        right = st.booleans()
    elif value_type in (int, float):
        low, high = rules.get("min"), rules.get("max")
        edges = [v for v in (low, high, 0, 1, -1, 10**12) if v is not None]
        near = [value_type(v) + d for v in edges for d in (-1, 0, 1)] if value_type is int else \
            [float(v) * f for v in edges for f in (0.5, 1.0, 1.5)] + [float("nan"), float("inf")]
        right = st.sampled_from(near)
    else:
        right = st.sampled_from(["builtin:tiny-chat", "builtin:tiny-llama", "missing.jsonl", "", "a-run"])
    return st.one_of(right, right, right, wrong)


def nest(flat: dict) -> dict:
    document: dict = {}
    for dotted, value in flat.items():
        *tables_on_the_way, name = dotted.split(".")
        table = document
        for part in tables_on_the_way:
            table = table.setdefault(part, {})
        table[name] = value
    return document


RULES = {}
for _section, _type, _ in section_fields(Config):
    for _name, _value_type, _rules in section_fields(_type):
        if not is_section(_value_type):
            RULES[f"{_section}.{_name}"] = (_value_type, _rules)
near_valid = st.lists(st.sampled_from(sorted(RULES)), max_size=8, unique=True).flatmap(
    lambda keys: st.fixed_dictionaries({k: plausible(*RULES[k]) for k in keys})).map(nest)


@st.composite
def config_texts(draw) -> str:
    text = toml_document(draw(st.one_of(tables, near_valid)))
    damage = draw(st.sampled_from(["none", "none", "cut", "splice"]))
    if damage != "none" and text:
        at = draw(st.integers(0, len(text)))
        text = text[:at] if damage == "cut" else text[:at] + draw(st.text(max_size=6)) + text[at:]
    return text


overrides = st.lists(st.one_of(
    st.builds(lambda k, v: f"{k}={toml_value(v)}", st.sampled_from(KNOWN), scalars),
    st.builds(lambda k, v: f"{k}={v}", st.one_of(st.sampled_from(KNOWN), st.text(max_size=12)), st.text(max_size=12)),
    st.text(max_size=16)), max_size=3)

@pytest.mark.slow
@settings(max_examples=torture_count(100, 2000), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=config_texts(), sets=overrides)
def test_check_never_raises_on_any_config_or_override(tmp_path_factory, text, sets):
    path = tmp_path_factory.getbasetemp() / "generated-config.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["check", str(path), *(f"--set={s}" for s in sets)])
    assert code in (0, 2), out.getvalue() + err.getvalue()
    assert "Traceback" not in out.getvalue() + err.getvalue()
    if code == 2:
        assert err.getvalue().startswith("error: "), err.getvalue()
