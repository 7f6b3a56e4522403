"""Alerts and their episodes: one `alert` event when a fault starts, one `alert_resolved` when it ends.

A detector reports every time it looks: the signal is bad (with what to say
about it) or healthy. The book turns that stream into episodes, so a fault
that lasts a hundred steps is one alert, not a hundred. An episode remembers
which signal opened it; only that signal can close it, after enough healthy
looks in a row (a single finite loss does not end a run of NaNs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable


@dataclass
class Alert:
    kind: str
    severity: str
    message: str  # one line a person understands
    suggestion: str  # switch_precision | lower_lr | rollback | none
    fix: dict  # the suggestion's arguments, as a restart command takes them
    explanation: str  # plain words: why this is the problem and why this fix
    evidence: dict  # the numbers behind it
    step: int

    def fields(self) -> dict:
        return asdict(self)


@dataclass
class Episode:
    alert: Alert
    source: str  # the signal that opened it, e.g. "loss", "skips", "probe:headroom"
    healthy_needed: int
    healthy_seen: int = 0


@dataclass
class AlertBook:
    """Open episodes by kind; publishes alert and alert_resolved through `publish`."""

    publish: Callable[..., dict]
    on_alert: Callable[[Alert], None] = lambda alert: None
    episodes: dict = field(default_factory=dict)  # kind -> Episode
    raised: int = 0

    def is_open(self, *kinds: str) -> bool:
        return any(kind in self.episodes for kind in kinds)

    def bad(self, kind: str, source: str, build: Callable[[], Alert | None], *, healthy_needed: int) -> None:
        """The signal is bad now. Opens an episode (building the alert only then) or extends one."""
        episode = self.episodes.get(kind)
        if episode is not None:
            episode.healthy_seen = 0
            return
        alert = build()
        if alert is None:
            return
        self.open(alert, source, healthy_needed)

    def open(self, alert: Alert, source: str, healthy_needed: int) -> None:
        if alert.kind in self.episodes:
            self.episodes[alert.kind].healthy_seen = 0
            return
        self.episodes[alert.kind] = Episode(alert, source, healthy_needed)
        self.raised += 1
        self.publish("alert", **alert.fields())
        self.on_alert(alert)

    def healthy(self, kind: str, source: str, step: int) -> None:
        """The signal that opened `kind` looks healthy now; enough of these in a row resolve it."""
        episode = self.episodes.get(kind)
        if episode is None or episode.source != source:
            return
        episode.healthy_seen += 1
        if episode.healthy_seen >= episode.healthy_needed:
            self.resolve(kind, step, f"{source} healthy for {episode.healthy_seen} "
                                     f"{'probe' if source.startswith('probe') else 'step'}(s)")

    def resolve(self, kind: str, step: int, reason: str) -> None:
        episode = self.episodes.pop(kind, None)
        if episode is not None:
            self.publish("alert_resolved", kind=kind, step=step, opened_at=episode.alert.step, reason=reason)

    def resolve_all(self, step: int, reason: str) -> None:
        for kind in list(self.episodes):
            self.resolve(kind, step, reason)

    def open_kinds(self) -> list[str]:
        return sorted(self.episodes)
