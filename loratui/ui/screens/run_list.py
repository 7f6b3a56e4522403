"""`loratui watch runs/`: pick a run from a folder of runs, newest first; the dashboard then opens it.

Keys:
| key        | does                                  |
|------------|---------------------------------------|
| up / down  | move through the runs                 |
| enter      | watch the highlighted run             |
| q / escape | quit without choosing                 |

The runs are listed at once by name; each row fills in its state, step and
alert counts as a worker reads its log (newest first, so the run you most
likely want is ready first). The app returns the chosen run directory.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import Footer, OptionList, Static
from textual.widgets.option_list import Option
from textual.worker import get_current_worker

from loratui.ui.run_list import HEADER, RunSummary, summarize
from loratui.ui.themes import apply_look, look_from_environment


@dataclass
class RunSummarized(Message):
    """The worker has read one run's log."""

    index: int
    summary: RunSummary


class RunListApp(App[Path | None]):
    TITLE = "loratui · runs"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    #heading {
        height: auto;
        padding: 0 1;
        text-style: bold;
    }
    #columns {
        height: 1;
        padding: 0 1;
        color: $text-muted;
    }
    #runs {
        height: 1fr;
        border: round $primary-darken-1;
    }
    /* NO_COLOR: the highlighted run stands out by its text style (its colours are gone). */
    OptionList:nocolor > .option-list--option-highlighted {
        text-style: bold underline;
    }
    """
    BINDINGS = [
        Binding("q", "quit_list", "Quit", id="quit"),
        Binding("escape", "quit_list", "Quit", id="quit_escape", show=False),
    ]

    def __init__(self, folder: Path, runs: list[Path]):
        # NO_COLOR as in the dashboard: the terminal's own ANSI colours, which Textual then drops.
        super().__init__(ansi_color=True if "NO_COLOR" in os.environ else None)
        self.folder = folder
        self.runs = runs
        self.summaries: dict[Path, RunSummary] = {}

    def compose(self) -> ComposeResult:
        count = len(self.runs)
        yield Static(f"{count} run{'s' if count != 1 else ''} in {self.folder} · newest first · enter: watch",
                     id="heading", markup=False)
        yield Static(HEADER, id="columns", markup=False)
        yield OptionList(*[Option(f"{'':<16}  {'reading...':<22} {'':>11}  {'':<5} {'':<19} {run.name}",
                                  id=str(index)) for index, run in enumerate(self.runs)], id="runs")
        yield Footer()

    def on_mount(self) -> None:
        apply_look(self, look_from_environment())
        self.query_one(OptionList).focus()
        self.run_worker(self.read_summaries, thread=True, name="runs", exit_on_error=False)

    def read_summaries(self) -> None:
        worker = get_current_worker()
        for index, run in enumerate(self.runs):
            if worker.is_cancelled:
                return
            try:
                summary = summarize(run)
            except OSError:
                continue  # removed while listing: its row keeps saying so
            self.post_message(RunSummarized(index, summary))

    def on_run_summarized(self, message: RunSummarized) -> None:
        self.summaries[message.summary.path] = message.summary
        self.query_one(OptionList).replace_option_prompt(str(message.index), message.summary.row(time.time()))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.exit(self.runs[int(event.option.id)])

    def action_quit_list(self) -> None:
        self.exit(None)
