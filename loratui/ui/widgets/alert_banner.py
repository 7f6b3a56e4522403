"""One line under the header while an alert is active: what happened and the key that fixes it."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from loratui.ui import format as fmt
from loratui.ui.run_model import FIX_KEYS, FIX_NAMES


class AlertBanner(Widget):
    DEFAULT_CSS = """
    AlertBanner {
        height: 1;
        background: $error;
        color: $text;
        display: none;
        padding: 0 1;
    }
    AlertBanner.-warning {
        background: $warning;
        color: $background;
    }
    AlertBanner.-active {
        display: block;
    }
    """

    alerts: reactive[tuple] = reactive(tuple)

    def watch_alerts(self, alerts: tuple) -> None:
        self.set_class(bool(alerts), "-active")
        self.set_class(bool(alerts) and all(a.get("severity") != "critical" for a in alerts), "-warning")

    def render(self) -> Text:
        """The worst, newest alert: its fix's key and Enter first, the message last (a narrow line cuts that)."""
        if not self.alerts:
            return Text("")
        alert = max(self.alerts, key=lambda a: (a.get("severity") == "critical", a.get("step") or 0))
        severity = "critical" if alert.get("severity") == "critical" else "warning"
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(f"{fmt.SEVERITY_MARKS[severity]} {alert.get('kind')} at step {alert.get('step')}", style="bold")
        key = FIX_KEYS.get(alert.get("suggestion") or "")
        if key:
            text.append(f" · press {key} to {FIX_NAMES[alert['suggestion']]}", style="bold")
        text.append(" · enter: details")
        if len(self.alerts) > 1:
            text.append(f" (+{len(self.alerts) - 1} more)")
        text.append(f" · {alert.get('message', '')}")
        return text
