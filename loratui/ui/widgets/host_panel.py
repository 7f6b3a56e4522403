"""The machine the trainer runs on: CPU and RAM, shown beside the GPU panel whether or not there is a GPU.

Fed the newest `host` event (loratui/host_metrics.py). Host memory is where
data loading lives and where a CPU run trains, so the trainer's own resident
memory (with its data-loader workers) is shown next to the machine's.
"""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from loratui.ui import format as fmt
from loratui.ui.widgets.steady_height import SteadyHeight

RAM_WARNING_SHARE = 0.9  # the machine's RAM this full is shown in bold: swapping or the OOM killer come next


class HostPanel(SteadyHeight, Widget):
    SCOPED_CSS = False  # the rule for the dashboard's compact layout names a class above this widget
    DEFAULT_CSS = """
    HostPanel {
        height: auto;
        border: round $primary-darken-1;
        padding: 0 1;
    }
    .compact HostPanel {
        border: none;
    }
    """

    host: reactive[dict | None] = reactive(None)

    def watch_host(self) -> None:
        self.refresh_content()

    def on_mount(self) -> None:
        self.border_title = "Host"

    def content(self) -> Text:
        host = self.host
        if not host:
            return Text("no host figures yet (CPU and RAM, every few seconds)", style="dim")
        cores = host.get("cpu_count")
        text = Text()
        text.append(f"CPU {_pct(host.get('cpu_pct'))}" + (f" of {cores} cores" if cores else ""))
        text.append(f" · trainer {_pct(host.get('process_cpu_pct'))}\n")
        used, total = host.get("ram_used_mib"), host.get("ram_total_mib")
        share = used / total if used is not None and total else None
        text.append(f"RAM {fmt.mib(used)}/{fmt.mib(total)}" + (f" {share:.0%}" if share is not None else ""),
                    style="bold" if share is not None and share >= RAM_WARNING_SHARE else "")
        text.append(f" · trainer RSS {fmt.mib(host.get('rss_mib'))}")
        return text


def _pct(value) -> str:
    return "-" if value is None else f"{value:.0f}%"
