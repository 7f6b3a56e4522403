"""The model-family plug-in point: the registry picks a family by model_type, and the loop trains on its batches.

A family here is a real subclass of the text family (the only one that ships in
this module's registry); the training runs through the real trainer on the
built-in tiny model.
"""

from __future__ import annotations

import json

import torch

from helpers import make_config, ready_trainer
from loratui.model import families
from loratui.model.families.text import TextFamily
from loratui.model.loading import resolve_model_path


class PositionsFamily(TextFamily):
    """Text batches plus explicit position_ids, as a packing family adds them."""

    name = "text with positions"
    model_types = ("positions-test",)

    def batches(self, examples, processor, **where):
        stream = super().batches(examples, processor, **where)
        plain = stream.next_batch

        def with_positions() -> dict:
            batch = plain()
            length = batch["input_ids"].shape[1]
            return {**batch, "position_ids": torch.arange(length).expand(len(batch["input_ids"]), length).clone()}

        stream.next_batch = with_positions
        return stream


def model_dir(tmp_path, model_type: str | None):
    path = tmp_path / f"model-{model_type}"
    path.mkdir()
    if model_type is not None:
        (path / "config.json").write_text(json.dumps({"model_type": model_type}))
    return str(path)


def test_the_registry_picks_by_model_type_and_trains_anything_else_as_text(tmp_path, monkeypatch):
    monkeypatch.setitem(families._BY_MODEL_TYPE, "positions-test", PositionsFamily)
    assert type(families.family_for(model_dir(tmp_path, "positions-test"))) is PositionsFamily
    assert type(families.family_for(model_dir(tmp_path, "gpt2"))) is TextFamily  # not registered: text
    assert type(families.family_for(model_dir(tmp_path, None))) is TextFamily  # no config.json to read
    assert type(families.family_for(resolve_model_path("builtin:tiny-llama"))) is TextFamily
    text = TextFamily()
    assert text.part_of("base_model.model.model.layers.0.self_attn.q_proj") == "language_model"
    assert text.supports_packing  # data.packing (data/packing.py)


def test_the_loop_hands_the_familys_batch_to_the_model_untouched(tmp_path, monkeypatch):
    monkeypatch.setitem(families._BY_MODEL_TYPE, "llama", PositionsFamily)  # the built-in model's type
    # Padded batches (data.packing off): the family's own position_ids are what this test follows.
    trainer = ready_trainer(make_config(tmp_path, ["train.precision=fp32", "train.max_steps=2", "train.batch_size=2",
                                                   "checkpoint.every_steps=100", "data.packing=false",
                                                   f"run.output_dir=\"{tmp_path}\""]))
    try:
        assert type(trainer.family) is PositionsFamily
        seen = []
        base = trainer.unwrapped_model.get_base_model()
        hook = base.register_forward_pre_hook(lambda _m, _args, kwargs: seen.append(kwargs.get("position_ids")),
                                              with_kwargs=True)
        figures = trainer.train_step()
        hook.remove()
        assert len(seen) == 1 and seen[0] is not None and seen[0].shape == (2, seen[0].shape[1])
        assert figures.tokens > 0
    finally:
        trainer.cleanup()
