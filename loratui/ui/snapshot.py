"""`loratui watch RUN_DIR --once`: the run as plain text, for scripts and a quick look over SSH.

The whole event log is folded into the same RunModel the dashboard draws
from, so the two never disagree; the newest step and host readings are read
from the log's tail (the model keeps only what the panels need). No Textual
here: printing a snapshot starts no terminal UI.

    run      ui-healthy-fp16 (runs/ui-healthy-fp16)
    state    running · fp16 with loss scaling · attempt 0
    step     45/60 (75%) · elapsed 3m05s · eta 1m02s · 125 tok/s · lr 9.1e-05
    loss     3.154 · grad norm 2.702 · scale 32768 · 0 skipped
    alerts   none open
    health   (step 40) fp16 headroom ok: ... ; underflow ok: ...
    host     CPU 85% (trainer 98%) · trainer RSS 1.2 GiB · RAM 10.1/23.4 GiB
"""

from __future__ import annotations

import os
from pathlib import Path

from loratui.events.encode import decode_event
from loratui.ui import format as fmt
from loratui.ui.event_follower import EventFollower
from loratui.ui.run_model import RunModel

TAIL_BYTES = 256 << 10  # the newest step and host events are always in the last few hundred lines
LABEL_WIDTH = 9


def read_run(run_dir: Path) -> RunModel:
    """Every event of the run folded into a RunModel, read to the end once."""
    model = RunModel(run_dir.name)
    follower = EventFollower(run_dir / "events.jsonl", model)
    while follower.read_block() or not follower.caught_up:
        pass
    return model


def newest_events(events: Path, types: tuple[str, ...]) -> dict[str, dict]:
    """The newest event of each type among the log's last lines (a torn last line is skipped)."""
    with open(events, "rb") as file:
        size = file.seek(0, os.SEEK_END)
        file.seek(max(0, size - TAIL_BYTES))
        tail = file.read().split(b"\n")
    found: dict[str, dict] = {}
    for line in reversed(tail[1:] if size > TAIL_BYTES else tail):
        if not line.strip():
            continue
        try:
            event = decode_event(line)
        except ValueError:
            continue
        if event.get("type") in types and event["type"] not in found:
            found[event["type"]] = event
            if len(found) == len(types):
                break
    return found


def render_snapshot(run_dir: Path) -> str:
    model = read_run(run_dir)
    view = model.snapshot()
    newest = newest_events(run_dir / "events.jsonl", ("step", "host"))
    header = view.header
    lines = [("run", f"{header.run_name} ({run_dir})")]
    precision = header.precision or "precision not reported yet"
    if header.loss_scaling:
        precision += " with loss scaling"
    lines.append(("state", f"{header.state}" + (f" ({header.state_detail})" if header.state_detail else "")
                  + f" · {precision} · attempt {header.attempt}"))
    total = f"/{header.max_steps} ({header.step / header.max_steps:.0%})" if header.max_steps else ""
    pace = [f"elapsed {fmt.duration(header.elapsed_s)}"]
    if header.eta_s is not None:
        pace.append(f"eta {fmt.duration(header.eta_s)}")
    pace += [f"{fmt.rate(header.tokens_per_s)} tok/s", f"lr {fmt.number(header.lr, 2)}"]
    lines.append(("step", f"{header.step}{total} · " + " · ".join(pace)))
    lines.append(("loss", _step_figures(newest.get("step"))))
    lines.append(("alerts", _alerts(view.active_alerts)))
    lines += _health(view.health, view.health_step)
    lines.append(("host", _host(newest.get("host"))))
    if view.failure:
        lines.append(("failure", str(view.failure.get("error", "")).strip().splitlines()[0]))
    return "\n".join(f"{label:<{LABEL_WIDTH}}{text}" for label, text in lines)


def _step_figures(step: dict | None) -> str:
    if step is None:
        return "no step yet"
    parts = [fmt.number(step.get("loss")), f"grad norm {fmt.number(step.get('grad_norm'))}"]
    if step.get("scale") is not None:
        parts.append(f"scale {fmt.number(step.get('scale'))}")
    return " · ".join(parts) + (" · this step was skipped" if step.get("skipped") else "")


def _alerts(alerts: tuple[dict, ...]) -> str:
    if not alerts:
        return "none open"
    newest_first = sorted(alerts, key=lambda alert: alert.get("step") or 0, reverse=True)
    described = [f"{alert.get('kind')} ({alert.get('severity')}) at step {alert.get('step')}: "
                 f"{alert.get('message', '')}" for alert in newest_first]
    return f"{len(alerts)} open: " + f"\n{'':<{LABEL_WIDTH}}".join(described)


def _health(checks: dict, step: int | None) -> list[tuple[str, str]]:
    if not checks:
        return [("health", "no probe yet")]
    rows = []
    for index, (name, check) in enumerate(checks.items()):
        label = "health" if index == 0 else ""
        where = f"(step {step}) " if index == 0 and step is not None else ""
        status = check.get("status", "?") if isinstance(check, dict) else "?"
        summary = check.get("summary", "") if isinstance(check, dict) else str(check)
        rows.append((label, f"{where}{name.replace('_', ' ')}: {status} · {summary}"))
    return rows


def _host(host: dict | None) -> str:
    if host is None:
        return "no host figures in the log"
    return (f"CPU {_pct(host.get('cpu_pct'))} (trainer {_pct(host.get('process_cpu_pct'))}) · trainer RSS "
            f"{fmt.mib(host.get('rss_mib'))} · RAM {fmt.mib(host.get('ram_used_mib'))}/"
            f"{fmt.mib(host.get('ram_total_mib'))}")


def _pct(value) -> str:
    return "-" if value is None else f"{value:.0f}%"
