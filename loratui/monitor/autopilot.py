"""Autopilot: apply fixes without a person, through the same control file a person's key press uses.

Off by default. `[monitor.autopilot] actions` maps each alert kind to an action
(switch_precision, lower_lr, rollback, stop, none); the autopilot takes at
most `max_actions` of them in a run and one at a time (nothing more until
the trainer has obeyed the last). Each decision is logged as a `notice`
event that says which alert, which action and why; the restart it causes
carries the same reason.

The configured action never overrides what the alert's own evidence says:
- an alert that suggests `none` found nothing a restart would fix (rows of
  bad data, a single loss spike to watch): the autopilot only stops for it,
  when the action is `stop`, and otherwise says why it does not act;
- an alert that suggests anything but `switch_precision` (rollback for
  damaged weights, lower_lr for divergence or non-finite gradients in bf16 or
  fp32) found a cause the precision does not explain: the autopilot never
  switches precision for it. Other actions (lower_lr, rollback, stop) are a
  person's choice of remedy and are taken as configured.
Alerts the trainer raises itself (checkpoint_failed) never reach the
autopilot; the config refuses actions for them (checkpoint.on_error decides).
"""

from __future__ import annotations

from loratui.control import send_command
from loratui.monitor import fixes
from loratui.monitor.alerts import Alert


class Autopilot:
    def __init__(self, config, *, lower_lr_factor: float):
        self.config = config
        self.lower_lr_factor = lower_lr_factor
        self.taken = 0
        self.pending: str | None = None  # the id of a command the trainer has not acknowledged yet
        self.limit_reported = False

    def consider(self, trainer, alert: Alert) -> None:
        if not self.config.enabled or not trainer.is_main:
            return
        action = self.config.actions.get(alert.kind, "none")
        if action == "none":
            return
        refusal = contradiction(alert, action)
        if refusal:
            self.log(trainer, alert, action, refusal)
            return
        if self.pending is not None:
            self.log(trainer, alert, action, "waiting for the previous fix to take effect: not acting")
            return
        if self.taken >= self.config.max_actions:
            if not self.limit_reported:
                self.limit_reported = True
                self.log(trainer, alert, action, f"limit of {self.config.max_actions} action(s) reached: "
                                                 f"not acting; a person must decide")
            return
        args = self.arguments(trainer, alert, action)
        if args is None:
            self.log(trainer, alert, action, "no such fix applies here: not acting")
            return
        self.taken += 1
        command_id = f"autopilot-{self.taken}"
        reason = f"autopilot: {alert.kind} at step {alert.step}: {alert.message}"
        if action == "stop":
            send_command(trainer.run_dir.control, "stop", reason=reason, id=command_id)
        else:
            send_command(trainer.run_dir.control, "restart", reason=reason, id=command_id, **args)
        self.pending = command_id
        self.log(trainer, alert, action, f"action {self.taken} of {self.config.max_actions}: "
                                         f"{_describe(action, args)}", command=command_id, args=args)

    def arguments(self, trainer, alert: Alert, action: str) -> dict | None:
        """The restart arguments for `action`: the alert's own fix when it suggested this action."""
        if action == alert.suggestion:
            return dict(alert.fix)
        if action == "stop":
            return {}
        if action == "switch_precision":
            target = fixes.safer_precision(trainer, keep_adapter_fp32=alert.kind == "stale_update")
            return {"precision": target} if target else None
        if action == "lower_lr":
            return {"learning_rate": fixes.lowered_learning_rate(trainer, self.lower_lr_factor)}
        if action == "rollback":
            step = fixes.checkpoint_at_or_before(trainer, alert.step - 1)
            return {"from_step": step} if step is not None else None
        return None

    def acknowledged(self, event: dict) -> str | None:
        """A `control` event answering our pending command: clears it; returns why, if it was refused."""
        if self.pending is None or event.get("id") != self.pending:
            return None
        self.pending = None
        return None if event.get("accepted") else str(event.get("message"))

    def restarted(self) -> None:
        self.pending = None

    def log(self, trainer, alert: Alert, action: str, decision: str, **fields) -> None:
        trainer.bus.publish("notice", step=trainer.step, source="autopilot", alert=alert.kind, action=action,
                            message=f"autopilot: {alert.kind} at step {alert.step} -> {decision}. "
                                    f"Why: {alert.message}", **fields)


def contradiction(alert: Alert, action: str) -> str | None:
    """Why `action` would go against the alert's own evidence (see the module's docstring); None if it does not."""
    if alert.suggestion == "none" and action != "stop":
        return "the evidence points to no restart that would help: not acting"
    if action == "switch_precision" and alert.suggestion != "switch_precision":
        return (f"the evidence points to {_describe(alert.suggestion, alert.fix)}, not to the precision: switching "
                f"precision would go against it, so not acting (map {alert.kind} to \"{alert.suggestion}\" to let "
                f"the autopilot apply that)")
    return None


def _describe(action: str, args: dict) -> str:
    """e.g. "rollback (from_step=4)", or "stop"."""
    return action + (" (" + ", ".join(f"{k}={v}" for k, v in args.items()) + ")" if args else "")
