"""Messages from the dashboard's workers to the app: small dataclasses, floods merged."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message


@dataclass
class EventsRead(Message):
    """New events were folded into the run model (the redraw timer picks them up)."""

    version: int

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, EventsRead)


@dataclass
class HistoryCaughtUp(Message):
    """The follower reached the end of events.jsonl for the first time."""


@dataclass
class TrainerExited(Message):
    """The supervised trainer process ended."""

    exit_code: int
