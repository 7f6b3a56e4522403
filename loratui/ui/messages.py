"""Messages from the dashboard's workers to the app: small dataclasses, one per rare happening.

New events send none: the follower folds them into the run model and the redraw timer
reads it, so a flood of events never floods the message queue.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message


@dataclass
class HistoryCaughtUp(Message):
    """The follower reached the end of events.jsonl for the first time."""


@dataclass
class TrainerExited(Message):
    """The supervised trainer process ended."""

    exit_code: int
