"""Which fix to suggest, with its arguments exactly as a `restart` command takes them."""

from __future__ import annotations

from loratui import checkpoint_files as ckpt


def safer_precision(trainer, *, keep_adapter_fp32: bool = False) -> str | None:
    """The precision to move to from the current one; None when there is nothing safer (fp32).

    From fp16, bf16 where this device runs it natively (or on CPU, where autocast
    computes it exactly either way), else fp32. From bf16, fp32. Stale updates
    need the adapter itself in fp32: a restart keeps a bf16 adapter under bf16,
    so that fix is fp32 (fp32 master weights).
    """
    current = trainer.precision_name
    if current == "fp32":
        return None
    if keep_adapter_fp32 or current == "bf16":
        return "fp32"
    return "bf16" if bf16_usable(trainer.capabilities) else "fp32"


def bf16_usable(capabilities) -> bool:
    support = capabilities.support.get("bf16")
    return support == "native" or (capabilities.device == "cpu" and support == "emulated")


def checkpoint_at_or_before(trainer, step: int | None) -> int | None:
    """The newest complete checkpoint at or before `step` (the newest of all when `step` is None)."""
    for info in ckpt.list_complete(trainer.run_dir.checkpoints):
        if step is None or info.step <= step:
            return info.step
    return None


def lowered_learning_rate(trainer, factor: float) -> float:
    return float(f"{trainer.learning_rate * factor:.3g}")


def lower_lr_fix(trainer, factor: float, *, at_or_before: int | None) -> tuple[int | None, float, dict]:
    """lower_lr's restart arguments: the lowered rate, from the newest checkpoint at or before a step.

    Returns (that checkpoint's step or None, the new rate, the arguments).
    """
    return lower_lr_to(trainer, lowered_learning_rate(trainer, factor), at_or_before=at_or_before)


def lower_lr_to(trainer, new_lr: float, *, at_or_before: int | None) -> tuple[int | None, float, dict]:
    """As lower_lr_fix, with the new rate given (computed from what the monitor measured)."""
    start = checkpoint_at_or_before(trainer, at_or_before)
    return start, new_lr, {"learning_rate": new_lr, **({"from_step": start} if start is not None else {})}
