"""`loratui watch RUN_DIR --once`, `loratui watch FOLDER` (the run list) and the look flags.

--once runs the real command in a subprocess on copies of recorded real runs;
the run list app is driven with Textual's pilot and real keys.
"""

from __future__ import annotations

import os
import time

from helpers import loratui_cli
from test_ui_support import append_event, recorded_run, run_async, screen_text, wait_for

from loratui.events.jsonl import read_events
from loratui.ui import format as fmt
from loratui.ui.run_list import find_runs, summarize
from loratui.ui.screens.run_list import RunListApp


def test_once_prints_the_state_step_loss_alerts_and_health(tmp_path):
    run_dir = recorded_run("fp16_overflow", tmp_path, until_step=40)
    events = read_events(run_dir / "events.jsonl")
    last_step = [e for e in events if e["type"] == "step"][-1]
    alert = next(e for e in events if e["type"] == "alert")
    result = loratui_cli("watch", str(run_dir), "--once", timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    fields = {line[:9].strip(): line[9:] for line in lines if line[:9].strip()}
    assert fields["run"].startswith("ui-fp16-overflow")
    assert fields["state"].startswith("running · fp16 with loss scaling · attempt 0")
    assert fields["step"].startswith(f"{last_step['step']}/60 ")
    assert fields["loss"].startswith(fmt.number(last_step["loss"]))
    assert fields["alerts"] == f"1 open: {alert['kind']} ({alert['severity']}) at step {alert['step']}: " \
                               f"{alert['message']}"
    health = [e for e in events if e["type"] == "health"][-1]
    assert fields["health"].startswith(f"(step {health['step']}) fp16 headroom: "
                                       f"{health['checks']['fp16_headroom']['status']}")
    assert "\x1b[" not in result.stdout  # plain text: no terminal codes


def test_once_shows_the_newest_host_figures(tmp_path):
    run_dir = recorded_run("healthy_fp16", tmp_path)
    append_event(run_dir, {"type": "host", "step": 60, "cpu_pct": 73.0, "process_cpu_pct": 96.0,
                           "rss_mib": 1536.0, "ram_used_mib": 10240.0, "ram_total_mib": 24576.0})
    result = loratui_cli("watch", str(run_dir), "--once", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "host     CPU 73% (trainer 96%) · trainer RSS 1.5 GiB · RAM 10.0 GiB/24.0 GiB" in result.stdout
    assert "state    finished (completed)" in result.stdout


def test_once_refuses_a_path_that_is_not_a_run(tmp_path):
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "empty", tmp_path / "missing", tmp_path / "file.txt"):
        if path.name == "file.txt":
            path.write_text("x")
        result = loratui_cli("watch", str(path), "--once", timeout=60)
        assert result.returncode == 2
        assert result.stderr.strip() == f"error: {path}: not a loratui run directory (no events.jsonl), nor a " \
                                        f"folder holding any"
        assert "Traceback" not in result.stderr and result.stdout == ""


def test_a_folder_lists_its_runs_newest_first_with_state_and_alerts(tmp_path):
    runs = tmp_path / "runs"
    overflow = recorded_run("fp16_overflow", runs)
    healthy = recorded_run("healthy_fp16", runs, until_step=30)
    nested = recorded_run("restart_bf16", runs / "team")
    for age, run in enumerate((healthy, nested, overflow)):
        stamp = time.time() - 60 * age
        os.utime(run / "events.jsonl", (stamp, stamp))
    assert find_runs(runs) == [healthy, nested, overflow]
    result = loratui_cli("watch", str(runs), "--once", timeout=120)
    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()
    assert rows[0].startswith("written") and len(rows) == 4
    assert rows[1].endswith("ui-healthy-fp16") and " running " in rows[1] and " 30/60 " in rows[1]
    assert rows[2].endswith("ui-restart-bf16") and " finished " in rows[2] and " bf16 " in rows[2]
    assert rows[3].endswith("ui-fp16-overflow") and " 1 open / 1 " in rows[3]


def test_a_run_quiet_for_long_while_running_gets_a_question_mark(tmp_path):
    run = recorded_run("healthy_fp16", tmp_path, until_step=30)
    summary = summarize(run)
    assert summary.state_text(summary.modified + 10) == "running"
    assert summary.state_text(summary.modified + 3600) == "running? (quiet 1h00m)"
    finished = summarize(recorded_run("restart_bf16", tmp_path))
    assert finished.state_text(finished.modified + 3600) == "finished"


@run_async
async def test_the_run_list_app_picks_the_run_under_the_cursor(tmp_path):
    runs = tmp_path / "runs"
    first = recorded_run("healthy_fp16", runs)
    second = recorded_run("fp16_overflow", runs)
    os.utime(first / "events.jsonl")  # copies keep the recording's times: make the newest one plain
    os.utime(second / "events.jsonl", (time.time() - 60, time.time() - 60))
    app = RunListApp(runs, find_runs(runs))
    async with app.run_test(size=(120, 20)) as pilot:
        await wait_for(pilot, lambda: len(app.summaries) == 2, "both runs summarised")
        await pilot.pause()
        text = screen_text(app)
        assert "2 runs in" in text and "newest first" in text
        assert text.index("ui-healthy-fp16") < text.index("ui-fp16-overflow")
        assert "reading..." not in text and "1 open / 1" in text
        await pilot.press("down", "enter")
    assert app.return_value == second
    app = RunListApp(runs, find_runs(runs))
    async with app.run_test(size=(120, 20)) as pilot:
        await pilot.press("q")
    assert app.return_value is None and first.is_dir()


def test_look_from_flags_and_environment(monkeypatch):
    from loratui.errors import UserInputError
    from loratui.ui.themes import Look, choose_look, look_from_environment

    assert look_from_environment({}) == Look("dark", False)
    assert look_from_environment({"LORATUI_THEME": "light", "LORATUI_ASCII": "1"}) == Look("light", True)
    for bad in ({"LORATUI_THEME": "pink"}, {"LORATUI_ASCII": "maybe"}):
        try:
            look_from_environment(bad)
        except UserInputError as exc:
            assert list(bad)[0] in exc.render()
        else:
            raise AssertionError(f"{bad} accepted")
    monkeypatch.setenv("LORATUI_THEME", "light")
    monkeypatch.setenv("LORATUI_ASCII", "0")  # set through monkeypatch: what choose_look writes is undone after
    assert choose_look(None, True) == Look("light", True)  # the flag adds ASCII, the environment's theme stays
    assert os.environ["LORATUI_ASCII"] == "1" and choose_look("dark", False).theme == "dark"


def test_a_bad_look_in_the_environment_is_exit_2(tmp_path):
    run_dir = recorded_run("healthy_fp16", tmp_path)
    result = loratui_cli("watch", str(run_dir), env={"LORATUI_ASCII": "sometimes"}, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: LORATUI_ASCII: 'sometimes' is not allowed; use 1 (on) or 0 (off)"


def test_once_has_one_labelled_line_per_figure_for_scripts(tmp_path):
    """--once output is text a script can grep: `label value` lines, the labels in a fixed order."""
    run_dir = recorded_run("restart_bf16", tmp_path)
    result = loratui_cli("watch", str(run_dir), "--once", timeout=120)
    labels = [line[:9].strip() for line in result.stdout.splitlines() if line[:9].strip()]
    assert labels == ["run", "state", "step", "loss", "alerts", "health", "host"]
