"""The dashboard's look: a dark or light theme, and an ASCII-only mode for fonts without braille.

Chosen by flags (`loratui watch --theme light --ascii`) or, for every command
that shows the dashboard, by the environment: LORATUI_THEME=light|dark and
LORATUI_ASCII=1 (as nvitop's `-U`, for terminals whose fonts break braille
and box drawing). A flag wins over the environment; `look_from_environment`
reads what the flags leave there.

ASCII mode draws the charts with ASCII markers and frames (chart_options.py,
metric_chart.py) and every widget border with `+`, `-` and `|`: Textual has no
setting for that, so `use_ascii_borders` points each border style's characters
at its own "ascii" style, for the whole process (a dashboard is one per process).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from loratui.errors import Problem, UserInputError

THEMES = {"dark": "textual-dark", "light": "textual-light"}  # ours -> Textual's built-in theme
THEME_VARIABLE, ASCII_VARIABLE = "LORATUI_THEME", "LORATUI_ASCII"
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class Look:
    theme: str = "dark"
    ascii: bool = False

    @property
    def textual_theme(self) -> str:
        return THEMES[self.theme]


def look_from_environment(environ=None) -> Look:
    """LORATUI_THEME and LORATUI_ASCII; a value outside the allowed ones is bad input (exit 2)."""
    environ = os.environ if environ is None else environ
    theme = environ.get(THEME_VARIABLE, "dark").strip().lower() or "dark"
    ascii_value = environ.get(ASCII_VARIABLE, "").strip().lower()
    problems = []
    if theme not in THEMES:
        problems.append(Problem(THEME_VARIABLE, f"{theme!r} is not a theme; allowed: {', '.join(THEMES)}"))
    if ascii_value not in TRUE_WORDS + FALSE_WORDS:
        problems.append(Problem(ASCII_VARIABLE, f"{ascii_value!r} is not allowed; use 1 (on) or 0 (off)"))
    if problems:
        raise UserInputError(problems)
    return Look(theme=theme, ascii=ascii_value in TRUE_WORDS)


def choose_look(theme_flag: str | None, ascii_flag: bool) -> Look:
    """The flags over the environment; written back to it, so the app (and any child) sees the same look."""
    look = look_from_environment()
    look = Look(theme=theme_flag or look.theme, ascii=ascii_flag or look.ascii)
    os.environ[THEME_VARIABLE] = look.theme
    os.environ[ASCII_VARIABLE] = "1" if look.ascii else "0"
    return look


def apply_look(app, look: Look) -> None:
    """Set the app's theme, and ASCII borders when asked (from on_mount, before the first frame)."""
    app.theme = look.textual_theme
    if look.ascii:
        use_ascii_borders()


def use_ascii_borders() -> None:
    """Every border style drawn with the "ascii" style's characters, for the rest of this process."""
    from textual import _border

    for table in (_border.BORDER_CHARS, _border.BORDER_LOCATIONS):
        ascii_style = table["ascii"]
        for name in table:
            if name not in ("", "none", "hidden", "blank"):
                table[name] = ascii_style
    _border.get_box.cache_clear()
