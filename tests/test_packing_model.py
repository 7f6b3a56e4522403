"""Packed batches on the real built-in model: the same logits, loss and gradients as the padded batch.

The model is builtin:tiny-llama as the trainer loads it (transformers 5.25, use_cache off,
LoRA on), with LoRA dropout off so that both layouts compute the same function (dropout
draws its masks per tensor element, so two layouts draw different masks).
"""

import pytest
import torch

from loratui.data.dataset import collate, load_examples
from loratui.data.packing import Packer, attention_span, packing_mask_kind


@pytest.fixture(scope="module")
def mixed_examples():
    from loratui.model.loading import load_tokenizer, resolve_model_path

    tokenizer = load_tokenizer(resolve_model_path("builtin:tiny-llama"), trust_remote_code=False)
    chat, _ = load_examples("builtin:tiny-chat", "messages", tokenizer, max_length=256, on_too_long="truncate",
                            on_bad_row="error")
    # Text rows learn every token, their first included: the label the packed layout must drop.
    text, _ = load_examples("builtin:tiny-text", "text", tokenizer, max_length=256, on_too_long="truncate",
                            on_bad_row="error")
    return chat[:5] + text[:3]


def lora_model(implementation: str):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from loratui.model.loading import resolve_model_path

    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("builtin:tiny-llama"), dtype=torch.float32,
                                                attn_implementation=implementation)
    base.config.use_cache = False
    torch.manual_seed(0)
    # init_lora_weights=False: B is random too, so every LoRA weight has a gradient to compare.
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False, task_type="CAUSAL_LM"))
    return model


def packer_for(model, rows_wanted_short: bool = False):
    # A short attention span gives many short rows per micro-batch, a long one one or two: test both layouts.
    span = 1.0 if rows_wanted_short else 1e9
    return Packer(pad_id=0, mask_kind=packing_mask_kind(model), max_length=1024, attention_span=span)


def per_token_losses(logits, labels):
    """Each supervised token's loss (labels shifted by one, as the model's own loss), in row order."""
    targets = labels[:, 1:]
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), targets, reduction="none",
                                               ignore_index=-100)
    return losses[targets != -100]


def example_token_losses(batch, logits, examples):
    """Per example (keyed by its token ids), its supervised tokens' losses, from either layout."""
    found = {}
    for row in range(batch["input_ids"].shape[0]):
        positions = batch["position_ids"][row].tolist() if "position_ids" in batch else None
        ids = batch["input_ids"][row].tolist()
        starts = [i for i, p in enumerate(positions) if p == 0] if positions else [0]
        for start, end in zip(starts, starts[1:] + [len(ids)]):
            for example in examples:
                n = len(example.input_ids)
                if ids[start:start + n] == example.input_ids and end - start >= n:
                    labels = torch.tensor([[-100] + example.labels[1:]])
                    found[tuple(example.input_ids)] = per_token_losses(logits[row:row + 1, start:start + n], labels)
    return found


@pytest.mark.parametrize("implementation,short_rows", [
    ("sdpa", False), ("sdpa", True), ("eager", True),
    pytest.param("eager", False, marks=pytest.mark.slow),
], ids=["sdpa-long_rows", "sdpa-short_rows", "eager-short_rows", "eager-long_rows"])
def test_packed_batch_computes_what_the_padded_batch_computes(mixed_examples, implementation, short_rows):
    model = lora_model(implementation)
    padded = collate(mixed_examples, 0)
    packed = packer_for(model, short_rows)(mixed_examples)
    assert packed.real_tokens == int(padded["attention_mask"].sum())
    assert packed["input_ids"].shape[0] >= 4 if short_rows else packed["input_ids"].shape[0] <= 2

    padded_out = model(**padded)
    padded_grads = torch.autograd.grad(padded_out.loss, [p for p in model.parameters() if p.requires_grad])
    packed_out = model(**packed)
    packed_grads = torch.autograd.grad(packed_out.loss, [p for p in model.parameters() if p.requires_grad])

    # The loss: the mean over the micro-batch's supervised tokens, the same tokens in both layouts.
    assert abs(packed_out.loss.item() - padded_out.loss.item()) < 1e-5
    assert (padded["labels"][:, 1:] != -100).sum() == (packed["labels"][:, 1:] != -100).sum()
    # Every example's every token, one by one.
    by_padded = example_token_losses(padded, padded_out.logits.detach(), mixed_examples)
    by_packed = example_token_losses(packed, packed_out.logits.detach(), mixed_examples)
    assert by_padded.keys() == by_packed.keys() and len(by_packed) == len({tuple(e.input_ids) for e in mixed_examples})
    for key in by_padded:
        assert torch.allclose(by_packed[key], by_padded[key], atol=1e-5, rtol=0), implementation
    for ours, theirs in zip(packed_grads, padded_grads):
        assert torch.allclose(ours, theirs, atol=1e-6, rtol=1e-4)


def test_packing_is_refused_where_the_mask_would_be_wrong():
    """Only the implementations whose packed rows are checked above are packed; any other pads."""

    class Config:
        _attn_implementation = "flash_attention_2"

    class Model:
        config = Config()

    assert packing_mask_kind(Model()) is None
    model = lora_model("sdpa")
    assert packing_mask_kind(model) == "bool"
    assert attention_span(model.config) > 100
