"""Why the trainer failed: its error, the last lines of trainer.log and where the whole log is."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from loratui.errors import EXIT_TRAINING_FAILED


class FailurePanel(Widget):
    DEFAULT_CSS = """
    FailurePanel {
        height: auto;
        max-height: 60%;
        border: heavy $error;
        padding: 0 1;
        display: none;
        overflow-y: auto;
    }
    FailurePanel.-failed {
        display: block;
    }
    """

    failure: reactive[dict | None] = reactive(None, layout=True)

    def on_mount(self) -> None:
        self.border_title = "Training failed"

    def watch_failure(self, failure: dict | None) -> None:
        self.set_class(failure is not None, "-failed")
        if failure and failure.get("ending"):
            self.border_title = f"Training failed · the trainer {failure['ending']}"

    def render(self) -> Text:
        failure = self.failure or {}
        text = Text()
        text.append(str(failure.get("error") or "").strip(), style="bold")
        if failure.get("step") is not None:
            text.append(f"  (at step {failure['step']})")
        traceback = (failure.get("traceback") or "").strip().splitlines()
        if traceback:
            text.append("\n" + "\n".join(traceback[-6:]), style="dim")
        if failure.get("log_tail"):
            text.append(f"\n\nlast lines of {failure.get('log_path')}:\n", style="bold")
            text.append(failure["log_tail"])
        elif failure.get("log_path"):
            text.append(f"\n\ntrainer.log: {failure['log_path']} (empty)", style="dim")
        code = failure.get("exit_code", EXIT_TRAINING_FAILED)
        text.append(f"\nThe last complete checkpoint is intact. Press q to quit (exit code {code}).", style="italic")
        if failure.get("resume"):
            text.append("\nResume from it: ", style="italic")
            text.append(failure["resume"], style="bold")
        return text
