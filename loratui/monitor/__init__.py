"""The precision health monitor: probes, detectors and alerts (see issue 4).

The trainer calls a monitor through these methods:
  attach(trainer)                       once, after setup
  wants_probe(trainer, step) -> bool    before each step: run the probes on it?
  probe_after_backward(trainer, batch)  probe steps: gradients present (still scaled in fp16)
  probe_before_update(trainer)          probe steps: unscaled gradients, before optimizer.step
  probe_after_update(trainer)           probe steps: after optimizer.step
  after_step(trainer, figures)          every step: detectors over the step's figures
  on_restart(trainer)                   after a restart (calibration starts again)
  health_summary() -> dict              stored in each checkpoint
"""


def build_monitor(config, bus):
    return None
