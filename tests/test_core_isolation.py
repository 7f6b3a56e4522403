"""The trainer never imports the UI; the CLI's help does not wait for torch."""

import subprocess
import sys


def modules_after(code: str) -> set:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_trainer_imports_no_textual_or_rich():
    loaded = modules_after("import loratui.entry, loratui.train.trainer, loratui.monitor, "
                           "loratui.events.console")
    assert not {m for m in loaded if m.split(".")[0] in ("textual", "rich", "textual_plotext")}


def test_cli_help_imports_no_torch():
    loaded = modules_after("import loratui.cli\nloratui.cli.build_parser().format_help()")
    assert "torch" not in loaded and "transformers" not in loaded
