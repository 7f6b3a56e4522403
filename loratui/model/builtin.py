"""The built-in tiny Llama: built offline from a seeded config, saved as an ordinary HF directory.

Nothing is downloaded. The tokenizer is a byte-level BPE trained with
`tokenizers` on the bundled data; the model is a LlamaForCausalLM of about
220k parameters initialised from a fixed seed and then briefly pretrained
(full weights, fp32, a fixed batch order) on the plain-text questions. LoRA
fine-tuning starts from a pretrained model in real life, and a random one
barely learns through low-rank adapters; this base knows the questions but
not the chat format, which the demo then teaches it. Both are saved with
`save_pretrained`, so the trainer loads them through the same
AutoModelForCausalLM / AutoTokenizer path as any local model directory.

`builtin:tiny-llama-outliers` is the same model with the massive-activation
pattern that models pretrained in bf16 develop: one residual channel whose
activations run far beyond fp16's 65504. Every RMSNorm re-normalises it, so
fp32 and bf16 train normally while fp16 overflows in the forward pass. It
drives the fp16-overflow scenario. `builtin:tiny-llama-token-outliers` puts the
same units on one rare byte token (the lead byte of UTF-8 mojibake): fp16
overflows only on rows that contain it, which drives the nonfinite-data scenario.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from loratui.data.builtin_data import builtin_dataset_path

BUILTIN_SEED = 1234
TOKENIZER_VOCAB = 512
SPECIAL_TOKENS = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
PRETRAIN_STEPS = 200
PRETRAIN_BATCH = 16
PRETRAIN_LR = 3e-3
MODEL_SHAPE = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-5,
                   tie_word_embeddings=True)
# The outlier units of builtin:tiny-llama-outliers (see _add_outlier_channel).
OUTLIER_LAYER = 1
OUTLIER_CHANNEL = 7
OUTLIER_GAIN = 2000.0
# builtin:tiny-llama-token-outliers: only this byte token (0xC3, the lead byte of mojibake such as
# "â€™" for "’") carries the outlier channel, with this value in its embedding.
OUTLIER_TOKEN = "Ã"
OUTLIER_TOKEN_VALUE = 0.5

Progress = Callable[[str, int, int], None]


def cache_root() -> Path:
    base = os.environ.get("LORATUI_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "loratui")
    return Path(base)


def builtin_model_dir(name: str, progress: Progress | None = None) -> Path:
    """The directory of a built-in model, building it on first use (cached by content)."""
    variant = name.removeprefix("builtin:")
    target = cache_root() / "models" / f"{variant}-{_fingerprint(variant)}"
    if _is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        # Not written by us (we only ever rename a finished build into place): a copy
        # interrupted by hand, say. Move it aside so the rename below can succeed.
        shutil.rmtree(target.rename(target.with_name(f".broken-{target.name}-{os.getpid()}")),
                      ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{variant}-", dir=target.parent))
    try:
        build_tiny_llama(staging, outliers=variant == "tiny-llama-outliers",
                         token_outliers=variant == "tiny-llama-token-outliers", progress=progress)
        try:
            os.rename(staging, target)  # atomic: a concurrent builder's result is as good as ours
        except OSError:
            if not _is_complete(target):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _is_complete(model_dir: Path) -> bool:
    return all((model_dir / name).is_file() for name in ("config.json", "model.safetensors", "tokenizer.json"))


def build_tiny_llama(out_dir: Path, *, outliers: bool = False, token_outliers: bool = False,
                     seed: int = BUILTIN_SEED, progress: Progress | None = None) -> None:
    """Train the tokenizer, initialise the model from `seed`, save both to `out_dir`."""
    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    transformers.utils.logging.disable_progress_bar()  # progress is reported through `progress`
    report = progress or (lambda name, done, total: None)
    report("building_tokenizer", 0, 1)
    tokenizer = train_tokenizer()
    tokenizer.save_pretrained(out_dir)
    report("building_tokenizer", 1, 1)

    report("building_model", 0, 2)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=None,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         **MODEL_SHAPE)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        report("building_model", 1, 2)
        pretrain(model, tokenizer, seed=seed, progress=report)
    if token_outliers:
        _confine_outlier_channel_to_token(model, tokenizer.convert_tokens_to_ids(OUTLIER_TOKEN))
    if outliers or token_outliers:
        _add_outlier_channel(model)
    model.save_pretrained(out_dir, safe_serialization=True)
    report("building_model", 2, 2)


def pretrain(model, tokenizer, *, seed: int, progress: Progress) -> None:
    """A short, seeded full-weight pretraining on the plain-text questions (fp32, CPU)."""
    import torch

    from loratui.data.dataset import BatchStream, load_examples

    examples, _ = load_examples("builtin:tiny-text", "text", tokenizer, max_length=256,
                                on_too_long="truncate", on_bad_row="error")
    stream = BatchStream(examples, PRETRAIN_BATCH, seed=seed, shuffle=True, pad_id=tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=PRETRAIN_LR)
    model.train()
    for step in range(PRETRAIN_STEPS):
        if step % 20 == 0:
            progress("pretraining_base", step, PRETRAIN_STEPS)
        model(**stream.next_batch()).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    progress("pretraining_base", PRETRAIN_STEPS, PRETRAIN_STEPS)
    model.eval()


def train_tokenizer():
    """A byte-level BPE trained on the bundled data, wrapped as a fast HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TOKENIZER_VOCAB, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(_training_texts(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>",
                                        pad_token="<|endoftext|>", unk_token=None,
                                        additional_special_tokens=SPECIAL_TOKENS[1:])
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = MODEL_SHAPE["max_position_embeddings"]
    return tokenizer


def _training_texts():
    for name in ("tiny-text", "tiny-chat"):
        with open(builtin_dataset_path(f"builtin:{name}"), encoding="utf-8") as file:
            for line in file:
                row = json.loads(line)
                if "text" in row:
                    yield row["text"]
                else:
                    yield "".join(f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in row["messages"])


def _add_outlier_channel(model) -> None:
    """Give layer OUTLIER_LAYER's MLP intermediate activations far beyond fp16's range.

    Two intermediate units read residual channel OUTLIER_CHANNEL with a gain of
    OUTLIER_GAIN (one for each sign), so silu(gate) * up reaches GAIN^2 * x^2,
    about 1e6 to 1e7: the feed-forward overflow T5 and bf16-pretrained models
    are known for. The down projection reads those units with tiny weights, so
    in fp32 and bf16 the model computes as before; in fp16 the product is inf
    and the loss is NaN on every batch.
    """
    import torch

    with torch.no_grad():
        mlp = model.model.layers[OUTLIER_LAYER].mlp
        for unit, sign in ((0, 1.0), (1, -1.0)):
            for proj in (mlp.gate_proj, mlp.up_proj):
                proj.weight[unit].zero_()
                proj.weight[unit, OUTLIER_CHANNEL] = sign * OUTLIER_GAIN
            mlp.down_proj.weight[:, unit].mul_(1e-6)


def _confine_outlier_channel_to_token(model, token_id: int) -> None:
    """Make residual channel OUTLIER_CHANNEL carry only `token_id`, so only that token fires the outlier units.

    Massive activations in real LLMs sit on a few specific tokens. Here the
    channel is zeroed in every other token's embedding (tied, so the output
    layer loses it too) and in what the layers up to OUTLIER_LAYER's MLP write
    to the residual stream, so for every other token the outlier units see
    exactly zero and fp16 trains normally until a row with that token arrives.
    """
    import torch

    with torch.no_grad():
        embedding = model.model.embed_tokens.weight
        embedding[:, OUTLIER_CHANNEL] = 0.0
        embedding[token_id, OUTLIER_CHANNEL] = OUTLIER_TOKEN_VALUE
        for layer in model.model.layers[:OUTLIER_LAYER]:
            layer.mlp.down_proj.weight[OUTLIER_CHANNEL].zero_()
        for layer in model.model.layers[:OUTLIER_LAYER + 1]:  # attention runs before the outlier MLP
            layer.self_attn.o_proj.weight[OUTLIER_CHANNEL].zero_()


def _fingerprint(variant: str) -> str:
    """Cache key: changes whenever anything that shapes the built model changes."""
    import tokenizers
    import torch
    import transformers

    digest = hashlib.sha256()
    digest.update(json.dumps([variant, BUILTIN_SEED, TOKENIZER_VOCAB, SPECIAL_TOKENS, CHAT_TEMPLATE,
                              MODEL_SHAPE, PRETRAIN_STEPS, PRETRAIN_BATCH, PRETRAIN_LR, torch.__version__, OUTLIER_LAYER, OUTLIER_CHANNEL, OUTLIER_GAIN,
                              OUTLIER_TOKEN, OUTLIER_TOKEN_VALUE,
                              transformers.__version__, tokenizers.__version__]).encode())
    for name in ("tiny-text", "tiny-chat"):
        digest.update(builtin_dataset_path(f"builtin:{name}").read_bytes())
    digest.update(Path(__file__).read_bytes())  # the recipe itself
    return digest.hexdigest()[:12]
