"""Mixed precision in three parts: the autocast context, the base weights' dtype, the loss scaler.

loratui sets these up itself on every device instead of through accelerate's
`mixed_precision`, because accelerate's fp16 on CPU silently trains in fp32
(no autocast, no scaler) and loratui never reports a precision that is not in
effect. On CUDA this is exactly what accelerate would do.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from loratui.precision_facts import DTYPES


@dataclass
class PrecisionSetup:
    name: str  # fp32 | bf16 | fp16
    device_type: str  # cpu | cuda
    scaler: Any  # torch.amp.GradScaler for fp16 with loss scaling, else None

    @property
    def dtype(self):
        import torch

        return getattr(torch, DTYPES[self.name])

    def autocast(self):
        import torch

        if self.name == "fp32":
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def setup_precision(name: str, device_type: str, amp_config) -> PrecisionSetup:
    import torch

    scaler = None
    if name == "fp16" and amp_config.loss_scaling:
        scaler = torch.amp.GradScaler(device_type, init_scale=amp_config.init_scale,
                                      growth_factor=amp_config.growth_factor,
                                      backoff_factor=amp_config.backoff_factor,
                                      growth_interval=amp_config.growth_interval)
    return PrecisionSetup(name, device_type, scaler)


def scale_tensor(scaler):
    """The scaler's current scale as a device tensor, read without a host sync.

    `get_scale()` calls `.item()`, a GPU sync; the trainer stacks this tensor
    with the step's other figures so one transfer per step reads them all.
    """
    import torch

    scale = getattr(scaler, "_scale", None)
    if isinstance(scale, torch.Tensor):
        return scale.reshape(()).float()
    return torch.tensor(float(scaler.get_scale()))
