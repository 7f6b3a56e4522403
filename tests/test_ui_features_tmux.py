"""The looking features in a real terminal: `loratui watch` in tmux, keys pressed, the screen read.

ASCII mode is tested here rather than in-process: it changes Textual's border
characters for the whole process, which a test process shares with others.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from pathlib import Path

import pytest
from test_ui_support import recorded_run

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.terminal import TmuxTerminal  # noqa: E402

LORATUI = [sys.executable, "-m", "loratui"]
pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


def braille_or_box_drawing(screen: str) -> set[str]:
    return {c for c in screen if 0x2800 <= ord(c) <= 0x28FF or 0x2500 <= ord(c) <= 0x257F}


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_ascii_mode_draws_charts_and_borders_without_braille_or_box_drawing(tmp_path, how):
    run_dir = recorded_run("restart_bf16", tmp_path)
    command = [*LORATUI, "watch", str(run_dir)] + (["--ascii"] if how == "flag" else [])
    with TmuxTerminal(tmp_path, width=120, height=40) as terminal:
        terminal.start(command, env={"LORATUI_ASCII": "1"} if how == "environment" else {})
        screen = terminal.wait_for(r"FINISHED", "the dashboard", timeout=60, poll=0.3)
        screen = terminal.wait_until(lambda s: "+---" in s and "*" in s, "ASCII charts", timeout=30, poll=0.3)
        assert not braille_or_box_drawing(screen), screen
        assert " o" in screen or "oo" in screen  # the abandoned attempt, in its own character
        terminal.press("m")
        screen = terminal.wait_for(r"loss - light", "smoothing on (a narrow chart's short title)", timeout=20,
                                   poll=0.3)
        assert not braille_or_box_drawing(screen), screen
        terminal.press("q")
        assert terminal.exit_code(timeout=30) == 0
    with TmuxTerminal(tmp_path, width=120, height=40) as terminal:  # and without: braille and frames
        terminal.start([*LORATUI, "watch", str(run_dir)])
        screen = terminal.wait_until(braille_or_box_drawing, "the usual glyphs", timeout=60, poll=0.3)
        terminal.press("q")


def test_watch_a_folder_lists_the_runs_and_opens_the_one_picked(tmp_path):
    runs = tmp_path / "runs"
    older = recorded_run("fp16_overflow", runs)
    newer = recorded_run("healthy_fp16", runs)
    os.utime(older / "events.jsonl", (time.time() - 600, time.time() - 600))
    os.utime(newer / "events.jsonl")
    with TmuxTerminal(tmp_path, width=120, height=30) as terminal:
        terminal.start([*LORATUI, "watch", str(runs)])
        screen = terminal.wait_for(r"1 open / 1", "the run list, read", timeout=60, poll=0.3)
        assert screen.index("ui-healthy-fp16") < screen.index("ui-fp16-overflow")
        terminal.press("Down", "Enter")
        screen = terminal.wait_for(r"ui-fp16-overflow .*FINISHED", "the picked run's dashboard", timeout=60,
                                   poll=0.3)
        terminal.press("g")
        terminal.wait_for(r"trainer\.log · not written yet", "the log view", timeout=20, poll=0.3)
        terminal.press("Escape", "q")
        assert terminal.exit_code(timeout=30) == 0


def test_the_run_list_under_no_color_underlines_the_highlighted_run(tmp_path):
    runs = tmp_path / "runs"
    recorded_run("healthy_fp16", runs)
    recorded_run("fp16_overflow", runs)
    with TmuxTerminal(tmp_path, width=120, height=20) as terminal:
        terminal.start([*LORATUI, "watch", str(runs)], env={"NO_COLOR": "1"})
        terminal.wait_for(r"1 open / 1", "the run list, read", timeout=60, poll=0.3)
        styled = terminal.tmux("capture-pane", "-p", "-e", "-t", "main")
        params = [int(p) for code in re.findall(r"\x1b\[([0-9;]*)m", styled) for p in code.split(";") if p]
        colours = [p for p in params if 30 <= p <= 38 or 40 <= p <= 48 or 90 <= p <= 97 or 100 <= p <= 107]
        assert not colours, colours  # 39 and 49 (the terminal's own default colours) set none
        highlighted = [line for line in styled.splitlines()
                       if "ui-" in line and re.search(r"\x1b\[([0-9;]*;)?4[;m]", line)]
        assert len(highlighted) == 1  # one run underlined: the one enter would open
        terminal.press("q")
        assert terminal.exit_code(timeout=30) == 0


CUBE = (0, 95, 135, 175, 215, 255)  # xterm's 6x6x6 colour cube levels


def background_colours(styled: str) -> list[tuple[int, int, int]]:
    """Every background the screen sets, as RGB: truecolour (48;2;R;G;B) or xterm-256 (48;5;N, cube or greys)."""
    colours = [tuple(map(int, found)) for found in re.findall(r"48;2;(\d+);(\d+);(\d+)", styled)]
    for index in map(int, re.findall(r"48;5;(\d+)", styled)):
        if 16 <= index <= 231:
            index -= 16
            colours.append((CUBE[index // 36], CUBE[index % 36 // 6], CUBE[index % 6]))
        elif index >= 232:
            colours.append((8 + 10 * (index - 232),) * 3)
    return colours


def test_light_theme_window_and_cursor_in_a_terminal(tmp_path):
    run_dir = recorded_run("healthy_fp16", tmp_path)
    with TmuxTerminal(tmp_path, width=160, height=48) as terminal:
        terminal.start([*LORATUI, "watch", str(run_dir), "--theme", "light"])
        terminal.wait_for(r"FINISHED", "the dashboard", timeout=60, poll=0.3)
        styled = terminal.tmux("capture-pane", "-p", "-e", "-t", "main")
        backgrounds = background_colours(styled)
        light = [colour for colour in backgrounds if min(colour) >= 150]
        assert backgrounds and len(light) > len(backgrounds) / 2, backgrounds[:20]
        terminal.press("z")
        terminal.wait_for(r"loss · last 50", "the window, in the title", timeout=20, poll=0.3)
        terminal.press("c")  # a narrow chart's title keeps the cursor's reading first
        terminal.wait_for(r"loss · (last 50 · )?step 60: ", "the cursor's reading", timeout=20, poll=0.3)
        terminal.press("Left")
        terminal.wait_for(r"loss · (last 50 · )?step 5\d: ", "the cursor moved", timeout=20, poll=0.3)
        terminal.press("q")
        assert terminal.exit_code(timeout=30) == 0
    with TmuxTerminal(tmp_path, width=160, height=48) as terminal:  # the default: dark
        terminal.start([*LORATUI, "watch", str(run_dir)])
        terminal.wait_for(r"FINISHED", "the dashboard", timeout=60, poll=0.3)
        backgrounds = background_colours(terminal.tmux("capture-pane", "-p", "-e", "-t", "main"))
        assert len([colour for colour in backgrounds if max(colour) <= 80]) > len(backgrounds) / 2, backgrounds[:20]
        terminal.press("q")
