"""SIGINT, SIGTERM and SIGHUP end a run cleanly at the next step boundary.

The handler only records the signal; the training loop notices it between
steps, saves a checkpoint, writes `run_finished` and exits 128 + signal
number (130, 143, 129). A second SIGINT means "now": the process exits at
once, which is safe because checkpoints are renamed into place only when
complete. A signal the parent set to be ignored stays ignored: under `nohup`
a closed terminal's SIGHUP must not stop the run.
"""

from __future__ import annotations

import os
import signal
import sys

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}


class SignalWatcher:
    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def install(self) -> None:
        for signum in EXIT_CODES:
            if signal.getsignal(signum) == signal.SIG_IGN:
                continue  # ignored on purpose by whoever started us (nohup, a shell's background job)
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, _frame) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT:
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
