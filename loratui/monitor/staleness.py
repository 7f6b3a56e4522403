"""Stale updates: adapter weights the optimizer meant to move but rounding left where they were.

A bf16 weight w has 8 significant bits, so an update smaller than about
|w|·2^-9 rounds away and the weight does not change at all: pure-bf16
training with a small learning rate silently stops learning. The probe copies
the adapter weights before the optimizer step, then compares them after it
with the update AdamW intended, which it reconstructs from its own state
(exp_avg, exp_avg_sq, step, learning rate, weight decay).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from loratui.monitor.parts import worst_share


@dataclass
class StaleFigures:
    share: float  # stale / intended
    stale: int  # elements with an intended update that did not change
    intended: int  # elements the optimizer meant to move
    mean_abs_weight: float
    mean_abs_update: float  # the intended update, on the elements meant to move
    dtype: str
    worst_module: str | None
    worst_module_share: float | None
    parts: dict[str, PartStaleness] = field(default_factory=dict)  # the same figures for each part of the model


@dataclass
class PartStaleness:
    share: float
    worst_module: str | None
    worst_module_share: float | None


class UpdateWatch:
    """`before()` ahead of optimizer.step, `after()` behind it; `figures()` reads the result once."""

    def __init__(self):
        self._before: list | None = None
        self._rows = None
        self._names: list[str] = []
        self._dtype = ""
        self._lrs: dict = {}

    def before(self, optimizer, params) -> None:
        self._before = [param.detach().clone() for param in params]
        # The rate this step uses: the scheduler moves group["lr"] on before after() can read it.
        self._lrs = {id(p): float(group["lr"]) for group in optimizer.param_groups for p in group["params"]}

    def after(self, optimizer, params, names: list[str]) -> bool:
        """Compute the figures on the device; False when the optimizer is not Adam-like (no figures)."""
        import torch

        if self._before is None:
            return False
        settings = {id(p): group for group in optimizer.param_groups for p in group["params"]}
        rows, row_names = [], []
        for param, old, name in zip(params, self._before, names):
            state = optimizer.state.get(param, {})
            if "exp_avg" not in state or "exp_avg_sq" not in state:
                continue
            intended = _adamw_update(state, settings[id(param)], self._lrs[id(param)], old)
            meant = intended != 0
            stale = meant & (param.detach() == old)
            rows.append(torch.stack([stale.sum().float(), meant.sum().float(), old.float().abs().sum(),
                                     torch.tensor(float(old.numel()), device=old.device),
                                     torch.where(meant, intended.abs(), 0).sum()]))
            row_names.append(name)
        self._before = None
        if not rows:
            return False
        self._rows, self._names, self._dtype = torch.stack(rows), row_names, str(params[0].dtype).removeprefix("torch.")
        return True

    def discard(self) -> None:
        self._before = self._rows = None

    def figures(self, part_of=None) -> StaleFigures | None:
        """Read the figures (one transfer); `part_of` (module name -> part) adds each part's."""
        if self._rows is None:
            return None
        table = self._rows.double().tolist()
        self._rows = None
        stale, meant, weight_sum, count, update_sum = (sum(column) for column in zip(*table))
        named = list(zip(self._names, table))
        worst_share, worst_name = _worst(named)
        parts = {}
        if part_of is not None:
            grouped: dict[str, list] = {}
            for name, row in named:
                grouped.setdefault(part_of(name), []).append((name, row))
            for part, rows in grouped.items():
                part_stale, part_meant = sum(row[0] for _, row in rows), sum(row[1] for _, row in rows)
                module_share, module = _worst(rows)
                parts[part] = PartStaleness(part_stale / part_meant if part_meant else 0.0, module, module_share)
        return StaleFigures(share=stale / meant if meant else 0.0, stale=int(stale), intended=int(meant),
                            mean_abs_weight=weight_sum / count if count else 0.0,
                            mean_abs_update=update_sum / meant if meant else 0.0, dtype=self._dtype,
                            worst_module=worst_name, worst_module_share=worst_share, parts=parts)


def _worst(named_rows) -> tuple[float | None, str | None]:
    """(share, module) of the module with the largest share of stale updates (columns 0 and 1: stale, moved)."""
    return worst_share(named_rows, 0, 1)


def _adamw_update(state: dict, group: dict, lr: float, old):
    """The step AdamW meant to take for one parameter, in fp32 (torch.optim.AdamW's formula)."""
    import torch

    step = float(state["step"])
    beta1, beta2 = group["betas"]
    eps, weight_decay = group["eps"], group["weight_decay"]
    second = state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]
    denominator = (second.float() / (1 - beta2 ** step)).sqrt() + eps
    update = lr * (state["exp_avg"].float() / (1 - beta1 ** step)) / denominator
    if weight_decay:
        update = update + lr * weight_decay * old.float()
    return torch.nan_to_num(update, nan=0.0)
