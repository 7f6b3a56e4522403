"""Everything the dashboard knows about a run, folded from its events; read through snapshots.

The tailer thread applies parsed blocks under the lock and bumps `version`;
the app's redraw timer takes a `RunView` snapshot (immutable, small) when the
version moved. Memory stays bounded whatever the run length: charts are
buckets (history.py), the event list keeps the newest entries only.
"""

from __future__ import annotations

import math
import signal
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace

from loratui.errors import EXIT_TRAINING_FAILED
from loratui.ui import format as fmt
from loratui.ui.event_parser import ParsedBlock
from loratui.ui.history import ChartData, RestartMark, RunHistory

MAX_ENTRIES = 500
FIX_KEYS = {"switch_precision": "p", "lower_lr": "l", "rollback": "r"}
FIX_NAMES = {"switch_precision": "switch precision", "lower_lr": "lower the learning rate",
             "rollback": "roll back"}

# States shown in the header. "starting": the trainer process is importing torch.
STARTING, WAITING, LOADING, RUNNING, PAUSED, RESTARTING, STOPPING, FINISHED, FAILED, DETACHED = (
    "starting", "waiting", "loading", "running", "paused", "restarting", "stopping", "finished", "failed",
    "detached")
ENDED = (FINISHED, FAILED)
TRAINER_STOP_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM)  # it saves a checkpoint, exits 128 + N


@dataclass(frozen=True)
class Entry:
    """One line of the alerts and events list."""

    seq: int
    time: float | None
    step: int | None
    kind: str  # the event type, or "ui" for the dashboard's own actions
    severity: str  # critical | warning | info | good
    text: str
    fix_key: str | None = None
    alert: dict | None = None  # the alert event, for its details
    closed: str | None = None  # an alert's row once it is no longer open: "resolved at step 52, 03:29:55"

    @property
    def open_alert(self) -> bool:
        return self.alert is not None and self.closed is None


@dataclass(frozen=True)
class TrainerEnding:
    """How the trainer process ended, in the dashboard's terms."""

    code: int  # the code the dashboard exits with
    failed: bool
    text: str  # "exited with code 0", "stopped by SIGTERM, exit 143", "killed by SIGKILL"

    @classmethod
    def from_returncode(cls, returncode: int, passed_signal: int | None = None) -> TrainerEnding:
        """Popen's return code (negative: killed by that signal) and the signal the dashboard passed on, if any.

        The trainer answers SIGINT/SIGTERM/SIGHUP with a checkpoint and 128 + N: a stop. Killed
        outright by a signal, it failed (exit 1), unless the signal is the one the dashboard passed
        on and it came before the trainer could catch it (while importing torch): a stop as well.
        """
        if returncode < 0:
            signum = -returncode
            if signum == passed_signal:
                return cls(128 + signum, False, f"stopped by {_signal_name(signum)}, exit {128 + signum}")
            return cls(EXIT_TRAINING_FAILED, True, f"killed by {_signal_name(signum)}")
        if returncode - 128 in TRAINER_STOP_SIGNALS:
            return cls(returncode, False, f"stopped by {_signal_name(returncode - 128)}, exit {returncode}")
        return cls(returncode, returncode != 0, f"exited with code {returncode}")


@dataclass(frozen=True)
class HeaderView:
    run_name: str
    state: str
    state_detail: str
    precision: str | None
    loss_scaling: bool
    step: int
    max_steps: int | None
    eta_s: float | None
    elapsed_s: float | None
    tokens_per_s: float | None
    lr: float | None
    attempt: int
    phase: tuple[str, int, int] | None
    reading: float | None  # share of a long history read so far, while catching up
    active_alerts: int
    images_per_s: float | None = None  # vision-language runs only: the newest step's pictures per second


@dataclass(frozen=True)
class RunView:
    version: int
    header: HeaderView
    charts: ChartData
    health: dict
    health_step: int | None
    gpu_devices: tuple
    memory: dict  # the newest step's mem_* figures (None without CUDA)
    device: str | None
    device_name: str | None
    nvml: str | None
    entries: tuple[Entry, ...]
    entries_revision: int
    active_alerts: tuple[dict, ...]
    failure: dict | None
    health_parts: dict = field(default_factory=dict)  # a vision-language run's per-part figures (health `parts`)


@dataclass
class RunModel:
    run_name: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    version: int = 0
    state: str = WAITING
    state_detail: str = ""
    run_started: dict | None = None
    precision: str | None = None
    loss_scaling: bool = False
    step: int = 0
    max_steps: int | None = None
    attempt: int = 0
    lr: float | None = None
    loss: float | None = None  # the newest step's, for the summary on the way out
    peak_lr: float | None = None
    lr_factor: float = 0.5
    tokens_per_s: float | None = None
    images_per_s: float | None = None
    memory: dict = field(default_factory=dict)
    phase: tuple[str, int, int] | None = None
    health: dict = field(default_factory=dict)
    health_step: int | None = None
    health_parts: dict = field(default_factory=dict)
    gpu_devices: tuple = ()
    host: dict = field(default_factory=dict)  # the newest `host` event's figures (CPU, RAM)
    active_alerts: dict = field(default_factory=dict)
    entries: deque = field(default_factory=lambda: deque(maxlen=MAX_ENTRIES))
    recent_steps: deque = field(default_factory=lambda: deque(maxlen=64))  # (time, step), this attempt
    rates: RateSamples = field(default_factory=lambda: RateSamples())  # tokens/s, for steady figures
    history: RunHistory = field(default_factory=RunHistory)
    first_time: float | None = None
    last_time: float | None = None
    failure: dict | None = None
    finish_reason: str | None = None
    exit_code: int | None = None
    detached: bool = False  # the dashboard let go of the run (it is exiting; the training goes on)
    bad_lines: int = 0
    reading: float | None = None
    resuming_since: float | None = None
    resume_note: str = ""  # `run --resume`: events older than this are the run being resumed
    entries_revision: int = 0  # bumped when a row changes in place (an alert closed)
    _seq: int = 0

    # ------------------------------------------------------------ apply

    def apply(self, block: ParsedBlock) -> None:
        """Fold one parsed block in, in file order (the caller holds the lock)."""
        self.apply_events(block.others)
        if block.steps is not None and len(block.steps):
            self.history.add_steps(block.steps.attempt, block.steps.step, block.steps.loss, block.steps.grad_norm,
                                   block.steps.scale, block.steps.skipped)
        self.apply_newest_steps(block)

    def apply_events(self, events: list[dict]) -> None:
        for event in events:
            self._apply_event(event)
        self.version += 1

    def apply_newest_steps(self, block: ParsedBlock) -> None:
        """The header's figures and the ETA's recent pace, from the newest steps of a block."""
        columns = block.steps
        if columns is not None and len(columns):
            tail = len(columns.tail_time)
            attempts, steps = columns.attempt[-tail:].tolist(), columns.step[-tail:].tolist()
            if attempts[-1] != self.attempt:
                self.recent_steps.clear()
            for when, attempt, step, rate in zip(columns.tail_time.tolist(), attempts, steps,
                                                 columns.tail_rate.tolist()):
                if attempt == attempts[-1]:
                    self.recent_steps.append((when, step))
                self.rates.add(rate)
            self._note_time(float(columns.tail_time[-1]))
        if block.last_step is not None:
            self._apply_last_step(block.last_step, resumes=block.steps_after_others)
        self.bad_lines += block.bad_lines
        self.version += 1

    def _apply_last_step(self, event: dict, *, resumes: bool) -> None:
        self.step = event.get("step", self.step)
        self.attempt = event.get("attempt", self.attempt)
        self.lr = _float(event.get("lr"))
        self.loss = _float(event.get("loss"))
        self.precision = event.get("precision") or self.precision
        self.loss_scaling = event.get("scale") is not None
        self.tokens_per_s = _float(event.get("tokens_per_s"))
        self.images_per_s = _float(event.get("images_per_s"))
        self.memory = {key: event.get(key) for key in ("mem_allocated_mib", "mem_reserved_mib", "mem_peak_mib")}
        # Steps after a pause, restart or the loading phases mean training is under way again.
        if resumes and self.state not in ENDED and self.state not in (STOPPING,) and self.resuming_since is None:
            self.state, self.state_detail = RUNNING, ""
            self.phase = None

    def _apply_event(self, event: dict) -> None:
        kind = event.get("type")
        self._note_time(event.get("time"))
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(event)

    def _on_phase(self, event: dict) -> None:
        if self._before_resume(event):
            return
        if self.state in (STARTING, WAITING, LOADING):
            self.state = LOADING
            self.phase = (str(event.get("name", "")), int(event.get("done", 0)), int(event.get("total", 0) or 0))
            name = event.get("name", "").replace("_", " ")
            self.state_detail = f"{self.resume_note} · {name}" if self.resuming_since is not None else name

    def _on_data(self, event: dict) -> None:
        self._add(event, "info", f"data: {event.get('summary', '')}")

    def _on_run_started(self, event: dict) -> None:
        history = self._before_resume(event)  # the run being resumed: its setup, not yet this run's state
        previous, resuming = self.run_started, self.resuming_since is not None and not history
        if resuming:
            self.resuming_since = None
        waiting = (self.state, self.state_detail)
        self.run_started = event
        config = event.get("config") or {}
        self.run_name = (config.get("run") or {}).get("name") or self.run_name
        train = config.get("train") or {}
        self.peak_lr = _float(train.get("learning_rate"))
        self.lr_factor = _float(train.get("lr_factor")) or self.lr_factor
        self.precision = event.get("precision")
        self.loss_scaling = bool(event.get("loss_scaling"))
        self.max_steps = event.get("max_steps") or train.get("max_steps")
        self.step = event.get("step", 0)
        self.attempt = event.get("attempt", 0)
        self.recent_steps.clear()
        self.health, self.health_step, self.health_parts = {}, None, {}  # a resumed run's first probe is its own
        self.state, self.state_detail, self.phase = RUNNING, "", None
        self.failure = self.finish_reason = None
        if self.max_steps:
            self.history.expect_steps(int(self.max_steps))
        self.history.start_attempt(self.attempt, self.step, self.precision)
        resumed = event.get("resumed_from")
        where = f"resumed at step {self.step}" if resumed else "started"
        self._add(event, "info", f"run {where}: {self.precision} on {event.get('device')} "
                                 f"({event.get('device_name')}), {event.get('world_size', 1)} process(es), "
                                 f"{event.get('trainable_params', 0):,} trainable parameters")
        if history:
            self.state, self.state_detail = waiting
            return
        if resumed and previous is not None:
            changed = config_changes((previous or {}).get("config") or {}, config)
            if changed or resuming:
                self._add(event, "warning" if changed else "info",
                          "changed since the resumed run: " + "; ".join(changed) if changed
                          else "resumed with the same config")

    def _on_step(self, event: dict) -> None:
        """Only the line-by-line path of tests and tools feeds single step events here."""
        self._apply_last_step(event, resumes=True)

    def _on_health(self, event: dict) -> None:
        self.health = dict(event.get("checks") or {})
        self.health_step = event.get("step")
        self.health_parts = dict(event.get("parts") or {})

    def _on_host(self, event: dict) -> None:
        # A new dict each time: the screen reads it without the lock.
        self.host = {key: value for key, value in event.items() if key not in ("type", "time", "attempt")}

    def _on_gpu(self, event: dict) -> None:
        self.gpu_devices = tuple(event.get("devices") or ())

    def _on_alert(self, event: dict) -> None:
        kind = event.get("kind", "alert")
        if kind in self.active_alerts:  # raised again: the older row is superseded by this one
            self._close_alert_rows(kind, f"raised again at step {event.get('step')}")
        self.active_alerts[kind] = event
        suggestion = event.get("suggestion") or "none"
        key = FIX_KEYS.get(suggestion)
        # The fix and its key before the message: a narrow list cuts the end of a row, not the key.
        fix = f" [{key}: {FIX_NAMES[suggestion]}]" if key else ""
        severity = "critical" if event.get("severity") == "critical" else "warning"
        self._add(event, severity, f"{kind}{fix}: {event.get('message', '')}", fix_key=key, alert=event)

    def _on_alert_resolved(self, event: dict) -> None:
        kind = event.get("kind")
        if self.active_alerts.pop(kind, None) is not None:
            self._close_alert_rows(kind, f"resolved at step {event.get('step')}, {fmt.clock(event.get('time'))}")
            self._add(event, "good", f"{kind} resolved")

    def _close_alert_rows(self, kind: str | None, how: str) -> None:
        """Mark the open rows of an alert kind (all of them when kind is None) as no longer open."""
        for index, entry in enumerate(self.entries):
            if entry.open_alert and (kind is None or entry.alert.get("kind") == kind):
                self.entries[index] = replace(entry, closed=how)
        self.entries_revision += 1

    def _on_checkpoint(self, event: dict) -> None:
        loss = event.get("loss")
        self._add(event, "info", f"checkpoint at step {event.get('step')} ({event.get('reason')})"
                                 + (f", loss {fmt.number(loss)}" if loss is not None else ""))

    def _on_restart(self, event: dict) -> None:
        from_step = int(event.get("from_step", 0))
        at_step = self.step
        self.attempt = event.get("attempt", self.attempt + 1)
        self.precision = event.get("precision") or self.precision
        # Newer trainers say whether the attempt has a scaler (a restart may turn it on); else the config does.
        self.loss_scaling = bool(event["loss_scaling"]) if "loss_scaling" in event else (
            self.precision == "fp16" and self.loss_scaling_configured)
        self.peak_lr = _float(event.get("learning_rate")) or self.peak_lr
        self.step = event.get("step", from_step)
        self.recent_steps.clear()
        self.active_alerts.clear()  # the alerts were about the abandoned branch
        self._close_alert_rows(None, f"left behind by the restart from step {from_step}")
        self.health, self.health_step, self.health_parts = {}, None, {}  # the abandoned branch's figures: the next probe is this attempt's
        self.state, self.state_detail = RUNNING, ""
        self.history.start_attempt(self.attempt, from_step, self.precision)
        self.history.mark_restart(RestartMark(at_step, from_step, self.attempt, self.precision, self.peak_lr))
        self._add(event, "info", f"restart from step {from_step}: {self.precision}, peak lr "
                                 f"{fmt.number(self.peak_lr)} ({event.get('reason') or 'command'})")

    def _on_control(self, event: dict) -> None:
        cmd, accepted = event.get("cmd"), event.get("accepted")
        message = event.get("message", "")
        if accepted:
            if cmd == "pause":
                self.state, self.state_detail = PAUSED, ""
            elif cmd == "resume" and self.state == PAUSED:
                self.state, self.state_detail = RUNNING, ""
            elif cmd == "restart":
                self.state, self.state_detail = RESTARTING, message
            elif cmd == "stop":
                self.state, self.state_detail = STOPPING, "saving a checkpoint"
        elif self.state in (RESTARTING, STOPPING):
            self.state, self.state_detail = RUNNING, ""
        verdict = "accepted" if accepted else "refused"
        self._add(event, "info" if accepted else "warning", f"{cmd or 'command'} {verdict}: {message}")

    def _on_notice(self, event: dict) -> None:
        self._add(event, "info", str(event.get("message", "")))

    def _on_run_finished(self, event: dict) -> None:
        if self._before_resume(event):
            self._add(event, "info", f"the resumed run had finished at step {event.get('step')}")
            return
        self.state, self.finish_reason = FINISHED, event.get("reason") or "completed"
        self.state_detail = self.finish_reason
        self.step = event.get("step", self.step)
        memory = ""
        if event.get("mem_peak_measured_mib") is not None:  # the planner's estimate beside the real peak
            memory = (f"; memory peak {fmt.mib(event['mem_peak_measured_mib'])} "
                      f"({event.get('mem_peak_measured_as')}), estimated {fmt.mib(event.get('mem_estimate_mib'))}")
        self._add(event, "good", f"run finished at step {self.step}: {self.finish_reason}{memory}")

    def _on_run_failed(self, event: dict) -> None:
        if self._before_resume(event):
            self._add(event, "info", f"the resumed run had failed at step {event.get('step')}")
            return
        self.state, self.state_detail = FAILED, first_line(event.get("error"))
        self.failure = {"error": event.get("error") or "unknown error", "traceback": event.get("traceback"),
                        "step": event.get("step")}
        self._add(event, "critical", f"run failed at step {event.get('step')}: {first_line(event.get('error'))}")

    # ---------------------------------------------------- the dashboard's side

    def expect_resume(self, from_step: int | None, since: float) -> None:
        """`loratui run --resume`: say so at once; the old log's ending is history, not this run's state."""
        self.resuming_since = since
        self.state = STARTING
        self.resume_note = f"resuming from step {from_step}" if from_step is not None else "resuming"
        self.state_detail = self.resume_note
        self.version += 1

    def _before_resume(self, event: dict) -> bool:
        when = event.get("time")
        return self.resuming_since is not None and isinstance(when, (int, float)) and when < self.resuming_since

    def note_action(self, text: str, state: str | None = None, detail: str = "") -> None:
        """Something the dashboard did (a command sent): shown in the list, maybe a pending state."""
        if state is not None and self.state not in ENDED:
            self.state, self.state_detail = state, detail
        self._add({}, "info", text, kind="ui")
        self.version += 1

    def trainer_exited(self, ending: TrainerEnding, log_tail: str, log_path: str) -> None:
        """How the supervised trainer ended: the state it leaves, and the code the dashboard exits with."""
        self.exit_code = ending.code
        if not ending.failed:
            if self.state not in ENDED or ending.code != 0:  # run_finished already said why it ended
                self.state, self.state_detail = FINISHED, (self.finish_reason or ending.text) if ending.code == 0 \
                    else ending.text
        else:
            reported = self.failure is not None  # by a run_failed event, or by the dashboard (could not start)
            if not reported:
                hint = " (SIGKILL: often the kernel's out-of-memory killer; see dmesg)" if "SIGKILL" in ending.text \
                    else ""
                self.failure = {"error": f"the trainer {ending.text} before it reported an error{hint}",
                                "traceback": None}
            if self.state != FAILED:
                self.state = FAILED
                self.state_detail = first_line(self.failure["error"]) if reported else ending.text
            self.attach_log(log_tail, log_path)
            self.failure.update(ending=ending.text, exit_code=ending.code)
        self._add({}, "critical" if ending.failed else "info", f"trainer process {ending.text}", kind="ui")
        self.version += 1

    def attach_log(self, log_tail: str, log_path: str) -> None:
        """The failure's trainer.log: its last lines and where the whole log is."""
        if self.failure is not None:
            self.failure.update(log_tail=log_tail, log_path=log_path)
            self.version += 1

    def attach_resume(self, command: str) -> None:
        """The command that resumes a failed run from its newest checkpoint, for the failure panel."""
        if self.failure is not None:
            self.failure["resume"] = command
            self.version += 1

    def reset(self, *, keep_history: bool = False) -> None:
        """Forget what was read (the log was replaced, or is read again in order); the lock stays.

        With keep_history the step buckets stay (they do not depend on reading order) and
        only the restart marks go, as the restart events that made them are read again.
        """
        keep = {"lock": self.lock, "version": self.version + 1, "exit_code": self.exit_code,
                "detached": self.detached, "resuming_since": self.resuming_since,
                "resume_note": self.resume_note, "_seq": self._seq, "entries_revision": self.entries_revision + 1}
        if keep_history:
            keep["history"] = self.history
            self.history.restarts.clear()
        self.__dict__.update({**RunModel(self.run_name).__dict__, **keep})

    # -------------------------------------------------------------- reads

    @property
    def shown_state(self) -> str:
        """The state to show: once detached it says so, whatever is read meanwhile, unless the run ended."""
        return DETACHED if self.detached and self.state not in ENDED else self.state

    @property
    def loss_scaling_configured(self) -> bool:
        config = (self.run_started or {}).get("config") or {}
        return bool((config.get("amp") or {}).get("loss_scaling", True))

    @property
    def capabilities(self) -> dict:
        return (self.run_started or {}).get("capabilities") or {}

    def eta_seconds(self) -> float | None:
        """Steps left times the median pace of the recent steps: one slow step (a probe, a checkpoint) moves it little."""
        if not self.max_steps or len(self.recent_steps) < 2 or self.state in ENDED:
            return None
        paces = [(t1 - t0) / (s1 - s0) for (t0, s0), (t1, s1) in zip(self.recent_steps, list(self.recent_steps)[1:])
                 if s1 > s0 and t1 >= t0]
        return (self.max_steps - self.step) * statistics.median(paces) if paces else None

    def shown_rate(self) -> float | None:
        """Tokens/s for the header: the median of the last steps while it runs, the run's median once it ended."""
        rate = self.rates.run_median() if self.state in ENDED else self.rates.recent_median()
        return rate if rate is not None else self.tokens_per_s

    def snapshot(self) -> RunView:
        started = self.run_started or {}
        elapsed = (self.last_time - self.first_time) if self.first_time and self.last_time else None
        header = HeaderView(self.run_name, self.shown_state, self.state_detail, self.precision, self.loss_scaling,
                            self.step, self.max_steps, self.eta_seconds(), elapsed, self.shown_rate(), self.lr,
                            self.attempt, self.phase, self.reading, len(self.active_alerts), self.images_per_s)
        caps = self.capabilities
        return RunView(self.version, header, self.history.chart_data(), dict(self.health), self.health_step,
                       self.gpu_devices, dict(self.memory), started.get("device"),
                       started.get("device_name"), caps.get("nvml"), tuple(reversed(self.entries)),
                       self.entries_revision, tuple(self.active_alerts.values()), dict(self.failure) if self.failure else None,
                       dict(self.health_parts))

    # ------------------------------------------------------------ helpers

    def _add(self, event: dict, severity: str, text: str, *, kind: str | None = None, fix_key: str | None = None,
             alert: dict | None = None) -> None:
        self._seq += 1
        self.entries_revision += 1
        when = event.get("time") if kind != "ui" else time.time()
        self.entries.append(Entry(self._seq, when, event.get("step"), kind or event.get("type", ""),
                                  severity, text, fix_key, alert))

    def _note_time(self, when) -> None:
        if isinstance(when, (int, float)):
            if self.first_time is None or when < self.first_time:
                self.first_time = when
            if self.last_time is None or when > self.last_time:
                self.last_time = when


class RateSamples:
    """Tokens/s readings: the recent ones for a steady live figure, a thinned sample of all for the run's median.

    Memory stays bounded at any run length: when the sample is full, every other
    reading goes and only every second one is taken from then on.
    """

    RECENT = 16
    CAPACITY = 4096

    def __init__(self):
        self.recent: deque = deque(maxlen=self.RECENT)
        self.sample: list[float] = []
        self._stride, self._seen = 1, 0

    def add(self, rate: float) -> None:
        if not (rate > 0 and math.isfinite(rate)):  # nan (not reported), 0 (a skipped or probed step)
            return
        self.recent.append(rate)
        self._seen += 1
        if self._seen % self._stride == 0:
            self.sample.append(rate)
            if len(self.sample) >= self.CAPACITY:
                self.sample = self.sample[::2]
                self._stride *= 2

    def recent_median(self) -> float | None:
        return statistics.median(self.recent) if self.recent else None

    def run_median(self) -> float | None:
        return statistics.median(self.sample) if self.sample else None


def config_changes(before: dict, after: dict, prefix: str = "") -> list[str]:
    """Keys whose values differ between two configs, as "train.max_steps 60 → 100"."""
    changes = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changes += config_changes(old, new, f"{prefix}{key}.")
        elif old != new:
            changes.append(f"{prefix}{key} {old!r} → {new!r}".replace("'", ""))
    return changes


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _float(value) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def first_line(text) -> str:
    """The first line of an error text ("" for none)."""
    lines = str(text or "").strip().splitlines()
    return lines[0] if lines else ""
