"""The step's count of non-finite gradient values (trainer.nonfinite_count) against isfinite, in every dtype."""

import pytest
import torch

from loratui.train.trainer import nonfinite_count


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_counts_inf_and_nan_exactly_and_nothing_else(dtype):
    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(37, 11, generator=generator).to(dtype) * 1e3 for _ in range(9)]
    grads[0][0, :5] = float("inf")
    grads[4][3, 3] = float("-inf")
    grads[8][-1, :] = float("nan")
    grads[2][1, 1] = torch.finfo(dtype).max  # the largest finite value stays finite
    grads[6][2, 2] = torch.finfo(dtype).tiny / 2  # a subnormal too
    expected = sum(int((~torch.isfinite(g)).sum()) for g in grads)
    assert expected == 5 + 1 + 11
    count = nonfinite_count(grads)
    assert count.dtype == torch.float32 and int(count) == expected


def test_thousands_of_non_finite_values_in_half_precision_are_counted_exactly():
    grads = [torch.full((3000,), float("nan"), dtype=torch.bfloat16), torch.zeros(10, dtype=torch.bfloat16)]
    assert int(nonfinite_count(grads)) == 3000  # bf16 itself holds 3000 only to a step of 16


def test_no_gradients_count_zero():
    assert int(nonfinite_count([])) == 0
