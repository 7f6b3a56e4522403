"""Run a model's forward and backward in fp32 arithmetic, whatever dtype its weights are stored in.

The probes need an fp32 reference for the same micro-batch: the activations
fp16 would have had to hold (headroom) and the gradients without fp16/bf16
rounding (fidelity, underflow). Converting the model to fp32 would double the
memory of its base weights; instead every torch call made under `fp32_math()`
sees its half-precision tensor arguments upcast to fp32 one op at a time, and
casts *to* fp16/bf16 inside the model code (peft and transformers cast
activations to the weights' dtype) stay fp32. The stored weights are used as
they are, so the reference differs from the run only in the arithmetic.

Autograd would keep every upcast weight alive for the backward pass (a full
fp32 copy of the model after all), so the upcasts it saves are stored as the
half-precision originals and upcast again when the backward needs them.
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
    from torch.utils.weak import WeakIdKeyDictionary

    half = (torch.float16, torch.bfloat16)
    casts_to_half = {torch.Tensor.half, torch.Tensor.bfloat16}

    class Fp32Math(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.sources = WeakIdKeyDictionary()  # fp32 upcast -> the half-precision tensor it came from
            self.saving = torch.autograd.graph.saved_tensors_hooks(self.pack, unpack)

        def __enter__(self):
            self.saving.__enter__()
            return super().__enter__()

        def __exit__(self, *exc_info):
            super().__exit__(*exc_info)
            self.saving.__exit__(*exc_info)

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in casts_to_half:
                return self.upcast(args[0])
            args = tuple(self.upcast(a) for a in args)
            kwargs = {k: self.upcast(v) for k, v in (kwargs or {}).items()}
            return func(*args, **kwargs)

        def upcast(self, value):
            if isinstance(value, torch.Tensor):
                if value.dtype not in half:
                    return value
                copy = value.float()
                self.sources[copy] = value
                return copy
            if isinstance(value, (list, tuple)):
                return type(value)(self.upcast(v) for v in value)
            if isinstance(value, torch.dtype) and value in half:  # x.to(torch.float16), dtype=...
                return torch.float32
            return value

        def pack(self, saved):
            """What autograd keeps: an upcast weight (or a view of one) as its half original."""
            base = saved if saved._base is None else saved._base
            source = self.sources.get(base)
            if source is None:
                return saved
            return source, saved.size(), saved.stride(), saved.storage_offset()

    def unpack(packed):
        if isinstance(packed, tuple):
            source, size, stride, offset = packed
            return source.float().as_strided(size, stride, offset)
        return packed

    return Fp32Math
