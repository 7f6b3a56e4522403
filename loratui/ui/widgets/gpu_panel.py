"""GPU devices: utilisation, memory, temperature and power per device, or a clear no-GPU state."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from loratui.ui import format as fmt
from loratui.ui.widgets.steady_height import SteadyHeight


@dataclass(frozen=True)
class GpuView:
    devices: tuple  # `gpu` events' devices
    memory: dict  # the newest step's mem_allocated/reserved/peak (torch's view of this process)
    device: str | None
    device_name: str | None
    nvml: str | None


class GpuPanel(SteadyHeight, Widget):
    DEFAULT_CSS = """
    GpuPanel {
        height: auto;
        border: round $primary-darken-1;
        padding: 0 1;
    }
    """

    view: reactive[GpuView | None] = reactive(None)

    def watch_view(self) -> None:
        self.refresh_content()

    def on_mount(self) -> None:
        self.border_title = "GPU"

    def content(self) -> Text:
        view = self.view
        if view is None or view.device is None:
            return Text("waiting for the trainer to report its device", style="dim")
        memory = view.memory or {}
        torch_line = None
        if memory.get("mem_allocated_mib") is not None:
            torch_line = (f"torch: {fmt.mib(memory.get('mem_allocated_mib'))} allocated, "
                          f"{fmt.mib(memory.get('mem_reserved_mib'))} reserved, "
                          f"peak {fmt.mib(memory.get('mem_peak_mib'))}")
        if not view.devices:
            text = Text()
            if view.device and view.device.startswith("cuda"):
                text.append(f"{view.device_name}: no NVML figures", style="bold")
                text.append(f"\n{_nvml_reason(view.nvml)}", style="dim")
            else:
                text.append("No GPU: training on CPU", style="bold")
                text.append(f"\n{view.device_name or 'CPU'}", style="dim")
            if torch_line:
                text.append("\n" + torch_line)
            return text
        text = Text()
        for gpu in view.devices:
            used, total = gpu.get("mem_used_mib"), gpu.get("mem_total_mib")
            share = f" {used / total:.0%}" if used is not None and total else ""
            text.append(f"{gpu.get('index', '?')} {gpu.get('name', '')}\n", style="bold")
            text.append(f"  {_value(gpu.get('util_pct'), '%')} util · {fmt.mib(used)}/{fmt.mib(total)}{share} · "
                        f"{_value(gpu.get('temperature_c'), '°C')} · {_value(gpu.get('power_w'), ' W')}\n")
        if torch_line:
            text.append(torch_line, style="dim")
        text.rstrip()
        return text


def _value(value, unit: str) -> str:
    return "-" if value is None else f"{value:.0f}{unit}"


def _nvml_reason(nvml: str | None) -> str:
    return f"NVML {nvml}" if nvml else "NVML not reported"
