"""SIGINT, SIGTERM and SIGHUP end a run cleanly at the next step boundary.

The handler only records the signal; the training loop notices it between
steps, saves a checkpoint, writes `run_finished` and exits 128 + signal
number (130, 143, 129). A second SIGINT means "now": the process exits at
once, which is safe because checkpoints are renamed into place only when
complete. A signal the parent set to be ignored stays ignored: under `nohup`
a closed terminal's SIGHUP must not stop the run.

Under a launcher (torchrun, which `accelerate launch` uses for several
processes) a rank often gets one interrupt twice: from the terminal or the
scheduler, which signal every process, and from the launcher, which passes
the signal it got on to each rank. A SIGINT that arrives within
DUPLICATE_WINDOW_S of the first is that copy, not a person pressing Ctrl-C
again, and changes nothing.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}
# Long enough for a launcher to pass a signal on, short of a person's deliberate second Ctrl-C.
DUPLICATE_WINDOW_S = 1.0


def under_a_launcher() -> bool:
    """torchrun sets these for every rank it starts."""
    return "LOCAL_RANK" in os.environ or "RANK" in os.environ


class SignalWatcher:
    def __init__(self):
        self.received: int | None = None
        self._previous = {}
        self._arrivals: InterruptArrivals | None = None

    def install(self) -> None:
        for signum in EXIT_CODES:
            if signal.getsignal(signum) == signal.SIG_IGN:
                continue  # ignored on purpose by whoever started us (nohup, a shell's background job)
            self._previous[signum] = signal.signal(signum, self._handle)
        if under_a_launcher() and signal.SIGINT in self._previous:
            self._arrivals = InterruptArrivals()

    def uninstall(self) -> None:
        if self._arrivals is not None:
            self._arrivals.close()
            self._arrivals = None
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, _frame) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            if self._arrivals is not None and self._arrivals.latest_is_a_copy():
                return  # the launcher's copy of the interrupt this rank already has
            sys.stderr.write("loratui: second interrupt, exiting now (the newest complete checkpoint is "
                             "intact)\n")
            sys.stderr.flush()
            os._exit(EXIT_CODES[signal.SIGINT])
        if self.received is None:
            self.received = signum

    @property
    def exit_code(self) -> int | None:
        return EXIT_CODES.get(self.received) if self.received else None

    @property
    def name(self) -> str | None:
        return signal.Signals(self.received).name if self.received else None


class InterruptArrivals:
    """When each SIGINT reached the process, which is not when Python runs its handler.

    Python runs a handler once the main thread is back in Python code: a rank waiting
    in a collective while rank 0 writes a checkpoint handles the launcher's copy seconds
    after it came. The interpreter's C-level handler writes each signal's number to the
    wakeup fd the moment it arrives; a small thread reads them and notes the time.
    """

    def __init__(self):
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._times: list[float] = []
        self._noted = threading.Condition()
        threading.Thread(target=self._note_arrivals, name="loratui-signal-arrivals", daemon=True).start()

    def _note_arrivals(self) -> None:
        while data := os.read(self._read_fd, 64):
            with self._noted:
                self._times += [time.monotonic()] * data.count(signal.SIGINT)
                self._noted.notify_all()
        os.close(self._read_fd)

    def latest_is_a_copy(self) -> bool:
        """Whether the SIGINT being handled (at least the second) came within the window of the first."""
        with self._noted:
            # The thread notes an arrival within microseconds; the wait bounds a starved one.
            self._noted.wait_for(lambda: len(self._times) >= 2, timeout=0.5)
            if not self._times:
                return False  # arrived before the wakeup fd was set: no time to judge by
            latest = self._times[-1] if len(self._times) >= 2 else time.monotonic()
            return latest - self._times[0] < DUPLICATE_WINDOW_S

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self._write_fd)  # the thread reads the end of the pipe and stops
