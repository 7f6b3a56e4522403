"""`loratui demo`: the built-in offline example and the precision-fault scenarios.

Each scenario is the healthy demo config plus a few overrides that reproduce a
fault by a mechanism that happens in real training (see the README).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Scenario:
    description: str
    overrides: dict = field(default_factory=dict)


SCENARIOS: dict[str, Scenario] = {
    "healthy": Scenario("The tiny Llama learns the bundled chat data; no faults."),
}


def demo_config(name: str, overrides: list[str], *, resume: bool = False):
    """The demo config for a scenario, with the user's --set overrides applied last."""
    from loratui.config.load import load_config

    scenario = SCENARIOS[name]
    scenario_overrides = [f"{key}={_toml(value)}" for key, value in scenario.overrides.items()]
    base_name = f"demo-{name}"
    config = load_config(_empty_config(), [*scenario_overrides, f"run.name={base_name}",
                                            f"run.output_dir={Path.cwd() / 'runs'}", *overrides])
    if config.run.name == base_name:  # not chosen by the user: one directory per demo run
        config.run.name = _demo_run_name(Path(config.run.output_dir), base_name, resume)
    return config


def _demo_run_name(output_dir: Path, base_name: str, resume: bool) -> str:
    if resume:
        existing = sorted(output_dir.glob(f"{base_name}-*"))
        if existing:
            return existing[-1].name
    return f"{base_name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _empty_config() -> Path:
    """The demo is the defaults: an empty TOML file stands for them."""
    from loratui.data.builtin_data import BUILTIN_DIR

    return BUILTIN_DIR.parent / "demo.toml"


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)
