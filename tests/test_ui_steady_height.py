"""Panels that repaint without a whole-screen layout (the dashboard's cost) still grow when their text does."""

from __future__ import annotations

from test_ui_support import run_async
from textual.app import App, ComposeResult

from loratui.ui.widgets.gpu_panel import GpuPanel, GpuView
from loratui.ui.widgets.host_panel import HostPanel
from loratui.ui.widgets.steady_height import SHRINK_AFTER_SECONDS

HOST = {"cpu_pct": 50.0, "cpu_count": 2, "process_cpu_pct": 90.0, "ram_used_mib": 1000.0, "ram_total_mib": 24000.0,
        "rss_mib": 500.0}


class Panels(App):
    def compose(self) -> ComposeResult:
        yield HostPanel()
        yield GpuPanel()


def cpu_view(**memory) -> GpuView:
    return GpuView((), memory, "cpu", "Intel Xeon", None)


@run_async
async def test_a_new_figure_repaints_and_a_new_line_lays_out_again():
    app = Panels()
    async with app.run_test(size=(60, 20)) as pilot:
        host, gpu = app.query_one(HostPanel), app.query_one(GpuPanel)
        host.host = HOST
        gpu.view = cpu_view()
        await pilot.pause()
        host_height, gpu_height = host.size.height, gpu.size.height
        layouts = []
        original = gpu.refresh
        gpu.refresh = lambda *args, **kwargs: layouts.append(kwargs.get("layout")) or original(*args, **kwargs)

        gpu.view = cpu_view()  # equal figures: nothing to do
        host.host = dict(HOST, cpu_pct=75.0)  # a new figure, the same lines
        await pilot.pause()
        assert host.size.height == host_height and "CPU 75%" in str(host.render())

        gpu.view = cpu_view(mem_allocated_mib=10.0, mem_reserved_mib=20.0, mem_peak_mib=30.0)  # a torch line more
        await pilot.pause()
        assert layouts[-1] is True and gpu.size.height == gpu_height + 1
        gpu.view = cpu_view(mem_allocated_mib=11.0, mem_reserved_mib=20.0, mem_peak_mib=30.0)
        await pilot.pause()
        assert layouts[-1] is False and gpu.size.height == gpu_height + 1

        # A figure that grows until its line wraps at this width: the panel grows with it.
        host.host = dict(HOST, ram_used_mib=123456789.0, ram_total_mib=987654321.0, rss_mib=123456789.0)
        await pilot.pause()
        lines = len(host.render().wrap(app.console, host.content_size.width))
        assert host.content_size.height == lines > host_height - 2


@run_async
async def test_a_panel_keeps_its_height_while_its_text_is_a_line_shorter_for_a_while():
    """A wrapped reason that loses a digit must not move the panels below for a moment: shrinking waits."""
    app = Panels()
    async with app.run_test(size=(60, 20)) as pilot:
        gpu = app.query_one(GpuPanel)
        now = [1000.0]
        gpu.clock = lambda: now[0]
        gpu.view = cpu_view(mem_allocated_mib=10.0, mem_reserved_mib=20.0, mem_peak_mib=30.0)
        await pilot.pause()
        tall = gpu.size.height
        assert gpu.content_size.height == 3  # the device, its name and torch's memory
        layouts = []
        original = gpu.refresh

        def refresh(*args, **kwargs):  # the panel's own refreshes (Textual's layout refreshes widgets too)
            if set(kwargs) == {"layout"}:
                layouts.append(kwargs["layout"])
            return original(*args, **kwargs)
        gpu.refresh = refresh

        gpu.view = cpu_view()  # the torch line goes: the panel holds its height, a blank row where it was
        await pilot.pause()
        assert gpu.size.height == tall and True not in layouts
        assert str(gpu.render()).endswith("Intel Xeon\n") and "torch" not in str(gpu.render())
        now[0] += SHRINK_AFTER_SECONDS - 1
        gpu.view = cpu_view(mem_allocated_mib=None)
        await pilot.pause()
        assert gpu.size.height == tall and True not in layouts

        gpu.view = cpu_view(mem_allocated_mib=11.0, mem_reserved_mib=20.0, mem_peak_mib=30.0)  # back: no layout
        await pilot.pause()
        assert gpu.size.height == tall and True not in layouts
        gpu.view = cpu_view()
        now[0] += SHRINK_AFTER_SECONDS - 1  # shorter again: the wait starts over
        gpu.view = cpu_view(mem_allocated_mib=None)
        await pilot.pause()
        assert gpu.size.height == tall
        now[0] += 2  # shorter for SHRINK_AFTER_SECONDS: the panel shrinks, with one layout
        gpu.view = cpu_view(mem_reserved_mib=None)
        await pilot.pause()
        assert gpu.size.height == tall - 1 and layouts.count(True) == 1 and layouts[-1] is True
