"""The run's header: name, state, precision badge, progress with ETA, throughput, learning rate, attempt."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from loratui.ui import format as fmt
from loratui.ui.run_model import HeaderView

STATE_STYLES = {
    "starting": "bold", "waiting": "bold", "loading": "bold cyan", "running": "bold green",
    "paused": "bold yellow", "restarting": "bold magenta", "stopping": "bold yellow",
    "finished": "bold blue", "failed": "bold white on red", "detached": "bold",
}
STATE_MARKS = {"running": "●", "paused": "‖", "restarting": "↺", "finished": "✓", "failed": "✗",
               "loading": "…", "starting": "…", "waiting": "…", "stopping": "■", "detached": "⏏"}
BADGE_STYLES = {"fp16": "bold black on yellow", "bf16": "bold white on blue", "fp32": "bold black on green"}


class RunHeader(Widget):
    DEFAULT_CSS = """
    RunHeader {
        height: 2;
        background: $panel;
        padding: 0 1;
    }
    """

    view: reactive[HeaderView | None] = reactive(None)

    def render(self) -> Text:
        view = self.view
        if view is None:
            return Text("loratui · waiting for the run's first event", style="bold")
        width = max(self.size.width, 20)
        return Text("\n").join([_fit(self._first_line(view), width, shrink=Text(view.run_name, style="bold")),
                                 _fit(self._second_line(view), width)])

    def _first_line(self, view: HeaderView) -> list[tuple[Text, int]]:
        """Pieces of the line with their priority (the run's name is put in by _fit, shortened to fit)."""
        parts = [(Text(f"{STATE_MARKS.get(view.state, '')} {view.state.upper()}",
                       style=STATE_STYLES.get(view.state, "")), 9)]
        if view.state_detail:
            parts.append((Text(f"({view.state_detail})", style="dim" if view.state != "failed" else ""), 2))
        if view.precision:
            parts.append((Text(f" {view.precision} ", style=BADGE_STYLES.get(view.precision, "reverse")), 8))
            if view.loss_scaling:
                parts.append((Text("loss scaling", style="dim"), 1))
        if view.active_alerts:
            plural = "s" if view.active_alerts > 1 else ""
            parts.append((Text(f" {view.active_alerts} alert{plural} ", style="bold white on red"), 7))
        parts.append((Text(f"attempt {view.attempt}", style="dim"), 8))
        return parts

    def _second_line(self, view: HeaderView) -> list[tuple[Text, int]]:
        parts = []
        if view.reading is not None:
            parts.append((Text(f"reading the event log {view.reading:.0%}", style="bold cyan"), 9))
        if view.phase and view.state == "loading":
            name, done, total = view.phase
            share = f" {done}/{total}" if total else ""
            parts.append((Text(f"{name.replace('_', ' ')}{share}", style="cyan"), 9))
            if total:
                parts.append((Text(_bar(done / total, 20), style="cyan"), 5))
            return parts
        if view.max_steps:
            share = view.step / view.max_steps
            parts.append((Text(f"step {view.step}/{view.max_steps}", style="bold"), 9))
            parts.append((Text(f"{_bar(share, 12)} {share:.0%}"), 2))
        else:
            parts.append((Text(f"step {view.step}", style="bold"), 9))
        if view.eta_s is not None:
            parts.append((Text(f"ETA {fmt.duration(view.eta_s)}"), 8))
        elif view.elapsed_s is not None and view.state in ("finished", "failed"):
            parts.append((Text(f"took {fmt.duration(view.elapsed_s)}"), 4))
        parts.append((Text(f"{fmt.rate(view.tokens_per_s)} tok/s"), 6))
        if view.images_per_s is not None:
            parts.append((Text(f"{fmt.rate(view.images_per_s)} img/s"), 6))
        parts.append((Text(f"lr {fmt.number(view.lr, 3)}"), 7))
        return parts


MIN_NAME = 12  # a run's name keeps this many characters before a low-priority piece goes
KEEP = 5  # pieces of this priority and up stay; the name is shortened for them (state, precision, attempt)


def _fit(parts: list[tuple[Text, int]], width: int, shrink: Text | None = None) -> Text:
    """Join the pieces two spaces apart, dropping the lowest-priority ones until the line fits.

    `shrink` (the run's name) goes first and gives way: it is cut short with an
    ellipsis rather than pushing out the state or the attempt.
    """
    parts = list(parts)
    reserve = 0 if shrink is None else min(len(shrink), MIN_NAME) + 2

    def needed() -> int:
        return sum(len(t) for t, _ in parts) + 2 * (len(parts) - 1) + reserve

    while len(parts) > 1 and needed() > width:
        lowest = min(parts, key=lambda part: part[1])
        if shrink is not None and lowest[1] >= KEEP:
            break
        parts.remove(lowest)
    texts = [text for text, _ in parts]
    if shrink is not None:
        room = width - (needed() - reserve) - 2
        name = shrink.copy()
        name.truncate(max(room, 1), overflow="ellipsis")
        texts.insert(0, name)
    line = Text("  ").join(texts)
    line.truncate(width, overflow="ellipsis")
    return line


def _bar(share: float, width: int) -> str:
    share = min(max(share, 0.0), 1.0)
    filled = round(share * width)
    return "█" * filled + "░" * (width - filled)
