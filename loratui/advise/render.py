"""The advice as a table: one column per trial, one row per figure; rich on a terminal, plain text otherwise.

Both forms are drawn from advice.json's content alone, so what a person reads
is what the file holds. rich is imported only to draw on a terminal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from loratui.events.encode import as_float


def _number(spec: str) -> Callable[[dict, str], str]:
    def cell(trial: dict, key: str) -> str:
        value = as_float(trial.get(key))
        return "-" if value is None else format(value, spec)
    return cell


def _skips(trial: dict, _key: str) -> str:
    if trial.get("steps_done") is None or trial.get("verdict") == "unsupported":
        return "-"
    if trial.get("final_scale") is None:
        return str(trial["skipped_steps"])
    return f"{trial['skipped_steps']} ({trial['skipped_after_calibration']} after calibration)"


def _headroom(trial: dict, _key: str) -> str:
    value = as_float(trial.get("fp16_headroom"))
    if value is None:
        return "-"
    where = {"input": "in", "output": "out"}.get(trial.get("headroom_where"), "")
    module = (trial.get("headroom_module") or "").removeprefix("model.")
    return f"{value:.3g}x {module} {where}".rstrip()


def _text(trial: dict, key: str) -> str:
    value = trial.get(key)
    return "-" if value is None else str(value)


def _fits(trial: dict, key: str) -> str:
    return {True: "yes", False: "NO"}.get(trial.get(key), "-")


ROWS: list[tuple[str, str, Callable[[dict, str], str]]] = [
    ("verdict", "verdict", _text),
    ("support here", "support", _text),
    ("tokens/s", "tokens_per_s", _number(".0f")),
    ("tokens/s spread (2 passes)", "speed_spread", _number(".1%")),
    ("peak memory MiB", "peak_memory_mib", _number(".0f")),
    ("estimated memory MiB", "estimated_memory_mib", _number(".0f")),
    ("fits the device", "fits", _fits),
    ("base quantization", "quantization", _text),
    ("loss at the end", "final_loss", _number(".4f")),
    ("skipped steps", "skipped_steps", _skips),
    ("loss scale at the end", "final_scale", _number(".0f")),
    ("gradient cosine vs fp32", "fidelity_cosine", _number(".6f")),
    ("gradient relative error", "relative_error", _number(".2e")),
    ("fp16 underflow share", "underflow_share", _number(".2%")),
    ("fp16 headroom, tightest", "fp16_headroom", _headroom),
    ("stale update share", "stale_share", _number(".2%")),
    ("trial seconds", "seconds", _number(".1f")),
]


def table_cells(advice: dict) -> tuple[list[str], list[list[str]]]:
    """The header (trial names) and one row of cells per figure."""
    trials = advice["trials"]
    names = list(trials)
    rows = [[label] + [cell(trials[name], key) for name in names] for label, key, cell in ROWS]
    return names, rows


def summary_lines(advice: dict, run_root: Path) -> list[str]:
    choice = advice["recommendation"]
    adapter = (f' with train.adapter_dtype = "{advice["adapter_dtype"]}"' if "bf16-pure" in advice["trials"] else "")
    quantization = advice.get("quantization", "none")
    quantized = f' with model.quantization = "{quantization}"' if quantization != "none" else ""
    lines = [f"recommendation: {choice}{adapter}{quantized}"]
    lines += [f"  - {reason}" for reason in advice["reasons"]]
    measures = {t.get("memory_measure") for t in advice["trials"].values()} - {None}
    if "process_peak_rss" in measures:
        lines.append("peak memory is the process's peak resident memory (CPU: torch keeps no count of its own)")
    if advice.get("device_memory_mib") is not None:
        lines.append(f"memory judged against {advice['device_memory']}: {advice['device_memory_mib']:.0f} MiB, "
                     f"estimates by the memory planner (as `loratui check` prints them)")
    lines.append(f"advice: {run_root / 'advice.json'}; the trials' events: {run_root / advice['events']}")
    return lines


def plain_text(advice: dict, run_root: Path) -> str:
    names, rows = table_cells(advice)
    header = [""] + names
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             .rstrip() for row in [header] + rows]
    return "\n".join(lines + [""] + summary_lines(advice, run_root))


def print_rich(advice: dict, run_root: Path, console=None) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    names, rows = table_cells(advice)
    recommended = advice.get("recommended_trial")
    # Text objects throughout: module names and notes are shown as they are, never read as markup.
    table = Table(title=Text(f"loratui advise: {advice['steps']} steps per trial on "
                             f"{advice['machine']['device_name']}"), title_justify="left")
    table.add_column("")
    for name in names:
        table.add_column(Text(name + (" *" if name == recommended else "")), justify="right",
                         style="bold" if name == recommended else None)
    styles = {"healthy": "green", "rejected": "red", "failed": "red", "unsupported": "dim"}
    for label, *cells in rows:
        table.add_row(Text(label), *[Text(cell, style=styles.get(cell, "") if label == "verdict" else "")
                                     for cell in cells])
    console.print(table)
    first, *rest = summary_lines(advice, run_root)
    console.print(Text(first, style="bold"))
    for line in rest:
        console.print(Text(line))
