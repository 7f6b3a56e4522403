"""The loratui dashboard: live panels for one run directory, and the keys that steer the run.

The app is a client of a run directory. A worker thread tails events.jsonl
into a RunModel; a timer redraws the panels from a snapshot a few times a
second (never per event); keys append commands to control.jsonl, which the
trainer obeys at its next step boundary. In `loratui run` the app also
starts the trainer as a child process in its own session and a second
worker waits for it; in `loratui watch` it attaches to whatever writes the
run directory (a headless run, a multi-GPU run, a finished run).

Keys:
| key    | does                                                                  |
|--------|-----------------------------------------------------------------------|
| p      | switch precision (fp32, bf16, fp16): restart from a checkpoint        |
| l      | lower the learning rate: restart from a checkpoint with the new rate  |
| r      | roll back to a chosen checkpoint                                      |
| s      | save a checkpoint now                                                 |
| space  | pause / resume                                                        |
| enter  | the highlighted alert's details (evidence, meaning, fix)              |
| d      | detach: quit the dashboard, training goes on                          |
| q      | quit: stop the training (with a checkpoint), detach, or cancel        |
| ?      | these keys                                                            |

Signals sent to the dashboard process (the trainer, in its own session, never
sees the terminal's):
| signal  | under `loratui run`                                  | under `loratui watch`       |
|---------|------------------------------------------------------|-----------------------------|
| SIGTERM | passed on to the trainer: it saves a checkpoint and  | detach, exit 143            |
|         | stops; the dashboard exits with its code, 143        |                             |
| SIGINT  | the same, exit 130; a second SIGINT, passed on too,  | detach, exit 130            |
|         | makes the trainer exit at once                       |                             |
| SIGHUP  | detach (the terminal is gone): training goes on, 129 | detach, exit 129            |

How the trainer ended decides the exit code of `loratui run`: its own code
(0 done, 1 failed, 2 bad input, 128 + N after a signal it caught and stopped
for); killed outright by a signal the dashboard did not pass on (SIGKILL from
the out-of-memory killer), it failed: the dashboard names the signal and exits 1.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Container, Vertical
from textual.widgets import Footer
from textual.worker import Worker, WorkerState, get_current_worker

from loratui.control import send_command
from loratui.errors import EXIT_TRAINING_FAILED
from loratui.run_dir import RunDir
from loratui.ui import run_model as states
from loratui.ui.event_follower import EventFollower
from loratui.ui.messages import HistoryCaughtUp, TrainerExited
from loratui.ui.run_files import list_checkpoints, read_advice, tail_lines
from loratui.ui.run_model import RunModel, RunView, TrainerEnding
from loratui.ui.screens.alert_details import AlertDetails
from loratui.ui.screens.help_screen import HelpScreen
from loratui.ui.screens.learning_rate_dialog import LearningRateDialog
from loratui.ui.screens.precision_dialog import PrecisionDialog
from loratui.ui.screens.quit_dialog import QuitDialog
from loratui.ui.screens.rollback_dialog import RollbackDialog
from loratui.ui.supervisor import TrainerProcess
from loratui.ui.widgets.alert_banner import AlertBanner
from loratui.ui.widgets.event_list import EventList
from loratui.ui.widgets.failure_panel import FailurePanel
from loratui.ui.widgets.gpu_panel import GpuPanel, GpuView
from loratui.ui.widgets.health_panel import HealthPanel
from loratui.ui.widgets.metric_chart import MetricChart
from loratui.ui.widgets.run_header import RunHeader

REDRAW_SECONDS = 0.25  # 4 redraws a second at most, whatever the event rate
# Charts advance once a second at most: plotext rebuilds a whole picture (tens of ms of
# CPU) on every change, which at the redraw rate took CPU from the trainer on a small machine.
CHART_SECONDS = 1.0
POLL_SECONDS = 0.1  # how often the follower looks for new events once caught up
TRAINER_POLL_SECONDS = 0.2  # how long a detach may wait for the trainer's supervisor to let go
COMPACT_WIDTH, COMPACT_HEIGHT = 120, 36
TRAINER_LOG_LINES = 15  # of trainer.log, shown with a failure
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_DETACHED = 0
EXIT_HANGUP = 129
HANGUP_EXIT_SECONDS = 2.0
CONTROL_ACTIONS = ("switch_precision", "lower_lr", "rollback", "save", "pause", "resume")


class DashboardApp(App[int]):
    TITLE = "loratui"
    ENABLE_COMMAND_PALETTE = False

    CSS = """
    Screen {
        layout: vertical;
    }
    #body {
        layout: horizontal;
        height: 1fr;
    }
    #charts {
        width: 2fr;
        layout: vertical;
    }
    #side {
        width: 1fr;
        min-width: 48;
        layout: vertical;
    }
    #status {
        height: auto;
        layout: vertical;
    }
    .compact #body {
        layout: vertical;
    }
    .compact #charts {
        width: 1fr;
        height: 1fr;
        layout: horizontal;
    }
    .compact #side {
        width: 1fr;
        height: 12;
        layout: horizontal;
    }
    .compact #status {
        width: 1fr;
        height: 12;
    }
    .compact GpuPanel {
        border: none;
    }
    .compact EventList {
        width: 1fr;
        height: 12;
    }
    .compact MetricChart {
        width: 1fr;
        height: 1fr;
    }
    /* NO_COLOR: the highlighted row stands out by its text style (its colours are gone). */
    OptionList:nocolor > .option-list--option-highlighted {
        text-style: bold underline;
    }
    """

    BINDINGS = [
        Binding("p", "switch_precision", "Precision", id="switch_precision",
                tooltip="switch precision (fp32, bf16, fp16): restart from a checkpoint"),
        Binding("l", "lower_lr", "Lower LR", id="lower_lr",
                tooltip="lower the learning rate: restart from a checkpoint with the new rate"),
        Binding("r", "rollback", "Roll back", id="rollback", tooltip="roll back to a chosen checkpoint"),
        Binding("s", "save", "Save", id="save", tooltip="save a checkpoint now"),
        Binding("space", "pause", "Pause", id="pause", tooltip="pause training (at the next step boundary)"),
        Binding("space", "resume", "Resume", id="resume", tooltip="resume training"),
        Binding("enter", "alert_details", "Details", id="alert_details", show=False,
                tooltip="the highlighted alert's details: evidence, meaning, fix"),
        Binding("d", "detach", "Detach", id="detach", tooltip="detach: quit the dashboard, training goes on"),
        Binding("q", "quit_dialog", "Quit", id="quit",
                tooltip="quit: stop the training (with a checkpoint), detach, or cancel"),
        Binding("ctrl+q", "quit_dialog", "Quit", id="quit_ctrl", show=False, priority=True),
        Binding("question_mark", "help", "Help", key_display="?", id="help", tooltip="these keys"),
    ]

    def __init__(self, run_dir: Path, *, trainer: TrainerProcess | None = None):
        # With NO_COLOR, Textual greys its truecolours unless it runs on the terminal's own ANSI
        # colours, which it then drops: no colour codes at all, only bold, dim, underline, reverse.
        super().__init__(ansi_color=True if "NO_COLOR" in os.environ else None)
        self.run_dir = RunDir(Path(run_dir))
        self.trainer = trainer
        self.model = RunModel(self.run_dir.root.name, state=states.STARTING if trainer else states.WAITING)
        self.view: RunView | None = None
        self.caught_up = asyncio.Event()
        self.hung_up = False
        self.exit_when_run_ends = False
        self._drawn_version = -1
        self._drawn_state: str | None = None
        self._drawn_health: tuple | None = None
        self._drawn_charts = -1  # the chart revision the charts show
        self._charts_drawn_at = 0.0

    # ------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield RunHeader()
        yield AlertBanner()
        yield FailurePanel()
        with Container(id="body"):
            with Container(id="charts"):
                yield MetricChart("loss", id="chart-loss")
                yield MetricChart("grad_norm", id="chart-grad-norm")
                yield MetricChart("scale", id="chart-scale")
            with Container(id="side"):
                with Vertical(id="status"):
                    yield HealthPanel()
                    yield GpuPanel()
                yield EventList()
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#chart-scale").display = False
        self.query_one(EventList).focus()
        self.redraw()  # the first frame already says what is happening (starting, waiting)
        self.set_interval(REDRAW_SECONDS, self.redraw)
        self.call_after_refresh(self.start_workers)
        try:
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGHUP, self.hang_up)
            for signum in STOP_SIGNALS:
                loop.add_signal_handler(signum, self.stop_for_signal, signum)
        except (NotImplementedError, RuntimeError):
            pass  # no signal handling here (not the main thread, or not Unix): nothing to detach from

    def on_resize(self, event: events.Resize) -> None:
        compact = event.size.width < COMPACT_WIDTH or event.size.height < COMPACT_HEIGHT
        self.screen_stack[0].set_class(compact, "compact")  # the dashboard itself, under any open dialog
        self.query_one(Footer).compact = compact

    def start_workers(self) -> None:
        """After the first frame: start the trainer (in `run`), then follow its events."""
        if self.trainer is not None:
            self.run_worker(self.supervise_trainer, thread=True, name="trainer", exit_on_error=False)
        self.run_worker(self.follow_events, thread=True, name="events", exit_on_error=False)

    # ----------------------------------------------------------- workers

    def supervise_trainer(self) -> None:
        assert self.trainer is not None
        try:
            self.trainer.start()
        except OSError as exc:  # the command itself could not start: say so, as a failed run
            with self.trainer.log_path.open("a") as log:
                log.write(f"loratui: could not start the trainer: {exc}\n")
            with self.model.lock:
                self.model.failure = {"error": f"could not start the trainer: {exc}", "traceback": None}
            self.post_message(TrainerExited(EXIT_TRAINING_FAILED))
            return
        self.model.note_action(f"trainer started (pid {self.trainer.pid}), output in trainer.log",
                               states.STARTING, "importing torch")
        worker = get_current_worker()
        # Short waits, never one long one: the app's shutdown (a detach) joins this thread, and
        # cancels this worker, which must then let go of the trainer and leave it running.
        while not worker.is_cancelled:
            code = self.trainer.wait(TRAINER_POLL_SECONDS)
            if code is not None:
                self.post_message(TrainerExited(code))
                return

    def follow_events(self) -> None:
        worker = get_current_worker()
        follower = EventFollower(self.run_dir.events, self.model)
        announced = False
        while not worker.is_cancelled:
            # No message per block: the redraw timer reads the model, so a flood of events costs
            # the UI thread nothing until the next redraw.
            consumed = follower.read_block()
            if follower.caught_up and not announced:
                announced = True
                self.post_message(HistoryCaughtUp())
            if not consumed:
                time.sleep(POLL_SECONDS)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The one place a worker's failure is reported: the dashboard stays up and says what broke."""
        if event.state != WorkerState.ERROR:
            return
        error = event.worker.error
        with self.model.lock:
            self.model.note_action(f"{event.worker.name} worker failed: {type(error).__name__}: {error}")
        self.notify(f"{event.worker.name}: {error}", title="dashboard error", severity="error", timeout=10)

    def on_history_caught_up(self, message: HistoryCaughtUp) -> None:
        self.caught_up.set()
        self._charts_drawn_at = 0.0  # the whole history is in: show it now, not at the next chart slot
        self.redraw()

    def on_trainer_exited(self, message: TrainerExited) -> None:
        # Let the follower read the trainer's last lines before the exit is folded in.
        self.set_timer(POLL_SECONDS * 3, lambda: self.fold_trainer_exit(message.exit_code))

    def fold_trainer_exit(self, returncode: int) -> None:
        ending = TrainerEnding.from_returncode(returncode, self.trainer.passed_signal if self.trainer else None)
        with self.model.lock:
            self.model.trainer_exited(ending, *self.trainer_log())
        self.redraw()
        if self.exit_when_run_ends:
            self.exit(self.outcome_code())

    def trainer_log(self) -> tuple[str, str]:
        """trainer.log's last lines and its path."""
        return tail_lines(self.run_dir.trainer_log, TRAINER_LOG_LINES), str(self.run_dir.trainer_log)

    # ------------------------------------------------------------ redraw

    def redraw(self) -> None:
        """Push a fresh snapshot into the panels if anything changed since the last one."""
        with self.model.lock:
            view = self.model.snapshot() if self.model.version != self._drawn_version else None
        if view is None:
            self.redraw_charts()  # a chart change held back by CHART_SECONDS may be due now
            return
        self.view = view
        self._drawn_version = view.version
        self.query_one(RunHeader).view = view.header
        self.query_one(AlertBanner).alerts = view.active_alerts
        self.query_one(FailurePanel).failure = view.failure
        self.redraw_charts()
        if (view.health_step, view.health) != self._drawn_health:
            # Only on a new probe: the panel's height follows its rows, so each update is a relayout.
            self._drawn_health = (view.health_step, view.health)
            health = self.query_one(HealthPanel)
            health.step = view.health_step
            health.checks = view.health
        self.query_one(GpuPanel).view = GpuView(view.gpu_devices, view.memory, view.device, view.device_name,
                                                view.nvml)
        self.query_one(EventList).show_entries(view.entries)
        if view.header.state != self._drawn_state:
            self._drawn_state = view.header.state
            self.refresh_bindings()
            if view.header.state == states.FAILED and self.trainer is None:
                self.show_trainer_log_of_failed_run()
            if self.exit_when_run_ends and self.trainer is None and view.header.state in states.ENDED:
                self.exit(self.outcome_code())

    def show_trainer_log_of_failed_run(self) -> None:
        """In `watch`: a run the dashboard started (and was detached from) has its trainer.log."""
        if self.run_dir.trainer_log.is_file():
            with self.model.lock:
                self.model.attach_log(*self.trainer_log())

    def redraw_charts(self) -> None:
        """Hand the latest history to the charts, once a CHART_SECONDS at most."""
        view = self.view
        now = time.monotonic()
        if view is None or view.charts.revision == self._drawn_charts or now - self._charts_drawn_at < CHART_SECONDS:
            return
        self._charts_drawn_at = now
        self._drawn_charts = view.charts.revision
        for chart in self.query(MetricChart):
            chart.data = view.charts
        self.query_one("#chart-scale").display = view.charts.fp16_seen

    # ------------------------------------------------------------- state

    @property
    def state(self) -> str:
        return self.model.shown_state

    @property
    def detached(self) -> bool:
        return self.model.detached

    def trainer_alive(self) -> bool:
        if self.trainer is not None:
            return self.model.exit_code is None and (self.trainer.process is None or self.trainer.exit_code is None)
        return self.state not in states.ENDED

    def outcome_code(self) -> int:
        """The exit code to return: the trainer's own when it ran here, else the run's outcome."""
        if self.model.exit_code is not None:
            return self.model.exit_code
        return 1 if self.state == states.FAILED else 0

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if action == "pause":
            return self.state != states.PAUSED and self._can_control()
        if action == "resume":
            return self.state == states.PAUSED and self._can_control()
        if action in CONTROL_ACTIONS:
            return True if self._can_control() else None
        return True

    def _can_control(self) -> bool:
        return self.trainer_alive() and self.state not in (states.STOPPING, states.DETACHED)

    # ----------------------------------------------------------- actions

    def send(self, cmd: str, note: str, pending_state: str | None = None, **args) -> None:
        send_command(self.run_dir.control, cmd, **args)
        with self.model.lock:
            self.model.note_action(note, pending_state, "waiting for the trainer" if pending_state else "")
        self.notify(note, title=f"sent {cmd}", timeout=4)
        self.redraw()

    def action_save(self) -> None:
        self.send("save", "save requested: a checkpoint at the next step boundary")

    def action_pause(self) -> None:
        self.send("pause", "pause requested")

    def action_resume(self) -> None:
        self.send("resume", "resume requested")

    def action_switch_precision(self, alert: dict | None = None) -> None:
        started = self.model.run_started
        if started is None:
            self.notify("the trainer has not reported its device yet", timeout=4)
            return
        caps = self.model.capabilities
        fix = (alert or {}).get("fix")
        suggested, because = self.suggest_precision(alert)
        self.push_screen(PrecisionDialog(current=self.model.precision, support=caps.get("support") or {},
                                         notes=caps.get("notes") or {}, suggested=suggested,
                                         suggested_because=because, advice=read_advice(self.run_dir.advice),
                                         restart_from=self.restart_point(fix), fix=fix),
                         self.restart_with)

    def suggest_precision(self, alert: dict | None) -> tuple[str | None, str]:
        """The precision to offer first: an alert's fix, then `loratui advise`, then the safer neighbour."""
        alerts = sorted(self.model.active_alerts.values(), key=lambda a: a.get("step") or 0, reverse=True)
        for candidate in ([alert] if alert else []) + alerts:
            precision = (candidate.get("fix") or {}).get("precision")
            if precision:
                return precision, f"fixes the {candidate.get('kind')}"
        advice = read_advice(self.run_dir.advice)
        if advice and advice.get("recommendation") in ("fp32", "bf16", "fp16"):
            return advice["recommendation"], "measured by loratui advise"
        support = self.model.capabilities.get("support") or {}
        current = self.model.precision
        if current == "fp16" and support.get("bf16") in ("native", "emulated"):
            return "bf16", "fp32's range, no loss scaling needed"
        if current in ("fp16", "bf16"):
            return "fp32", "full precision: slower, nothing lost to rounding"
        if support.get("bf16") == "native":
            return "bf16", "native here: faster, fp32's range"
        return None, ""

    def restart_point(self, fix: dict | None = None) -> str:
        if fix and isinstance(fix.get("from_step"), int):
            return f"step {fix['from_step']}"
        newest = list_checkpoints(self.run_dir.checkpoints)
        return f"the newest checkpoint (step {newest[0].step})" if newest else "the newest checkpoint"

    def action_lower_lr(self, alert: dict | None = None) -> None:
        fix = (alert or {}).get("fix")
        current = self.model.peak_lr
        if current is None:
            self.notify("the trainer has not reported its learning rate yet", timeout=4)
            return
        self.push_screen(LearningRateDialog(current=current, factor=self.model.lr_factor,
                                            restart_from=self.restart_point(fix), fix=fix), self.restart_with)

    def action_rollback(self, alert: dict | None = None) -> None:
        preselect = ((alert or {}).get("fix") or {}).get("from_step")
        self.push_screen(RollbackDialog(list_checkpoints(self.run_dir.checkpoints), current_step=self.model.step,
                                        preselect=preselect), self.restart_with)

    def restart_with(self, args: dict | None) -> None:
        if not args:
            return
        described = ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in args.items())
        self.send("restart", f"restart requested: {described}", states.RESTARTING, **args,
                  reason="dashboard: " + described)

    def action_alert_details(self) -> None:
        events = self.query_one(EventList)
        option = events.highlighted_option
        entry = events._entries.get(option.id) if option is not None else None
        alert = entry.alert if entry is not None and entry.alert else None
        if alert is None and self.model.active_alerts:
            alert = max(self.model.active_alerts.values(), key=lambda a: a.get("step") or 0)
        if alert is not None:
            self.show_alert(alert)

    def on_event_list_alert_chosen(self, message: EventList.AlertChosen) -> None:
        self.show_alert(message.alert)

    def show_alert(self, alert: dict) -> None:
        def apply_fix(key: str | None) -> None:
            if key == "p":
                self.action_switch_precision(alert)
            elif key == "l":
                self.action_lower_lr(alert)
            elif key == "r":
                self.action_rollback(alert)

        self.push_screen(AlertDetails(alert), apply_fix)

    def action_help(self) -> None:
        self.push_screen(HelpScreen([b for b in self.BINDINGS if isinstance(b, Binding)], str(self.run_dir.root)))

    def action_detach(self) -> None:
        self.detach()
        self.exit(EXIT_DETACHED if self.trainer_alive() else self.outcome_code())

    def detach(self) -> None:
        """Let go of the run: the dashboard exits, the training goes on (`loratui watch` re-attaches)."""
        with self.model.lock:
            self.model.detached = True
            self.model.note_action("detached: training goes on")
        self.redraw()  # the last frame says so

    def action_quit_dialog(self) -> None:
        if not self.trainer_alive():
            self.exit(self.outcome_code())
            return
        if self.state == states.STOPPING:
            self.notify("stopping: waiting for the trainer to save its checkpoint", timeout=4)
            return

        def chosen(choice: str | None) -> None:
            if choice == "detach":
                self.action_detach()
            elif choice == "stop":
                self.exit_when_run_ends = True
                self.send("stop", "stop requested: the trainer saves a checkpoint, then exits",
                          states.STOPPING, reason="stopped from the dashboard")

        self.push_screen(QuitDialog(str(self.run_dir.root)), chosen)

    def hang_up(self) -> None:
        """The terminal went away (SSH dropped): detach, never stop the training.

        Restoring a terminal that no longer exists can block, so if the orderly exit
        has not finished shortly, the process ends at once: the trainer is another
        process and the dashboard has nothing left to write.
        """
        self.hung_up = True
        self.detach()
        fallback = threading.Timer(HANGUP_EXIT_SECONDS, os._exit, args=(EXIT_HANGUP,))
        fallback.daemon = True
        fallback.start()
        self.exit(EXIT_DETACHED)

    def stop_for_signal(self, signum: int) -> None:
        """SIGINT or SIGTERM sent to the dashboard: what the same signal means to a headless run.

        Under `loratui run` it is passed on to the trainer, which saves a checkpoint and exits
        128 + N (130, 143); the dashboard shows the stop and exits with the trainer's code once
        it has ended. A second SIGINT is passed on too, and makes the trainer exit at once (its
        newest complete checkpoint stays). Under `loratui watch` the run is not the dashboard's
        to stop: it detaches and exits 128 + N.
        """
        if self.trainer is None:
            self.detach()
            self.exit(128 + signum)
            return
        if not self.trainer_alive():
            self.exit(self.outcome_code())
            return
        self.exit_when_run_ends = True
        self.trainer.pass_signal(signum)
        with self.model.lock:
            self.model.note_action(f"{signal.Signals(signum).name} received: passed on to the trainer, which "
                                   f"saves a checkpoint and stops", states.STOPPING, "saving a checkpoint")
        self.redraw()
