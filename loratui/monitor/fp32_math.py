"""Run a model's forward and backward in fp32 arithmetic, whatever dtype its weights are stored in.

The probes need an fp32 reference for the same micro-batch: the activations
fp16 would have had to hold (headroom) and the gradients without fp16/bf16
rounding (fidelity, underflow). Converting the model to fp32 would double the
memory of its base weights; instead every torch call made under `fp32_math()`
sees its half-precision tensor arguments upcast to fp32 one op at a time, and
casts *to* fp16/bf16 inside the model code (peft and transformers cast
activations to the weights' dtype) stay fp32. The stored weights are used as
they are, so the reference differs from the run only in the arithmetic.
Probes call it outside the trainer's autocast region, so no autocast applies.
"""

from __future__ import annotations

_mode_class = None


def fp32_math():
    """A context manager: torch calls inside it compute in fp32."""
    global _mode_class
    if _mode_class is None:
        _mode_class = _build_mode_class()
    return _mode_class()


def _build_mode_class():
    import torch
    from torch.overrides import TorchFunctionMode

    half = (torch.float16, torch.bfloat16)
    casts_to_half = {torch.Tensor.half, torch.Tensor.bfloat16}

    def upcast(value):
        if isinstance(value, torch.Tensor):
            return value.float() if value.dtype in half else value
        if isinstance(value, (list, tuple)):
            return type(value)(upcast(v) for v in value)
        if isinstance(value, torch.dtype) and value in half:  # x.to(torch.float16), dtype=...
            return torch.float32
        return value

    class Fp32Math(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in casts_to_half:
                return upcast(args[0])
            args = tuple(upcast(a) for a in args)
            kwargs = {k: upcast(v) for k, v in (kwargs or {}).items()}
            return func(*args, **kwargs)

    return Fp32Math
