"""Headless console lines: one line per `monitor.log_every` steps, plus the events a person must see.

Plain lines, no carriage returns or colours, so they read well in `nohup.out`,
a batch scheduler's log and `tail -f` alike.
"""

from __future__ import annotations

import sys
from typing import TextIO

from loratui.events.encode import as_float


# Suggestions in words (the event keeps its stable names): what a person would do.
FIXES = {"switch_precision": "switch precision", "lower_lr": "lower the learning rate", "rollback": "roll back",
         "none": "none"}


def _num(value, spec: str = ".4g") -> str:
    number = as_float(value)
    return "-" if number is None else format(number, spec)


class ConsoleSink:
    def __init__(self, log_every: int, max_steps: int, stream: TextIO | None = None):
        self.log_every = log_every
        self.max_steps = max_steps
        self.stream = stream or sys.stdout
        self.skipped_total = 0
        self._last_phase: tuple | None = None

    def write(self, event: dict) -> None:
        line = self.format(event)
        if not line:
            return
        if event["type"] == "run_failed":
            # Failures go to stderr with their traceback: a batch job's error log must hold them.
            self.stream.flush()
            sys.stderr.write(line + "\n" + (event.get("traceback") or ""))
            sys.stderr.flush()
            return
        self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        pass

    def format(self, event: dict) -> str | None:
        kind = event["type"]
        if kind == "step":
            self.skipped_total += bool(event.get("skipped"))
            step = event["step"]
            if step % self.log_every and step != self.max_steps:
                return None
            mem = event.get("mem_allocated_mib")
            return (f"step {step}/{self.max_steps} loss {_num(event['loss'])} "
                    f"grad_norm {_num(event['grad_norm'])} lr {_num(event['lr'], '.3e')} "
                    f"precision {event['precision']} scale {_num(event.get('scale'), '.0f')} "
                    f"skipped {self.skipped_total} tok/s {_num(event.get('tokens_per_s'), '.0f')} "
                    + (f"img/s {_num(event['images_per_s'], '.1f')} " if event.get("images_per_s") is not None else "")
                    + f"mem {'-' if mem is None else f'{mem:.0f}MiB'}")
        if kind == "phase":
            return self._format_phase(event)
        if kind == "data":
            # Kept, skipped, dropped and truncated rows: a batch job's log must say what was trained on.
            return f"data: {event['summary']}"
        if kind == "run_started":
            # A resumed run says from which step and checkpoint, first thing: nobody has to infer it.
            how = (f"run resumed from step {event.get('step', 0)} ({event['resumed_from']})"
                   if event.get("resumed_from") else "run started")
            return (f"{how}: precision {event['precision']} on {event['device']}, "
                    f"world size {event['world_size']}, {event['trainable_params']:,} trainable parameters")
        if kind == "alert":
            return (f"ALERT [{event['severity']}] {event['kind']} at step {event.get('step')}: "
                    f"{event['message']} (suggested fix: {FIXES.get(event['suggestion'], event['suggestion'])})")
        if kind == "alert_resolved":
            return f"resolved: {event['kind']} at step {event.get('step')}"
        if kind == "checkpoint":
            return f"checkpoint saved: {event['path']}"
        if kind == "restart":
            return (f"restart from step {event['from_step']}: precision {event['precision']}, "
                    f"learning rate {event['learning_rate']:.3e} ({event['reason']})")
        if kind == "control":
            return f"control: {event['cmd']} {'accepted' if event.get('accepted') else 'ignored'}" + (
                f" ({event['message']})" if event.get("message") else "")
        if kind == "notice":
            return f"note: {event['message']}"
        if kind == "run_finished":
            return f"run finished at step {event.get('step')}: {event.get('reason', 'done')}"
        if kind == "run_failed":
            return f"run failed at step {event.get('step')}: {event['error']}"
        return None

    def _format_phase(self, event: dict) -> str | None:
        done, total = event.get("done"), event.get("total")
        # One line at the start and one at the end of each phase: progress belongs on the dashboard.
        key = (event["name"], done == total)
        if key == self._last_phase:
            return None
        self._last_phase = key
        name = str(event["name"]).replace("_", " ")  # "loading model", not the event's internal name
        if total and done == total:
            return f"{name}: done ({total})"
        return f"{name}..." if done in (0, None) else None
