"""The precision health monitor: probes, detectors and alerts (see issue 4).

The trainer calls a monitor through these methods:
  attach(trainer)                       once, after setup
  wants_probe(trainer, step) -> bool    before each step: run the probes on it?
  probe_after_backward(trainer, batch)  probe steps: gradients present (still scaled in fp16)
  probe_before_update(trainer)          probe steps: unscaled gradients, before optimizer.step
  probe_after_update(trainer)           probe steps: after optimizer.step
  after_update(trainer, step, lr, skipped)  every step, after optimizer.step (device-side work only)
  carried_figures() -> tensor | None    before each step's one transfer: device values to bring along
  after_step(trainer, figures)          every step: detectors over the step's figures
  on_restart(trainer)                   after a restart (calibration starts again)
  health_summary() -> dict              stored in each checkpoint

Modules: health.py (the monitor itself), detectors.py (per-step signals),
motion.py (learning-rate faults from the weights' motion), forecast.py
(warnings before fp16 overflows), activations.py, gradients.py, staleness.py,
fp32_math.py (the probes), diagnosis.py (why a loss was not finite),
explain.py (alerts in words), fixes.py (which fix), alerts.py (episodes),
autopilot.py.
"""


def build_monitor(config, bus):
    """The health monitor for a run; it also listens on the bus for the trainer's acknowledgements."""
    from loratui.events.bus import CallbackSink
    from loratui.monitor.health import HealthMonitor

    monitor = HealthMonitor(config.monitor, bus, lr_factor=config.train.lr_factor)
    bus.add_sink(CallbackSink(monitor.on_event))
    return monitor
