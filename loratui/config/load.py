"""Read a TOML config, apply `--set` overrides, and validate every key at once.

Every problem is collected before anything is reported, each with the file,
the line where the key is written (or the `--set` that gave it), the dotted
key, the bad value and what is allowed.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

from loratui.config.schema import (
    ALERT_KINDS,
    AUTOPILOT_ACTIONS,
    AUTOPILOT_UNSEEN,
    Config,
    is_section,
    section_fields,
    to_dict,
)
from loratui.errors import Problem, UserInputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

# Keys whose relative values are paths; they are resolved against the config
# file's directory so a config means the same thing from any working directory.
PATH_KEYS = ("run.output_dir", "data.path", "model.name_or_path")


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """The validated config from a TOML file and `--set KEY=VALUE` overrides."""
    path = Path(path)
    text = _read_text(path)
    raw = _parse_toml(text, str(path))
    where = KeyLocator(text, str(path))
    _resolve_paths(raw, path.resolve().parent, where)
    problems: list[Problem] = []
    for item in overrides:
        dotted, value, problem = parse_override(item)
        if problem:
            problems.append(problem)
            continue
        if dotted in PATH_KEYS and isinstance(value, str):
            value = _resolve_path_value(dotted, value, Path.cwd(), "--set")
        _set_dotted(raw, dotted, value, problems)
        where.override(dotted)
    config = build_config(raw, where, problems)
    if problems:
        raise UserInputError(problems, headline=f"{path}: {len(problems)} problem(s) in the config")
    if not Path(config.run.output_dir).is_absolute():  # the default, relative like a written one
        config.run.output_dir = str((path.resolve().parent / config.run.output_dir).resolve())
    return config


def config_from_dict(raw: dict, source: str = "<config>") -> Config:
    """Validate an already-parsed config (as written to a run directory)."""
    problems: list[Problem] = []
    config = build_config(raw, KeyLocator("", source), problems)
    if problems:
        raise UserInputError(problems, headline=f"{source}: {len(problems)} problem(s) in the config")
    return config


def parse_override(item: str) -> tuple[str, Any, Problem | None]:
    """`train.precision=fp16` -> ("train.precision", "fp16"); TOML value syntax, else a string."""
    if "=" not in item:
        return "", None, Problem("--set", f"{item!r}: expected KEY=VALUE, e.g. --set train.precision=fp16")
    dotted, text = item.split("=", 1)
    dotted = dotted.strip()
    if not re.fullmatch(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)+", dotted):
        return dotted, None, Problem("--set", f"{item!r}: KEY must be a dotted key such as train.learning_rate")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # not TOML syntax: the common case of a bare word such as fp16
    return dotted, value, None


def render_toml(config: Config) -> str:
    """The config as TOML, every key written out (the resolved config of a run)."""
    lines: list[str] = ["# Resolved by loratui: every key, defaults included.", ""]

    def emit_table(prefix: str, table: dict) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        tables = {k: v for k, v in table.items() if isinstance(v, dict)}
        lines.append(f"[{prefix}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in scalars.items())
        lines.append("")
        for k, v in tables.items():
            emit_table(f"{prefix}.{k}", v)

    for name, table in to_dict(config).items():
        emit_table(name, table)
    return "\n".join(lines)


class KeyLocator:
    """Where each dotted key was written: `file:line` from a scan of the TOML text.

    tomllib keeps no positions, so the lines are found by following table
    headers and `key =` lines; a key it cannot place is reported by file only.
    """

    _header = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
    _assign = re.compile(r"^\s*([A-Za-z0-9_\-\.\"' ]+?)\s*=")

    def __init__(self, text: str, source: str):
        self.source = source
        self.lines: dict[str, int] = {}
        self.overridden: set[str] = set()
        table = ""
        for number, line in enumerate(text.splitlines(), start=1):
            if header := self._header.match(line):
                table = _normalise_key(header.group(1))
                self.lines.setdefault(table, number)
            elif assign := self._assign.match(line):
                dotted = _normalise_key(assign.group(1))
                self.lines.setdefault(f"{table}.{dotted}" if table else dotted, number)

    def override(self, dotted: str) -> None:
        self.overridden.add(dotted)

    def __call__(self, dotted: str) -> str:
        if dotted in self.overridden:
            return "--set"
        if dotted not in self.lines and any(key.startswith(dotted + ".") for key in self.overridden):
            return "--set"  # a table that only a --set key implies
        probe = dotted
        while probe:
            if probe in self.lines:
                return f"{self.source}:{self.lines[probe]}"
            probe = probe.rpartition(".")[0]
        return self.source


def build_config(raw: dict, where: KeyLocator, problems: list[Problem]) -> Config:
    config = _build_section(Config, raw, "", where, problems)
    _check_cross_keys(config, where, problems)
    return config


def _build_section(section_type: type, raw: Any, prefix: str, where: KeyLocator,
                   problems: list[Problem]):
    if not isinstance(raw, dict):
        problems.append(Problem(where(prefix), f"{prefix} must be a table ([{prefix}]), got {_show(raw)}"))
        return section_type()
    known = {name: (value_type, rules) for name, value_type, rules in section_fields(section_type)}
    values = {}
    for name, value in raw.items():
        dotted = f"{prefix}.{name}" if prefix else name
        if name not in known:
            hint = difflib.get_close_matches(name, list(known), n=1)
            allowed = f"did you mean {prefix + '.' if prefix else ''}{hint[0]}?" if hint else \
                f"known keys here: {', '.join(known)}"
            problems.append(Problem(where(dotted), f"{dotted}: unknown key ({allowed})"))
            continue
        value_type, rules = known[name]
        if is_section(value_type):
            values[name] = _build_section(value_type, value, dotted, where, problems)
        else:
            checked = _check_value(value, value_type, rules, dotted, where, problems)
            if checked is not _INVALID:
                values[name] = checked
    return section_type(**values)


_INVALID = object()


def _check_value(value: Any, value_type: Any, rules: dict, dotted: str, where: KeyLocator,
                 problems: list[Problem]) -> Any:
    def bad(allowed: str):
        problems.append(Problem(where(dotted), f"{dotted} = {_show(value)} is not allowed: {allowed}"))
        return _INVALID

    kind = rules.get("kind")
    if kind == "str_list":
        if not isinstance(value, list) or not all(isinstance(v, str) and "\x00" not in v for v in value):
            return bad("expected a list of strings")
        if rules.get("choices"):
            wrong = [v for v in value if v not in rules["choices"]]
            if wrong:
                return bad(f"each item must be one of {', '.join(rules['choices'])}")
        return value
    if kind == "modules":
        if value == "all-linear":
            return value
        if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
            return value
        return bad('expected "all-linear" or a non-empty list of module names')
    if kind == "action_map":
        if not isinstance(value, dict):
            return bad("expected a table of alert kind = action")
        merged = {**_default_of(dotted), **value}
        for alert, action in value.items():
            if alert not in ALERT_KINDS:
                problems.append(Problem(where(f"{dotted}.{alert}"),
                                        f"{dotted}.{alert}: unknown alert kind; known kinds are {', '.join(ALERT_KINDS)}"))
            elif action not in AUTOPILOT_ACTIONS:
                problems.append(Problem(where(f"{dotted}.{alert}"),
                                        f"{dotted}.{alert} = {_show(action)} is not allowed: "
                                        f"use one of {', '.join(AUTOPILOT_ACTIONS)}"))
            elif alert in AUTOPILOT_UNSEEN and action != "none":
                problems.append(Problem(where(f"{dotted}.{alert}"), f"{dotted}.{alert} = {_show(action)} is not "
                                        f"allowed: {AUTOPILOT_UNSEEN[alert]}"))
        return merged

    if value_type is bool:
        if not isinstance(value, bool):
            return bad("expected true or false")
    elif value_type is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return bad("expected a whole number")
    elif value_type is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return bad("expected a number")
        value = float(value)
        if not math.isfinite(value):
            return bad("expected a finite number")
    elif value_type is str:
        if not isinstance(value, str):
            return bad("expected a string")
        if "\x00" in value:
            return bad("must not contain a NUL character")

    if rules.get("choices") and value not in rules["choices"]:
        return bad(f"use one of {', '.join(rules['choices'])}")
    low, high = rules.get("min"), rules.get("max")
    if low is not None and (value < low or (rules.get("min_exclusive") and value == low)):
        return bad(f"must be {'greater than' if rules.get('min_exclusive') else 'at least'} {low:g}"
                   + (f" and at most {high:g}" if high is not None else ""))
    if high is not None and value > high:
        return bad(f"must be at most {high:g}")
    return value


def _default_of(dotted: str) -> dict:
    section: Any = Config()
    for part in dotted.split("."):
        section = getattr(section, part)
    return dict(section)


def _check_cross_keys(config: Config, where: KeyLocator, problems: list[Problem]) -> None:
    """Settings that are each valid but contradict one another, or name missing files."""
    train = config.train
    if train.adapter_dtype == "bf16" and train.precision not in ("bf16",):
        problems.append(Problem(where("train.adapter_dtype"),
                                f'train.adapter_dtype = "bf16" needs train.precision = "bf16" '
                                f'(it is "{train.precision}")'))
    data_path = config.data.path
    if not data_path.startswith("builtin:"):
        if not Path(data_path).is_file():
            problems.append(Problem(where("data.path"), f"data.path = {_show(data_path)}: no such file"))
    elif data_path not in BUILTIN_DATASETS:
        problems.append(Problem(where("data.path"), f"data.path = {_show(data_path)} is not allowed: "
                                f"built-in datasets are {', '.join(BUILTIN_DATASETS)}"))
    model = config.model.name_or_path
    if model.startswith("builtin:"):
        if model not in BUILTIN_MODELS:
            problems.append(Problem(where("model.name_or_path"),
                                    f"model.name_or_path = {_show(model)} is not allowed: built-in models "
                                    f"are {', '.join(BUILTIN_MODELS)}"))
    elif Path(model).is_absolute() and not Path(model).is_dir():
        problems.append(Problem(where("model.name_or_path"),
                                f"model.name_or_path = {_show(model)}: no such directory"))
    if not config.run.name or not re.fullmatch(r"[\w.\-]+", config.run.name) or config.run.name in (".", ".."):
        problems.append(Problem(where("run.name"), f"run.name = {_show(config.run.name)} is not allowed: "
                                "use letters, digits, '.', '-' and '_' (it names a directory)"))


BUILTIN_DATASETS = ("builtin:tiny-text", "builtin:tiny-qa", "builtin:tiny-chat", "builtin:tiny-chat-mojibake",
                    "builtin:tiny-chat-longtail", "builtin:tiny-shapes", "builtin:tiny-shapes-heldout", "builtin:tiny-shapes-blank")
BUILTIN_MODELS = ("builtin:tiny-llama", "builtin:tiny-llama-outliers", "builtin:tiny-llama-token-outliers",
                  "builtin:tiny-vlm", "builtin:tiny-vlm-outliers", "builtin:tiny-qwen2-vl")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserInputError(Problem(str(path), "no such config file")) from None
    except IsADirectoryError:
        raise UserInputError(Problem(str(path), "is a directory, expected a TOML config file")) from None
    except UnicodeDecodeError as exc:
        raise UserInputError(Problem(str(path), f"is not UTF-8 text ({exc.reason} at byte {exc.start})")) from None
    except OSError as exc:
        raise UserInputError(Problem(str(path), f"cannot be read: {exc.strerror}")) from None


def _parse_toml(text: str, source: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        found = re.search(r"\(at line (\d+), column (\d+)\)", message)
        detail = re.sub(r"\s*\(at line \d+, column \d+\)", "", message)
        place = f"{source}:{found.group(1)}:{found.group(2)}" if found else source
        if "(at end of document)" in message:  # an unclosed array or table: point at the last line
            place = f"{source}:{max(1, len(text.splitlines()))}"
        raise UserInputError(Problem(place, f"TOML syntax error: {detail}")) from None


def _resolve_paths(raw: dict, base: Path, where: "KeyLocator") -> None:
    for dotted in PATH_KEYS:
        section, _, name = dotted.partition(".")
        table = raw.get(section)
        if isinstance(table, dict) and isinstance(table.get(name), str):
            table[name] = _resolve_path_value(dotted, table[name], base, where(dotted))


def _resolve_path_value(dotted: str, value: str, base: Path, place: str) -> str:
    if value.startswith("builtin:") or not value or "\x00" in value:
        return value  # (a NUL cannot be in a path: validation reports it)
    try:
        candidate = Path(value).expanduser()
    except RuntimeError:  # ~name for a user this machine does not have, or ~ with no home to find
        user = value.split("/", 1)[0]
        why = "there is no home directory to expand ~ to (HOME is not set); write the path out" if user == "~" \
            else f"{user} names no user on this machine; write the path out, or start it with ~/ for your own home"
        raise UserInputError(Problem(place, f"{dotted} = {value!r}: {why}")) from None
    if dotted == "model.name_or_path":
        written_as_path = candidate.is_absolute() or value.startswith((".", "~"))
        if not written_as_path and not (base / candidate).exists():
            return value  # a hub id such as "openbmb/MiniCPM-V-2_6", looked up in the local cache
    return str(candidate if candidate.is_absolute() else (base / candidate).resolve())


def _set_dotted(raw: dict, dotted: str, value: Any, problems: list[Problem]) -> None:
    parts = dotted.split(".")
    table = raw
    for part in parts[:-1]:
        table = table.setdefault(part, {})
        if not isinstance(table, dict):
            problems.append(Problem("--set", f"{dotted}: {part} is not a table"))
            return
    table[parts[-1]] = value


def _normalise_key(text: str) -> str:
    return ".".join(part.strip().strip("\"'") for part in text.split("."))


def _show(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    return repr(value)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
