"""Textual's Linux driver with an input thread that sleeps until there is something to read.

Textual's input thread wakes ten times a second whether or not a key came (it
selects with a 0.1 s timeout, to notice that the app is closing and to let a
lone Escape through after its delay). Beside a training run on a small machine
those wake-ups were about a tenth of the dashboard's CPU while nobody typed,
each one taken from a core the trainer's threads were using. Here the thread
blocks until input, until the moment the key parser asked to be woken for (a
lone Escape), or until the app closes: closing sets `exit_event`, which also
writes a byte to a pipe the thread watches.

The loop reads, decodes and feeds the same way as Textual's (LinuxDriver in
Textual 8), through the same parser and `process_message`; only the waiting
differs. It depends on that parser's `_timeout_time` (when it wants a tick).

Its pipe lives for one stretch of application mode: Textual's driver closes
itself on a suspend (SIGTSTP) and starts application mode again on resume.
It also resumes after a SIGCONT only what a SIGTSTP suspended. Textual's
driver starts application mode again on every SIGCONT, but one also comes
after a plain SIGSTOP (`kill -STOP`, a debugger, a paused container), which
suspended nothing: each such stop and continue left the dashboard with one
more input thread and writer thread, and a full repaint.
"""

from __future__ import annotations

import os
import selectors
from codecs import getincrementaldecoder
from threading import Event

from textual._parser import ParseError
from textual._time import get_time
from textual._xterm_parser import XTermParser
from textual.drivers.linux_driver import LinuxDriver

READ_BYTES = 4096


class _WakingEvent(Event):
    """An Event whose set() also wakes a thread blocked in select() on the pipe's read end."""

    def __init__(self, wake_fd: int | None):
        super().__init__()
        self._wake_fd = wake_fd

    def set(self) -> None:
        super().set()
        if self._wake_fd is None:  # the driver has closed its pipe
            return
        try:
            os.write(self._wake_fd, b"x")
        except BlockingIOError:  # the pipe is full: the thread has bytes to wake it already
            pass


class QuietLinuxDriver(LinuxDriver):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._wake_read: int | None = None
        self._wake_write: int | None = None
        self.exit_event = _WakingEvent(None)
        self._suspended_by_sigtstp = False

    def start_application_mode(self) -> None:
        # A pipe for each time in application mode: Textual's driver calls close() when it is
        # suspended (SIGTSTP) as well as at the end, and starts application mode again on resume.
        self._open_wake_pipe()
        super().start_application_mode()

    def _sigtstp_application(self, *args) -> None:
        self._suspended_by_sigtstp = self._auto_restart  # Textual suspends application mode only then
        super()._sigtstp_application(*args)

    def _sigcont_application(self, *args) -> None:
        if self._suspended_by_sigtstp:
            self._suspended_by_sigtstp = False
            super()._sigcont_application(*args)

    def run_input_thread(self) -> None:
        """Read keys and mouse input until the app closes, sleeping while there is none."""
        self._drain_wake_pipe()  # a byte written before this thread started
        selector = selectors.SelectSelector()
        selector.register(self.fileno, selectors.EVENT_READ)
        selector.register(self._wake_read, selectors.EVENT_READ)
        parser = XTermParser(self._debug)
        decode = getincrementaldecoder("utf-8")().decode
        try:
            while not self.exit_event.is_set():
                ready = selector.select(self._wait_seconds(parser))
                if any(key.fd == self.fileno for key, _ in ready):
                    self._feed(parser, decode(os.read(self.fileno, READ_BYTES)))
                for event in parser.tick():
                    self.process_message(event)
            selector.unregister(self.fileno)
        finally:
            selector.close()
            try:
                for _ in parser.feed(""):
                    pass
            except (EOFError, ParseError):
                pass

    def _feed(self, parser: XTermParser, text: str) -> None:
        if text:  # nothing: stdin is a pipe that closed
            for event in parser.feed(text):
                self.process_message(event)

    @staticmethod
    def _wait_seconds(parser: XTermParser) -> float | None:
        """None (until input or exit) unless the parser waits for the rest of a key: until its deadline."""
        deadline = parser._timeout_time
        return None if deadline is None else max(0.0, deadline - get_time())

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_read, READ_BYTES):
                pass
        except BlockingIOError:
            pass

    def _open_wake_pipe(self) -> None:
        self._close_wake_pipe()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self.exit_event._wake_fd = self._wake_write

    def _close_wake_pipe(self) -> None:
        self.exit_event._wake_fd = None  # never write to a closed descriptor's number, reused by then
        for fd in (self._wake_read, self._wake_write):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._wake_read = self._wake_write = None

    def close(self) -> None:
        super().close()
        self._close_wake_pipe()
