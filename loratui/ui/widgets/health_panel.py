"""The precision health checks: one row per check with its status, current figure and a short reason.

Status is spelled out (OK, WARN, ALERT) as well as coloured, so the panel
reads the same with NO_COLOR. A vision-language run adds one compact row per
part of the model (vision tower, projector, language model) from the health
event's `parts`: the part's worst status, its fp16 headroom, and where each
probe's figure stands in that part with the module that set it; a text run has
no `parts` and no such rows.
"""

from __future__ import annotations

import textwrap

from rich.style import Style as RichStyle
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from loratui.ui import format as fmt
from loratui.ui.widgets.steady_height import SteadyHeight

CHECK_LABELS = {
    "fp16_headroom": "fp16 headroom", "underflow": "underflow", "fidelity": "grad fidelity",
    "stale_update": "stale updates", "loss_scale": "loss scale", "skip_rate": "skip rate",
    "loss_trend": "loss trend",
}
STATUS = {"ok": ("✓ OK", "green"), "warn": ("! WARN", "bold yellow"), "alert": ("✗ ALERT", "bold white on red"),
          "n/a": ("· n/a", "dim")}


WRAP_WIDTH = 70
PART_LABELS = {"vision_tower": "vision tower", "projector": "projector", "language_model": "language model"}
# The per-part figures in a row, in order, with a short name and how to write the figure.
PART_FIGURES = (("fp16_headroom", "headroom", lambda v: f"{fmt.number(v, 3)}x"),
                ("underflow", "underflow", lambda v: fmt.number(v, 3)),
                ("fidelity", "fidelity", lambda v: f"{v:.5f}"),
                ("stale_update", "stale", lambda v: fmt.number(v, 3)))
STATUS_RANK = {"n/a": 0, "ok": 1, "warn": 2, "alert": 3}


class HealthPanel(SteadyHeight, Widget):
    DEFAULT_CSS = """
    HealthPanel {
        height: auto;
        border: round $primary-darken-1;
        border-title-color: $text;
        padding: 0 1;
    }
    HealthPanel.-alert {
        border: round $error;
    }
    """

    # No layout per probe (the dashboard's cost): refresh_content lays out again only when the
    # panel's line count changes. `parts` is set before `checks`, whose watcher measures both.
    checks: reactive[dict] = reactive(dict, always_update=True)
    parts: reactive[dict] = reactive(dict)
    step: reactive[int | None] = reactive(None)

    def on_mount(self) -> None:
        self.border_title = "Health"

    def watch_checks(self, checks: dict) -> None:
        self.set_class(any(c.get("status") == "alert" for c in checks.values() if isinstance(c, dict)), "-alert")
        self.border_title = f"Health · step {self.step}" if self.step is not None else "Health"
        self.refresh_content()

    def line_count(self, width: int) -> int:
        """The rows are laid out here, never wrapped by Textual: their lines, counted without drawing them."""
        if not self.checks:
            return super().line_count(width)  # the waiting line wraps
        return self.content().plain.count("\n") + 1

    def content(self) -> Text:
        """The rows as aligned text (a rich Table drew the same, at several times the CPU per probe)."""
        if not self.checks:
            return Text("waiting for the first health probe", style="dim")
        rows = []
        for name, check in self.checks.items():
            check = check if isinstance(check, dict) else {"status": str(check)}
            label, style = STATUS.get(check.get("status", "n/a"), (str(check.get("status")), ""))
            rows.append((CHECK_LABELS.get(name, name.replace("_", " ")), label, style, _figure(check.get("value")),
                         str(check.get("summary") or "")))
        for part, figures in (self.parts or {}).items():
            if not isinstance(figures, dict):
                continue
            label, style = STATUS.get(_worst_status(figures), STATUS["n/a"])
            headroom = figures.get("fp16_headroom") or {}
            rows.append((PART_LABELS.get(part, part.replace("_", " ")), label, style,
                         _figure(headroom.get("value")) if headroom.get("value") is not None else "-",
                         part_line(figures)))
        return aligned_rows(rows, self.content_size.width)


def aligned_rows(rows: list[tuple[str, str, str, str, str]], width: int) -> Text:
    """(name, status, status style, figure, reason) rows in aligned columns, one space apart.

    The reason takes the rest of the line: a wide panel (a wide terminal) wraps it
    under itself, to be read whole; a narrow one cuts it with an ellipsis.
    """
    name_width = max(len(row[0]) for row in rows)
    status_width = max(len(row[1]) for row in rows)
    figure_width = max(len(row[3]) for row in rows)
    indent = name_width + status_width + figure_width + 3
    room = max(width - indent, 1)
    wrap = width >= WRAP_WIDTH
    text = Text(no_wrap=True, overflow="ellipsis", end="")
    for index, (name, status, style, figure, reason) in enumerate(rows):
        if index:
            text.append("\n")
        text.append(f"{name:<{name_width}} ")
        # The spaces up to the right-aligned figure go with the status: a text run that starts with
        # spaces loses them in the PNG screenshots (rsvg-convert). A badge with a background stays
        # tight, its spaces bold (unseen) so that they stay a run of their own.
        padding = " " * (status_width - len(status) + 1 + figure_width - len(figure))
        if RichStyle.parse(style).bgcolor is not None:
            text.append(status, style=style)
            text.append(padding, style="bold")
        else:
            text.append(status + padding, style=style)
        text.append(f"{figure} ")
        lines = _wrapped(reason, room) if wrap else [_cut(reason, room)]
        text.append(lines[0], style="dim")
        for line in lines[1:]:
            text.append("\n" + " " * indent)
            text.append(line, style="dim")
    return text


def _wrapped(reason: str, room: int) -> list[str]:
    """The reason in lines of at most `room` characters, broken at spaces where it can be (a long word folds)."""
    return textwrap.wrap(reason, room, break_on_hyphens=False) or [""]


def _cut(reason: str, room: int) -> str:
    return reason if len(reason) <= room else reason[: max(room - 1, 0)] + "…"


def _figure(value) -> str:
    if isinstance(value, (int, float, str)) or value is None:
        return fmt.number(value, 3) if not isinstance(value, str) else value
    return str(value)


def part_line(figures: dict) -> str:
    """One part in a short line: 'fp16 · peak layers.0.mlp.fc2 · underflow 0 · fidelity 0.99999 · stale 0'.

    The module behind the headroom is always named; the others' only when their figure is not OK (the
    details name every one in full).
    """
    headroom = figures.get("fp16_headroom") or {}
    pieces = [str(figures.get("precision") or "?")]
    if headroom.get("module"):
        pieces.append(f"peak {_short_module(headroom['module'])}")
    for key, name, write in PART_FIGURES[1:]:
        entry = figures.get(key) or {}
        value = entry.get("value")
        piece = f"{name} {write(value) if isinstance(value, (int, float)) else '-'}"
        if entry.get("module") and entry.get("status") in ("warn", "alert"):
            piece += f" ({_short_module(entry['module'])})"
        pieces.append(piece)
    return " · ".join(pieces)


def _part_details(text: Text, part: str, figures: dict) -> None:
    """A part's block in the health details: each figure with its status and the module's whole name."""
    label, style = STATUS.get(_worst_status(figures), STATUS["n/a"])
    text.append(f"{PART_LABELS.get(part, part.replace('_', ' '))}  ", style="bold")
    text.append(label, style=style)
    text.append(f"  (computes in {figures.get('precision') or '?'})\n")
    for key, _, write in PART_FIGURES:
        entry = figures.get(key) or {}
        status, status_style = STATUS.get(entry.get("status", "n/a"), STATUS["n/a"])
        value = entry.get("value")
        text.append(f"  {CHECK_LABELS[key]:<14} ")
        text.append(f"{status:<8}", style=status_style)
        text.append(f" {write(value) if isinstance(value, (int, float)) else '-':>10}  {entry.get('module') or ''}")
        if entry.get("where"):
            text.append(f" {entry['where']} (peak {fmt.number(entry.get('peak'), 3)})")
        text.append("\n")
    text.append("\n")


def _short_module(name: str) -> str:
    """Enough of a module's name to find it: 'model.vision_tower.encoder.layers.0.mlp.fc1' -> 'layers.0.mlp.fc1'."""
    return ".".join(name.removeprefix("model.").split(".")[-4:])


def _worst_status(figures: dict) -> str:
    statuses = [entry.get("status", "n/a") for key, *_ in PART_FIGURES if isinstance(entry := figures.get(key), dict)]
    return max(statuses, key=lambda status: STATUS_RANK.get(status, 0), default="n/a")


def health_text(checks: dict, parts: dict | None = None) -> Text:
    """Every check in full, its whole reason wrapped (the panel cuts reasons to one line); then each part's figures."""
    if not checks:
        return Text("no health probe yet", style="dim")
    text = Text()
    for name, check in checks.items():
        check = check if isinstance(check, dict) else {"status": str(check)}
        label, style = STATUS.get(check.get("status", "n/a"), (str(check.get("status")), ""))
        text.append(f"{CHECK_LABELS.get(name, name.replace('_', ' '))}  ", style="bold")
        text.append(label, style=style)
        text.append(f"  {_figure(check.get('value'))}\n")
        text.append(f"  {check.get('summary') or ''}\n\n")
    for part, figures in (parts or {}).items():
        if isinstance(figures, dict):
            _part_details(text, part, figures)
    text.rstrip()
    return text
