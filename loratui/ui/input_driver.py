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

    def __init__(self, wake_fd: int):
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
        self._wake_read, wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(wake_write, False)
        self._wake_write = wake_write
        self.exit_event = _WakingEvent(wake_write)

    def run_input_thread(self) -> None:
        """Read keys and mouse input until the app closes, sleeping while there is none."""
        self._drain_wake_pipe()  # a byte left by an earlier stop (the app suspended and resumed)
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

    def close(self) -> None:
        super().close()
        self.exit_event._wake_fd = None  # never write to a closed descriptor's number, reused by then
        for fd in (self._wake_read, self._wake_write):
            try:
                os.close(fd)
            except OSError:
                pass
