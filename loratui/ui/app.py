"""The loratui dashboard app: the coordinator of one run directory's screen, workers and way out.

The app is a client of a run directory. A worker thread tails events.jsonl
into a RunModel; a timer hands a snapshot of it to the dashboard screen a few
times a second (never per event); the screen's keys (screens/dashboard.py, where
the key table lives) append commands to control.jsonl, which the trainer obeys
at its next step boundary. In `loratui run` the app also starts the trainer as
a child process in its own session and a second worker waits for it; in
`loratui watch` it attaches to whatever writes the run directory (a headless
run, a multi-GPU run, a finished run). A worker that fails is reported in one
place, `on_worker_state_changed`, and the dashboard stays up.

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
import gc
import os
import signal
import threading
import time
from pathlib import Path

from textual import events, work
from textual.app import App
from textual.worker import Worker, WorkerState, get_current_worker

from loratui.control import send_command
from loratui.errors import EXIT_TRAINING_FAILED
from loratui.run_dir import RunDir
from loratui.ui import run_model as states
from loratui.ui.event_follower import EventFollower
from loratui.ui.messages import HistoryCaughtUp, TrainerExited
from loratui.ui.exit_summary import resume_command
from loratui.ui.run_files import list_checkpoints, tail_lines
from loratui.ui.run_model import RunModel, RunView, TrainerEnding
from loratui.ui.screens.dashboard import DashboardScreen
from loratui.ui.supervisor import TrainerProcess

# The cyclic collector, once the app is up: Python's (700, 10, 10) collected every ~0.2 s and
# walked the rendered lines of every panel (tens of thousands of objects) every ~17 s. Rendered
# lines die young: later collections find most of them already freed.
GC_THRESHOLDS = (10_000, 20, 20)

REDRAW_SECONDS = 1.0  # 1 redraw a second at most, whatever the event rate (nvitop and btop: every 2 s)
POLL_SECONDS = 0.5  # how often the follower looks for new events once caught up (the redraw: once a second)
TRAINER_POLL_SECONDS = 0.2  # how long a detach may wait for the trainer's supervisor to let go
TRAINER_LOG_LINES = 15  # of trainer.log, shown with a failure
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_DETACHED = 0
EXIT_HANGUP = 129
HANGUP_EXIT_SECONDS = 2.0


class DashboardApp(App[int]):
    TITLE = "loratui"
    ENABLE_COMMAND_PALETTE = False
    CSS_PATH = "dashboard.tcss"

    def __init__(self, run_dir: Path, *, trainer: TrainerProcess | None = None, resume: bool = False):
        # With NO_COLOR, Textual greys its truecolours unless it runs on the terminal's own ANSI
        # colours, which it then drops: no colour codes at all, only bold, dim, underline, reverse.
        super().__init__(ansi_color=True if "NO_COLOR" in os.environ else None)
        self.run_dir = RunDir(Path(run_dir))
        self.trainer = trainer
        self.model = RunModel(self.run_dir.root.name, state=states.STARTING if trainer else states.WAITING)
        if resume:  # the log so far is the run being resumed: say "resuming from step N" from the first frame
            newest = list_checkpoints(self.run_dir.checkpoints)
            self.model.expect_resume(newest[0].step if newest else None, time.time())
        self.view: RunView | None = None
        self.caught_up = asyncio.Event()
        self.hung_up = False
        self.exit_when_run_ends = False
        self._drawn_version = -1

    def get_driver_class(self):
        """On Linux, Textual's driver with an input thread that sleeps until a key (input_driver.py)."""
        driver_class = super().get_driver_class()
        if (driver_class.__module__, driver_class.__name__) == ("textual.drivers.linux_driver", "LinuxDriver"):
            from loratui.ui.input_driver import QuietLinuxDriver

            return QuietLinuxDriver
        return driver_class

    def get_default_screen(self) -> DashboardScreen:
        return DashboardScreen()

    @property
    def dashboard(self) -> DashboardScreen:
        return self.default_screen  # the bottom of the stack, under any open dialog

    def on_mount(self) -> None:
        try:
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGHUP, self.hang_up)
            for signum in STOP_SIGNALS:
                loop.add_signal_handler(signum, self.stop_for_signal, signum)
        except (NotImplementedError, RuntimeError):
            pass  # no signal handling here (not the main thread, or not Unix): nothing to detach from
        self.app_resume_signal.subscribe(self, self.repaint_after_resume)

    def repaint_after_resume(self, _app) -> None:
        """Back from a suspend (SIGTSTP, then SIGCONT): the terminal's screen was handed back to the shell, and
        Textual only redraws what changes; a finished run's dashboard would stay blank."""
        self.refresh(layout=True)

    def on_resize(self, event: events.Resize) -> None:
        self.dashboard.fit(event.size)

    def on_ready(self) -> None:
        """After the first frame: redraw on a timer, start the trainer (in `run`), then follow its events."""
        # What exists now (Textual, the widgets, their styles) lives as long as the app: out of
        # the cyclic collector's way. Its full collections walked all of it, 25 ms at a time on
        # the trainer's cores in a profile beside a training run (the collector took a sixth of
        # the dashboard's CPU; with GC_THRESHOLDS, under a twentieth).
        if not self.is_headless:  # a test's app (no terminal) leaves the test process's collector alone
            gc.freeze()
            gc.set_threshold(*GC_THRESHOLDS)
        self.set_interval(REDRAW_SECONDS, self.redraw)
        if self.trainer is not None:
            self.supervise_trainer()
        self.follow_events()

    # ----------------------------------------------------------- workers

    @work(thread=True, name="trainer", exit_on_error=False)
    def supervise_trainer(self) -> None:
        trainer = self.trainer
        try:
            trainer.start()
        except OSError as exc:  # the command itself could not start: say so, as a failed run
            with trainer.log_path.open("a") as log:
                log.write(f"loratui: could not start the trainer: {exc}\n")
            with self.model.lock:
                self.model.failure = {"error": f"could not start the trainer: {exc}", "traceback": None}
            self.post_message(TrainerExited(EXIT_TRAINING_FAILED))
            return
        with self.model.lock:
            self.model.note_action(f"trainer started (pid {trainer.pid}), output in trainer.log",
                                   states.STARTING, "importing torch")
        exit_fd = trainer.exit_fd()
        if exit_fd is not None:
            try:
                self.call_from_thread(self.watch_trainer_exit, exit_fd)
                return
            except RuntimeError:  # the app is closing already: the loop below lets go at once
                os.close(exit_fd)
        worker = get_current_worker()
        # Short waits, never one long one: the app's shutdown (a detach) joins this thread, and
        # cancels this worker, which must then let go of the trainer and leave it running.
        while not worker.is_cancelled:
            code = trainer.wait(TRAINER_POLL_SECONDS)
            if code is not None:
                self.post_message(TrainerExited(code))
                return

    def watch_trainer_exit(self, exit_fd: int) -> None:
        """Wait for the trainer's exit in the event loop: the descriptor turns readable when it exits.

        Beside the training, a thread polling the process five times a second was five wake-ups a
        second on the trainer's cores; the loop's epoll waits on this descriptor for nothing.
        """
        asyncio.get_running_loop().add_reader(exit_fd, self.trainer_exit_ready, exit_fd)

    def trainer_exit_ready(self, exit_fd: int) -> None:
        asyncio.get_running_loop().remove_reader(exit_fd)
        os.close(exit_fd)
        code = self.trainer.exit_code  # reaps it: the descriptor says the process has ended
        self.post_message(TrainerExited(code if code is not None else self.trainer.process.wait()))

    @work(thread=True, name="events", exit_on_error=False)
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
        self.redraw(all_now=True)  # the whole history is in: show it now, not at the next slow slot

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

    def redraw(self, *, all_now: bool = False) -> None:
        """Hand the dashboard a fresh snapshot if anything changed since the last one."""
        with self.model.lock:
            view = self.model.snapshot() if self.model.version != self._drawn_version else None
        if view is None:
            self.dashboard.show_slow(self.view, now=all_now)  # a change held back may be due now
            return
        self.view = view
        self._drawn_version = view.version
        if all_now:
            self.dashboard.show_slow(view, now=True)
        if self.dashboard.show(view):
            self.run_state_changed(view.header.state)

    def run_state_changed(self, state: str) -> None:
        if state == states.FAILED:
            if list_checkpoints(self.run_dir.checkpoints):
                with self.model.lock:
                    self.model.attach_resume(resume_command(self.run_dir))
            if self.trainer is None:
                self.show_trainer_log_of_failed_run()
        if self.exit_when_run_ends and self.trainer is None and state in states.ENDED:
            self.exit(self.outcome_code())

    def show_trainer_log_of_failed_run(self) -> None:
        """In `watch`: a run the dashboard started (and was detached from) has its trainer.log."""
        if self.run_dir.trainer_log.is_file():
            with self.model.lock:
                self.model.attach_log(*self.trainer_log())

    def show_alert(self, alert: dict) -> None:
        """An alert's details over the dashboard (as Enter on its row opens them)."""
        self.dashboard.show_alert(alert)

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

    # ------------------------------------------------ commands and exits

    def send(self, cmd: str, note: str, pending_state: str | None = None, **args) -> None:
        """Append a command to control.jsonl and show it as sent (and the state it waits for)."""
        send_command(self.run_dir.control, cmd, **args)
        with self.model.lock:
            self.model.note_action(note, pending_state, "waiting for the trainer" if pending_state else "")
        self.notify(note, title=f"sent {cmd}", timeout=4)
        self.redraw()

    def stop_run(self) -> None:
        """Ask the trainer to stop (it saves a checkpoint first); the app exits once the run has ended."""
        self.exit_when_run_ends = True
        self.send("stop", "stop requested: the trainer saves a checkpoint, then exits", states.STOPPING,
                  reason="stopped from the dashboard")

    def detach_and_exit(self) -> None:
        self.detach()
        self.exit(EXIT_DETACHED if self.trainer_alive() else self.outcome_code())

    def detach(self) -> None:
        """Let go of the run: the dashboard exits, the training goes on (`loratui watch` re-attaches)."""
        with self.model.lock:
            self.model.detached = True
            self.model.note_action("detached: training goes on")
        self.redraw()  # the last frame says so

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
