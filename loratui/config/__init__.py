"""The run config: TOML in, typed and validated sections out."""

from loratui.config.load import load_config, parse_override, render_toml
from loratui.config.schema import Config

__all__ = ["Config", "load_config", "parse_override", "render_toml"]
