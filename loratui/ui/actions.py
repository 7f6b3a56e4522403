"""What the dashboard's keys may do now, and which fix to offer first: plain functions, no Textual.

The dashboard screen asks here before it acts, so the rules (an ended run takes
no commands, one restart at a time, which precision to suggest, where a
restart goes back to) are tested without a terminal.
"""

from __future__ import annotations

from loratui.ui import run_model as states
from loratui.ui.run_files import CheckpointSummary

PRECISIONS = ("fp32", "bf16", "fp16")
# Keys that append a command to control.jsonl: they need a live trainer.
CONTROL_ACTIONS = ("switch_precision", "lower_lr", "rollback", "loss_scaling", "save", "pause", "resume")
# Of those, the ones that restart the run: one at a time.
RESTART_ACTIONS = ("switch_precision", "lower_lr", "rollback", "loss_scaling")


def why_not(action: str, state: str, trainer_alive: bool, *, precision: str | None = None,
            loss_scaling: bool = False) -> str | None:
    """Why a control key cannot act now (shown when it is pressed), or None when it can."""
    if action not in CONTROL_ACTIONS:
        return None
    if state == states.FINISHED or (state == states.FAILED or not trainer_alive):
        return f"the run has {'failed' if state == states.FAILED else 'ended'}: there is no trainer to control"
    if state == states.DETACHED:
        return "detached: the dashboard is letting go of the run"
    if state == states.STOPPING:
        return "stopping: the trainer is saving its checkpoint"
    if state == states.RESTARTING and action in RESTART_ACTIONS:
        return "a restart is under way: wait until it has taken effect"
    if action == "pause" and state == states.PAUSED:
        return "already paused: space resumes"
    if action == "resume" and state != states.PAUSED:
        return "not paused"
    if action == "loss_scaling" and precision != "fp16":
        return f"loss scaling is for fp16; this run trains in {precision or 'an unknown precision'}"
    if action == "loss_scaling" and loss_scaling:
        return "loss scaling is already on"
    return None


def suggest_precision(alert: dict | None, open_alerts: list[dict], advice: dict | None, support: dict,
                      current: str | None) -> tuple[str | None, str]:
    """The precision to offer first and why: an alert's fix, then `loratui advise`, then the safer neighbour."""
    newest_first = sorted(open_alerts, key=lambda a: a.get("step") or 0, reverse=True)
    for candidate in ([alert] if alert else []) + newest_first:
        precision = (candidate.get("fix") or {}).get("precision")
        if precision:
            return precision, f"fixes the {candidate.get('kind')}"
    if advice and advice.get("recommendation") in PRECISIONS:
        return advice["recommendation"], "measured by loratui advise"
    if current == "fp16" and support.get("bf16") in ("native", "emulated"):
        return "bf16", "fp32's range, no loss scaling needed"
    if current in ("fp16", "bf16"):
        return "fp32", "full precision: slower, nothing lost to rounding"
    if support.get("bf16") == "native":
        return "bf16", "native here: faster, fp32's range"
    return None, ""


def restart_point(fix: dict | None, checkpoints: list[CheckpointSummary]) -> str:
    """Where a restart goes back to, in words: the fix's own step, else the newest checkpoint."""
    if fix and isinstance(fix.get("from_step"), int):
        return f"step {fix['from_step']}"
    return f"the newest checkpoint (step {checkpoints[0].step})" if checkpoints else "the newest checkpoint"


def describe_restart(args: dict) -> str:
    """A restart command's arguments as a person reads them: "precision bf16, from step 20"."""
    return ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in args.items())
