"""The dashboard's main screen: the panels' layout, the keys and what each key does.

The keys are the `BINDINGS` below, written once: the footer shows them, `?`
lists them with their tooltips (HelpScreen reads this list), and a key added
here is documented by its tooltip. Control keys ask `actions.why_not` first:
a key that cannot act now is hidden or dimmed in the footer and, pressed,
says why.

The app (DashboardApp) owns the run: the model, the workers, the trainer and
the way out; this screen draws snapshots of the model and turns keys into
commands through the app.
"""

from __future__ import annotations

import time

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, Vertical
from textual.geometry import Size
from textual.screen import Screen
from textual.widgets import Footer

from loratui.errors import UserInputError
from loratui.ui import actions
from loratui.ui import format as fmt
from loratui.ui import run_model as states
from loratui.ui.chart_options import ChartOptions, cursor_step_size, steps_shown, window_start
from loratui.ui.run_files import list_checkpoints, read_advice
from loratui.ui.run_model import RunView
from loratui.ui.screens.alert_details import AlertDetails
from loratui.ui.screens.help_screen import HelpScreen
from loratui.ui.screens.learning_rate_dialog import LearningRateDialog
from loratui.ui.screens.log_view import EVENTS, LogView
from loratui.ui.screens.precision_dialog import PrecisionDialog
from loratui.ui.screens.quit_dialog import QuitDialog
from loratui.ui.screens.rollback_dialog import RollbackDialog
from loratui.ui.screens.text_details import TextDetails
from loratui.ui.themes import Look, apply_look, look_from_environment
from loratui.ui.widgets.alert_banner import AlertBanner
from loratui.ui.widgets.event_list import EventList
from loratui.ui.widgets.failure_panel import FailurePanel
from loratui.ui.widgets.gpu_panel import GpuPanel, GpuView
from loratui.ui.widgets.host_panel import HostPanel
from loratui.ui.widgets.health_panel import HealthPanel, health_text
from loratui.ui.widgets.metric_chart import AXIS_ALLOWANCE, MetricChart
from loratui.ui.widgets.run_header import RunHeader

# The panels a user reads rather than glances at advance less often than the header and the banner
# (every redraw): the charts every 2 s at most, nvitop's and btop's default refresh; the health
# panel's figures and the routine rows of alerts & events (a checkpoint saved) every 4 s at most.
# Each change of those panels redraws many lines (a new event row moves every row below it), and
# on a small machine that CPU comes out of the trainer's; probes and checkpoints come every 50
# steps by default, a minute or more apart on most runs, every second or two only on a toy model
# on a CPU. What a user waits on goes at once: a new alert or warning, an alert resolved, their own
# action, a health status that changed, the run's state.
SLOW_SECONDS = 2.0
ROWS_SECONDS = 4.0
URGENT_SEVERITIES = ("critical", "warning")
COMPACT_WIDTH, COMPACT_HEIGHT = 120, 36
WIDE_WIDTH = 150  # from here on text gets half the width: health reasons and event rows read whole


class DashboardScreen(Screen):
    BINDINGS = [
        Binding("p", "switch_precision", "Precision", id="switch_precision",
                tooltip="switch precision (fp32, bf16, fp16): restart from a checkpoint"),
        Binding("l", "lower_lr", "Lower LR", id="lower_lr",
                tooltip="lower the learning rate: restart from a checkpoint with the new rate"),
        Binding("r", "rollback", "Roll back", id="rollback", tooltip="roll back to a chosen checkpoint"),
        Binding("a", "loss_scaling", "Loss scaling on", id="loss_scaling",
                tooltip="fp16 with loss scaling off: turn it on (amp.loss_scaling = true), restarting from a "
                        "checkpoint (the fix for gradients that underflow fp16)"),
        Binding("s", "save", "Save", id="save", tooltip="save a checkpoint now"),
        Binding("space", "pause", "Pause", id="pause", tooltip="pause training (at the next step boundary)"),
        Binding("space", "resume", "Resume", id="resume", tooltip="resume training"),
        Binding("enter", "alert_details", "Details", id="alert_details", show=False,
                tooltip="↑ ↓ pick a row of alerts & events; enter shows it in full (an alert's details: "
                        "evidence, meaning, fix); with none picked, the newest open alert's details"),
        Binding("h", "health_details", "Health", id="health_details",
                tooltip="every health check in full, with its whole reason"),
        # Looking at the charts and logs (not in the footer: `?` lists them, and the chart titles say what is on).
        Binding("m", "smoothing", "Smooth", id="smoothing", show=False,
                tooltip="smoothing of loss and grad norm: off, light, heavy (TensorBoard's EMA; raw points stay)"),
        Binding("z", "zoom", "Zoom", id="zoom", show=False,
                tooltip="the steps shown: the whole run, then the last 1000, 200, 50 steps"),
        Binding("c", "cursor", "Cursor", id="cursor", show=False,
                tooltip="a cursor that reads (step, value) off each chart; left/right move it (shift: 10x)"),
        Binding("left", "cursor_move(-1)", "Cursor left", id="cursor_left", show=False),
        Binding("right", "cursor_move(1)", "Cursor right", id="cursor_right", show=False),
        Binding("shift+left", "cursor_move(-10)", "Cursor left 10x", id="cursor_left_far", show=False),
        Binding("shift+right", "cursor_move(10)", "Cursor right 10x", id="cursor_right_far", show=False),
        Binding("g", "logs", "Logs", id="logs", show=False,
                tooltip="the logs: trainer.log and every event, scrollable (tab switches, / searches)"),
        Binding("slash", "search_logs", "Search", key_display="/", id="search_logs", show=False,
                tooltip="search the events (the log view, its search open)"),
        Binding("d", "detach", "Detach", id="detach", tooltip="detach: quit the dashboard, training goes on"),
        Binding("q", "quit_dialog", "Quit", id="quit",
                tooltip="quit: stop the training (with a checkpoint), detach, or cancel"),
        Binding("ctrl+q", "quit_dialog", "Quit", id="quit_ctrl", show=False, priority=True),
        # Ctrl+C is what a terminal user presses to leave: the same choice as q, never a silent no-op.
        Binding("ctrl+c", "quit_dialog", "Quit", id="quit_ctrl_c", show=False, priority=True),
        Binding("question_mark", "help", "Help", key_display="?", id="help", tooltip="these keys"),
    ]

    def __init__(self) -> None:
        super().__init__(id="dashboard")
        self._drawn_state: str | None = None
        self._drawn_health: tuple | None = None
        self._drawn_charts = -1  # the chart revision the charts show
        self._slow_drawn_at = 0.0  # when the charts last took a snapshot
        self._rows_drawn_at = 0.0  # when the health panel and the event list last did
        self._drawn_seq = -1  # the newest event row the list shows
        self._drawn_alerts: tuple | None = None
        self._drawn_statuses: dict | None = None
        self.chart_options = ChartOptions()  # smoothing, window, cursor: the same for every chart

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
                    yield HostPanel()
                yield EventList()
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#chart-scale").display = False
        self.apply_look()
        self.query_one(EventList).focus()
        self.fit(self.app.size)
        self.app.redraw()  # the first frame already says what is happening (starting, waiting)

    def fit(self, size: Size) -> None:
        """Stack the panels on a small terminal (the app calls this on every resize, under dialogs too)."""
        compact = size.width < COMPACT_WIDTH or size.height < COMPACT_HEIGHT
        self.set_class(compact, "compact")
        self.set_class(not compact and size.width >= WIDE_WIDTH, "wide")
        for footer in self.query(Footer):  # none yet when the first resize comes before the first compose
            footer.compact = compact

    # ------------------------------------------------------------ redraw

    def show(self, view: RunView) -> bool:
        """Put a fresh snapshot into the panels; True when the run's state changed with it."""
        self.query_one(RunHeader).view = view.header
        self.query_one(AlertBanner).alerts = view.active_alerts
        self.query_one(FailurePanel).failure = view.failure
        self.query_one(GpuPanel).view = GpuView(view.gpu_devices, view.memory, view.device, view.device_name,
                                                view.nvml)
        self.query_one(HostPanel).host = self.app.model.host  # replaced whole per event: no lock needed
        state_changed = view.header.state != self._drawn_state
        self.show_slow(view, now=state_changed)
        if not state_changed:
            return False
        self._drawn_state = view.header.state
        self.refresh_bindings()
        return True

    def show_slow(self, view: RunView | None, *, now: bool = False) -> None:
        """The charts once a SLOW_SECONDS at most, health and the event list once a ROWS_SECONDS (`now`, or news
        a user waits on: all at once)."""
        if view is None:
            return
        moment = time.monotonic()
        now = now or self._urgent(view)
        if now or moment - self._slow_drawn_at >= SLOW_SECONDS:
            self._slow_drawn_at = moment
            self._show_charts(view)
        if now or moment - self._rows_drawn_at >= ROWS_SECONDS:
            self._rows_drawn_at = moment
            self._show_rows(view)

    def _show_rows(self, view: RunView) -> None:
        """The health panel (on a new probe) and the alerts & events list."""
        if (view.health_step, view.health) != self._drawn_health:
            # Only on a new probe: the panel re-renders every row it shows on each update.
            self._drawn_health = (view.health_step, view.health)
            self._drawn_statuses = _statuses(view.health)
            health = self.query_one(HealthPanel)
            health.step = view.health_step
            health.parts = view.health_parts
            health.checks = view.health
        self.query_one(EventList).show_entries(view.entries, view.entries_revision)
        self._drawn_seq = view.entries[0].seq if view.entries else -1
        self._drawn_alerts = view.active_alerts

    def _urgent(self, view: RunView) -> bool:
        """News that must not wait for the next slow slot: a row the user waits on, an alert that opened or
        closed, a health check whose status changed."""
        for entry in view.entries:  # newest first: only the rows the list does not show yet
            if entry.seq <= self._drawn_seq:
                break
            if entry.severity in URGENT_SEVERITIES or entry.kind == "ui":
                return True
        return view.active_alerts != self._drawn_alerts or (
            view.health_step != self._drawn_health_step() and _statuses(view.health) != self._drawn_statuses)

    def _drawn_health_step(self) -> int | None:
        return self._drawn_health[0] if self._drawn_health else None

    def _show_charts(self, view: RunView) -> None:
        """Hand the latest history to the charts (when it changed)."""
        if view.charts.revision == self._drawn_charts:
            return
        self._drawn_charts = view.charts.revision
        for chart in self.query(MetricChart):
            chart.data = view.charts
        # Only with a loss scaler: fp16 with loss scaling off has no scale to chart (not "all nan/inf").
        self.query_one("#chart-scale").display = view.charts.fp16_seen and any(
            np.isfinite(series.scale_max).any() for series in view.charts.series)

    # ------------------------------------------------------- key rules

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        """Control keys: hidden once the run has ended, dimmed while they must wait (a restart, a stop)."""
        if action not in actions.CONTROL_ACTIONS:
            return True
        if self.why_not(action) is None:
            return True
        if action in ("pause", "resume", "loss_scaling") or not self.app.trainer_alive():
            return False  # the toggle shows its other half; an ended run (or a run with a scaler) has no use for it
        return None

    def why_not(self, action: str) -> str | None:
        model = self.app.model
        return actions.why_not(action, self.app.state, self.app.trainer_alive(), precision=model.precision,
                               loss_scaling=model.loss_scaling)

    def on_key(self, event) -> None:
        """A control key that cannot act now says why, instead of doing nothing."""
        bound = [b.action for b in self.BINDINGS if isinstance(b, Binding) and b.key == event.key
                 and b.action in actions.CONTROL_ACTIONS]
        reasons = [self.why_not(action) for action in bound]
        if bound and all(reasons):
            self.notify(reasons[-1], title=f"{event.key}: not now", timeout=4)

    # ----------------------------------------------------------- actions

    def action_save(self) -> None:
        self.app.send("save", "save requested: a checkpoint at the next step boundary")

    def action_pause(self) -> None:
        self.app.send("pause", "pause requested")

    def action_resume(self) -> None:
        self.app.send("resume", "resume requested")

    def action_switch_precision(self, alert: dict | None = None) -> None:
        model = self.app.model
        if model.run_started is None:
            self.notify("the trainer has not reported its device yet", timeout=4)
            return
        caps = model.capabilities
        fix = (alert or {}).get("fix")
        advice = read_advice(self.app.run_dir.advice)
        suggested, because = actions.suggest_precision(alert, list(model.active_alerts.values()), advice,
                                                       caps.get("support") or {}, model.precision)
        self.app.push_screen(PrecisionDialog(current=model.precision, support=caps.get("support") or {},
                                             notes=caps.get("notes") or {}, suggested=suggested,
                                             suggested_because=because, advice=advice,
                                             restart_from=self.restart_point(fix), fix=fix),
                             self.restart_with)

    def action_lower_lr(self, alert: dict | None = None) -> None:
        current = self.app.model.peak_lr
        if current is None:
            self.notify("the trainer has not reported its learning rate yet", timeout=4)
            return
        fix = (alert or {}).get("fix")
        self.app.push_screen(LearningRateDialog(current=current, factor=self.app.model.lr_factor,
                                                restart_from=self.restart_point(fix), fix=fix), self.restart_with)

    def action_rollback(self, alert: dict | None = None) -> None:
        preselect = ((alert or {}).get("fix") or {}).get("from_step")
        self.app.push_screen(RollbackDialog(list_checkpoints(self.app.run_dir.checkpoints),
                                            current_step=self.app.model.step, preselect=preselect,
                                            current_precision=self.app.model.precision),
                             self.restart_with)

    def action_loss_scaling(self, alert: dict | None = None) -> None:
        """Turn fp16 loss scaling on: one key, a restart from the alert's step or the newest checkpoint."""
        args = {"loss_scaling": True}
        fix = (alert or {}).get("fix") or {}
        if isinstance(fix.get("from_step"), int):
            args["from_step"] = fix["from_step"]
        self.restart_with(args)

    def restart_point(self, fix: dict | None) -> str:
        return actions.restart_point(fix, list_checkpoints(self.app.run_dir.checkpoints))

    def restart_with(self, args: dict | None) -> None:
        if not args:
            return
        refused = self.why_not("switch_precision")  # the run may have moved on while the dialog was open
        if refused:
            self.notify(refused, title="restart not sent", severity="warning", timeout=6)
            return
        described = actions.describe_restart(args)
        self.app.send("restart", f"restart requested: {described}", states.RESTARTING, **args,
                      reason="dashboard: " + described)

    def action_alert_details(self) -> None:
        """Enter with the list unfocused: its highlighted row, else the newest open alert."""
        events = self.query_one(EventList)
        entry = events.highlighted_entry() or events.newest_open_alert()
        if entry is None:
            return
        if entry.alert is not None:
            self.show_alert(entry.alert)
        else:
            self.show_entry(entry)

    def on_event_list_alert_chosen(self, message: EventList.AlertChosen) -> None:
        self.show_alert(message.alert)

    def on_event_list_entry_chosen(self, message: EventList.EntryChosen) -> None:
        self.show_entry(message.entry)

    def show_entry(self, entry) -> None:
        title = Text.assemble((f"step {'-' if entry.step is None else entry.step}", "bold"),
                              f" · {fmt.clock(entry.time)} · {entry.kind}")
        self.app.push_screen(TextDetails(title, Text(entry.text)))

    def action_health_details(self) -> None:
        view = self.app.view
        body = health_text(view.health if view else {}, view.health_parts if view else None)
        step = view.health_step if view else None
        self.app.push_screen(TextDetails(Text(f"Health checks · step {step}" if step is not None
                                              else "Health checks", style="bold"), body))

    def show_alert(self, alert: dict) -> None:
        fixes = {"p": self.action_switch_precision, "l": self.action_lower_lr, "r": self.action_rollback,
                 "a": self.action_loss_scaling}

        def apply_fix(key: str | None) -> None:
            if key in fixes:
                fixes[key](alert)

        scaling_fix = self.why_not("loss_scaling") is None and alert.get("kind") in ("underflow", "overflow")
        self.app.push_screen(AlertDetails(alert, loss_scaling_fix=scaling_fix), apply_fix)

    # ------------------------------------------------ charts and logs

    def apply_look(self) -> None:
        """The theme and ASCII mode chosen by flags or the environment (themes.py)."""
        try:
            look = look_from_environment()
        except UserInputError as exc:  # `watch` refuses these up front; under `run` the list says so
            with self.app.model.lock:
                self.app.model.note_action(f"{exc.render()} (the default look is used)")
            look = Look()
        apply_look(self.app, look)
        self.set_chart_options(ChartOptions(ascii=look.ascii))

    def set_chart_options(self, options: ChartOptions) -> None:
        self.chart_options = options
        for chart in self.query(MetricChart):
            chart.options = options

    def shown_steps(self) -> tuple[int, int] | None:
        return steps_shown(self.app.view.charts if self.app.view else None)

    def action_smoothing(self) -> None:
        self.set_chart_options(self.chart_options.next_smoothing())

    def action_zoom(self) -> None:
        shown = self.shown_steps()
        if shown is None:
            self.notify("no steps to zoom into yet", timeout=3)
            return
        self.set_chart_options(self.chart_options.next_window(shown[1] - shown[0] + 1))

    def action_cursor(self) -> None:
        shown = self.shown_steps()
        if shown is None:
            self.notify("no steps to read yet", timeout=3)
            return
        self.set_chart_options(self.chart_options.toggle_cursor(shown[1]))

    def action_cursor_move(self, columns: int) -> None:
        """Move by chart columns (one column: the steps it shows); the first press puts the cursor on."""
        shown = self.shown_steps()
        if shown is None:
            return
        first, latest = shown
        if self.chart_options.cursor is None:
            self.set_chart_options(self.chart_options.toggle_cursor(latest))
            return
        visible = latest - window_start(latest, self.chart_options.window, first) + 1
        plot_columns = self.query_one("#chart-loss", MetricChart).size.width - AXIS_ALLOWANCE
        self.set_chart_options(self.chart_options.move_cursor(columns * cursor_step_size(visible, plot_columns),
                                                              first, latest))

    def action_logs(self) -> None:
        self.app.push_screen(LogView(self.app.run_dir.root))

    def action_search_logs(self) -> None:
        self.app.push_screen(LogView(self.app.run_dir.root, show=EVENTS, search=True))

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen([b for b in self.BINDINGS if isinstance(b, Binding)],
                                        str(self.app.run_dir.root)))

    def action_detach(self) -> None:
        self.app.detach_and_exit()

    def action_quit_dialog(self) -> None:
        app = self.app
        if not app.trainer_alive():
            app.exit(app.outcome_code())
            return
        if app.state == states.STOPPING:
            self.notify("stopping: waiting for the trainer to save its checkpoint", timeout=4)
            return

        def chosen(choice: str | None) -> None:
            if choice == "detach":
                app.detach_and_exit()
            elif choice == "stop":
                app.stop_run()

        app.push_screen(QuitDialog(str(app.run_dir.root)), chosen)


def _statuses(checks: dict) -> dict:
    """Each health check's status: a change of one is news; a figure's change can wait for the next slot."""
    return {name: check.get("status") if isinstance(check, dict) else check for name, check in checks.items()}
