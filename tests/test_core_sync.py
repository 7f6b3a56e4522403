"""At most one host sync per optimizer step: a step's figures cross to the host in one transfer.

On CPU nothing waits for a device, so the test counts what would on CUDA: every read of a
device tensor's value on the host (`.item()`, `.tolist()`, `float()`, `int()`, `bool()`, an
index, `.cpu()`, `.numpy()`) made by loratui's own code, directly or through a torch helper it
calls (`scaler.get_scale()` reads with `.item()`). A step's window runs from the start of one
`train_step` to the start of the next: the step itself, its event, and the monitor's per-step
work. Reads inside libraries that loratui calls for other work (the model's forward, the
optimizer's host-side step counters) are theirs, not the trainer's.

The data loader builds each batch in host memory, where reading it syncs nothing: the test
gives the trainer its batches as `HostTensor`s, which stay host tensors until the trainer
moves them to the device (`.to(device)`), as on CUDA.

transformers' own reads are counted apart (issue 18): building the SDPA mask from a 2D
padding mask reads it on the host (`_ignore_causal_mask_sdpa` asks whether any token is
padding, then whether the padding is only at the end) once or twice per micro-batch, a
sync outside loratui's one per step. Packed batches (data.packing, the default) bring
their own 4D mask, which transformers takes as it is.
"""

import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import transformers

import loratui
from helpers import make_config, ready_monitored_trainer, ready_trainer
from loratui.data.packing import PackedBatch

HOST_READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "cpu", "numpy")
TORCH_DIR = str(Path(torch.__file__).parent)
LORATUI_DIR = str(Path(loratui.__file__).parent)
MASKING_FILE = str(Path(transformers.__file__).parent / "masking_utils.py")


class HostTensor(torch.Tensor):
    """A batch tensor still in host memory; `.to(device)` gives an ordinary (device) tensor."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.Tensor.to:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **(kwargs or {})).as_subclass(torch.Tensor)
        return super().__torch_function__(func, types, args, kwargs)


def reader() -> tuple[str, str] | None:
    """("loratui" or "mask", 'file:line') of the code behind a read (through torch's own frames), else None."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(TORCH_DIR):
        frame = frame.f_back
    if frame is None:
        return None
    if frame.f_code.co_filename == MASKING_FILE:
        return "mask", f"masking_utils.py:{frame.f_lineno} ({frame.f_code.co_name})"
    if frame.f_code.co_filename.startswith(LORATUI_DIR):
        return "loratui", f"{Path(frame.f_code.co_filename).relative_to(LORATUI_DIR)}:{frame.f_lineno}"
    return None


class HostReadCounter:
    """The host reads of device tensors by loratui code, one list of call sites per step (and transformers' mask's)."""

    def __init__(self, monkeypatch):
        self.steps: list[list[str]] = []
        self.mask_steps: list[list[str]] = []
        self._quiet = False  # inside a counted read (int() may call item()) or the data loader
        for name in HOST_READS:
            monkeypatch.setattr(torch.Tensor, name, self._counted(name, getattr(torch.Tensor, name)))

    def _counted(self, name, read):
        def counted_read(tensor, *args, **kwargs):
            if self.steps and not self._quiet and not isinstance(tensor, HostTensor):
                found = reader()
                if found is not None:
                    (self.steps if found[0] == "loratui" else self.mask_steps)[-1].append(f"{name} at {found[1]}")
            with self.quiet():
                return read(tensor, *args, **kwargs)

        return counted_read

    @contextmanager
    def quiet(self):
        outer, self._quiet = self._quiet, True
        try:
            yield
        finally:
            self._quiet = outer

    def watch(self, trainer, monkeypatch) -> None:
        """Open a new step window at each train_step; batches come from host memory."""
        train_step, next_batch = trainer.train_step, trainer.stream.next_batch

        def counted_train_step():
            self.steps.append([])
            self.mask_steps.append([])
            return train_step()

        def host_batch():
            with self.quiet():
                batch = next_batch()
            tensors = {name: tensor.as_subclass(HostTensor) for name, tensor in batch.items()}
            return PackedBatch(tensors, batch.real_tokens) if isinstance(batch, PackedBatch) else tensors

        monkeypatch.setattr(trainer, "train_step", counted_train_step)
        monkeypatch.setattr(trainer.stream, "next_batch", host_batch)


STEPS = ["train.max_steps=4", "train.batch_size=2", "train.warmup_steps=0", "checkpoint.every_steps=100",
         # The monitor probes step 1 only: steps 2 and 3 show its per-step work alone.
         "monitor.probe_first_steps=1", "monitor.probe_every=100"]


def fit_counting_reads(trainer, monkeypatch) -> HostReadCounter:
    """Train the ready trainer to its end while counting every host read, step by step."""
    reads = HostReadCounter(monkeypatch)
    reads.watch(trainer, monkeypatch)
    try:
        assert trainer.fit()[0] == "completed"
    finally:
        trainer.bus.close()
        trainer.cleanup()
    return reads


@pytest.mark.parametrize("monitored", [False, True], ids=["monitor_off", "monitor_on"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_one_host_read_per_step(tmp_path, monkeypatch, precision, monitored):
    config = make_config(tmp_path, STEPS + [f"train.precision={precision}", f"run.output_dir=\"{tmp_path}\""])
    trainer = (ready_monitored_trainer if monitored else ready_trainer)(config)
    assert (trainer.precision.scaler is not None) == (precision == "fp16")  # a real GradScaler in fp16
    reads = fit_counting_reads(trainer, monkeypatch)
    # Four windows: steps 1-3 end where the next step starts; step 4's also holds the final checkpoint.
    assert len(reads.steps) == 4
    for step, sites in enumerate(reads.steps[1:3], start=2):
        assert len(sites) == 1, f"step {step} read the device {len(sites)} times: {sites}"
    if monitored and precision == "fp16":
        # The counter sees reads made through torch helpers: the probe on step 1 reads the loss
        # scale with scaler.get_scale() (fine at the probe cadence, not on every step).
        assert any(site.startswith("item at monitor/") for site in reads.steps[0]), reads.steps[0]


@pytest.mark.parametrize("packing", [True, False], ids=["packed", "padded"])
def test_packed_batches_take_no_host_read_in_the_attention_mask(tmp_path, monkeypatch, packing):
    """Per micro-batch: one or two host reads in transformers' SDPA mask for padded batches, none for packed ones."""
    config = make_config(tmp_path, STEPS + ["train.precision=fp32", "train.grad_accum=2",
                                            f"data.packing={str(packing).lower()}", f"run.output_dir=\"{tmp_path}\""])
    trainer = ready_trainer(config)
    reads = fit_counting_reads(trainer, monkeypatch)
    assert all(len(sites) == 1 for sites in reads.steps[1:3]), reads.steps  # loratui's own: one a step either way
    for sites in reads.mask_steps:
        if packing:
            assert sites == [], sites
        else:  # two micro-batches a step: one read each, a second where the batch holds padding
            assert len(sites) >= 2 and all("_ignore_causal_mask_sdpa" in site for site in sites), sites
