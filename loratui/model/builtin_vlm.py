"""The built-in tiny vision-language models, built offline from seeded configs.

- `builtin:tiny-vlm`: LLaVA's layout (`LlavaForConditionalGeneration`): a SigLIP
  vision tower, a two-layer projector and a small Llama; one `<image>` token per
  vision patch, pixel values stacked (B, 3, H, W).
- `builtin:tiny-qwen2-vl`: Qwen2-VL's layout (`Qwen2VLForConditionalGeneration`):
  its own vision tower and merger, patches of every image concatenated across the
  batch with `image_grid_thw`, multimodal rope; `<|vision_start|><|image_pad|>...`.
- `builtin:tiny-vlm-outliers`: the built tiny-vlm with the SigLIP-family outlier
  units that put activations past fp16's 65504 added to its vision tower (see
  _add_vision_outliers): fp32 and bf16 train normally, fp16 overflows in the tower.

Like the text builtin (builtin.py), each is initialised from a fixed seed and its
language model pretrained briefly (a random lm_head caps a tiny model's logits and
the loss stalls). The base is image-blind by design (see pretrain): it knows its
language, the chat format, every answer word and how to answer from a description
in words, but its vision tower and projector are untrained and it has only ever
seen a plain grey picture. So fine-tuning (LoRA on the language model, the
projector in full) has to learn to look, and what it learns shows in the loss: on
the vlm-healthy demo the colour answer goes from a guess among four (ln 4) to
near certain, and the mean loss falls by more than half. A base that already read
part of each picture would leave less to learn (an earlier design, pretrained to
look for shape, count and side, fell by a quarter). Saved with `save_pretrained`
beside their tokenizer and image processor, so they load through the same auto
classes as any local model directory.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from loratui.data.builtin_shapes import (COLOUR_QUESTION, COLOURS, COUNTS, FOLLOW_UPS, IMAGE_SIZE, KINDS, SIDES,
                                         all_answers, all_questions)
from loratui.model.builtin import CHAT_TEMPLATE, Progress, cache_root

VLM_SEED = 4321
VLM_BUILTINS = ("tiny-vlm", "tiny-vlm-outliers", "tiny-qwen2-vl")
TOKENIZER_VOCAB = 400
CHAT_TOKENS = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
LLAVA_IMAGE_TOKEN = "<image>"
QWEN_VISION_TOKENS = ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"]
PATCH_SIZE = 14
TEXT_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5)
SIGLIP_SHAPE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, vision_use_head=False)
QWEN_VISION_SHAPE = dict(depth=2, embed_dim=32, num_heads=2, mlp_ratio=2, patch_size=PATCH_SIZE,
                         spatial_merge_size=2, temporal_patch_size=2, in_chans=3)
# Qwen2-VL's multimodal rope splits head_dim / 2 frequencies between time, height and width.
QWEN_MROPE_SECTION = [2, 3, 3]
QWEN_MAX_PIXELS = 112 * 112
PRETRAIN_STEPS = 400
PRETRAIN_ROWS = 2048
PRETRAIN_BATCH = 16
PRETRAIN_LR = 3e-3
# The outlier units of builtin:tiny-vlm-outliers' vision tower (see _add_vision_outliers).
OUTLIER_LAYER = 0
OUTLIER_CHANNEL = 3
OUTLIER_NORM_GAIN = 50.0
OUTLIER_GAIN = 2000.0


def is_builtin_vlm(name: str) -> bool:
    return name.removeprefix("builtin:") in VLM_BUILTINS


def builtin_vlm_dir(name: str, progress: Progress | None = None) -> Path:
    """The directory of a built-in VLM, building it on first use (cached by content)."""
    from loratui.data.cache import built_once

    variant = name.removeprefix("builtin:")
    return built_once(cache_root() / "models" / f"{variant}-{_fingerprint(variant)}",
                      lambda staging: build_tiny_vlm(staging, variant, progress=progress))


def build_tiny_vlm(out_dir: Path, variant: str, *, seed: int = VLM_SEED, progress: Progress | None = None) -> None:
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    report = progress or (lambda name, done, total: None)
    if variant == "tiny-vlm-outliers":
        _build_outliers(out_dir, progress)
        return
    report("building_tokenizer", 0, 1)
    qwen = variant == "tiny-qwen2-vl"
    tokenizer = train_vlm_tokenizer(QWEN_VISION_TOKENS if qwen else [LLAVA_IMAGE_TOKEN])
    tokenizer.save_pretrained(out_dir)
    report("building_tokenizer", 1, 1)
    report("building_model", 0, 2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _qwen2_vl(tokenizer) if qwen else _llava(tokenizer)
        report("building_model", 1, 2)
        pretrain(model, tokenizer, _image_processor(qwen), seed=seed, progress=report)
    model.save_pretrained(out_dir, safe_serialization=True)
    _image_processor(qwen).save_pretrained(out_dir)
    report("building_model", 2, 2)


def train_vlm_tokenizer(image_tokens: list[str]):
    """A byte-level BPE over the shapes conversations; every answer word is one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = CHAT_TOKENS + image_tokens
    trainer = trainers.BpeTrainer(vocab_size=TOKENIZER_VOCAB, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    texts = [*all_questions(), *all_answers(), *all_descriptions()] * 20
    bpe.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                        unk_token=None, additional_special_tokens=specials[1:])
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = TEXT_SHAPE["max_position_embeddings"]
    several = [word for word in all_answers() if len(tokenizer(word, add_special_tokens=False)["input_ids"]) != 1]
    if several:  # the colour accuracy test reads one answer token
        raise RuntimeError(f"the built-in VLM tokenizer splits answer words {several}")
    return tokenizer


def _text_config(tokenizer) -> dict:
    return dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                bos_token_id=None, tie_word_embeddings=True, **TEXT_SHAPE)


def _llava(tokenizer):
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, SiglipVisionConfig

    config = LlavaConfig(vision_config=SiglipVisionConfig(**SIGLIP_SHAPE),
                         text_config=LlamaConfig(**_text_config(tokenizer)),
                         image_token_id=tokenizer.convert_tokens_to_ids(LLAVA_IMAGE_TOKEN),
                         # SigLIP has no CLS token: every patch is an image token.
                         vision_feature_select_strategy="full", vision_feature_layer=-1,
                         tie_word_embeddings=True)
    return LlavaForConditionalGeneration(config)


def _qwen2_vl(tokenizer):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    ids = tokenizer.convert_tokens_to_ids
    text = _text_config(tokenizer)
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": QWEN_MROPE_SECTION}
    config = Qwen2VLConfig(text_config=text,
                           vision_config=dict(hidden_size=TEXT_SHAPE["hidden_size"], **QWEN_VISION_SHAPE),
                           image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                           vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
                           tie_word_embeddings=True)
    return Qwen2VLForConditionalGeneration(config)


def _image_processor(qwen: bool):
    # The PIL-based processors: the default ones import torchvision, which fails with this torch.
    if qwen:
        from transformers import Qwen2VLImageProcessorPil

        return Qwen2VLImageProcessorPil(min_pixels=IMAGE_SIZE * IMAGE_SIZE, max_pixels=QWEN_MAX_PIXELS,
                                        patch_size=PATCH_SIZE, merge_size=2, temporal_patch_size=2)
    from transformers import SiglipImageProcessorPil

    return SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                   image_mean=[0.5] * 3, image_std=[0.5] * 3)


def pretrain(model, tokenizer, image_processor, *, seed: int, progress: Progress) -> None:
    """Seeded pretraining of the language model alone, over the plain grey picture.

    The base learns its language: the chat format, where a picture's tokens sit, every
    answer word, and to answer from what a conversation says. Half the conversations
    describe the picture in words ("Two red circles on the left."), so their answers can
    be read from the text; the other half say nothing, and their answers can only be
    guessed at their frequencies. The picture is always the same grey one, and the
    vision tower and projector keep their seeded weights: the base has never seen a
    picture with anything in it. Fine-tuning has to teach it to look, to read from the
    pixels what a description would have said.
    """
    import random

    import torch

    from loratui.data.vision_rows import VisionExample, VisionRow
    from loratui.data.vision_stream import VisionBatchStream
    from loratui.model.families.vision import VisionProcessor

    family = _family_of(model)
    processor = VisionProcessor(tokenizer, image_processor, model.config)
    blank = _blank_picture()
    examples = []
    for messages in pretraining_conversations(random.Random(seed), PRETRAIN_ROWS):
        row = VisionRow(messages, [blank], [(IMAGE_SIZE, IMAGE_SIZE)])
        examples.append(VisionExample(*family.encode(processor, row), row.images, row.sizes))
    stream = VisionBatchStream(examples, PRETRAIN_BATCH, collate=lambda rows, images: family.collate(
        processor, rows, images), seed=seed, shuffle=True, pad_id=tokenizer.pad_token_id)
    model.requires_grad_(False)
    language_model = model.get_submodule(family.parts["language_model"])
    language_model.requires_grad_(True)
    optimizer = torch.optim.AdamW(language_model.parameters(), lr=PRETRAIN_LR)
    model.train()
    for step in range(PRETRAIN_STEPS):
        if step % 20 == 0:
            progress("pretraining_base", step, PRETRAIN_STEPS)
        model(**stream.next_batch()).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    stream.close()
    progress("pretraining_base", PRETRAIN_STEPS, PRETRAIN_STEPS)
    model.requires_grad_(True)
    model.eval()


def pretraining_conversations(rng, count: int) -> list[list[dict]]:
    """tiny-shapes conversations about pictures sampled from `rng` (never drawn); every other one opens with
    the picture's description, so its answers are in the text."""
    conversations = []
    for index in range(count):
        colour, kind = rng.choice(list(COLOURS)), rng.choice(KINDS)
        number, side = rng.randrange(1, 4), rng.choice(SIDES)
        follow_up = rng.choice(list(FOLLOW_UPS))
        answer = {"shape": kind, "count": COUNTS[number - 1], "side": side}[follow_up]
        said = describe(colour, kind, number, side) + " " if index % 2 == 0 else ""
        conversations.append([{"role": "user", "content": f"<image>{said}{COLOUR_QUESTION}"},
                              {"role": "assistant", "content": colour},
                              {"role": "user", "content": FOLLOW_UPS[follow_up]},
                              {"role": "assistant", "content": answer}])
    return conversations


def describe(colour: str, kind: str, number: int, side: str) -> str:
    """What a picture of tiny-shapes shows, in words: "Two red circles on the left."."""
    plural = "s" if number > 1 else ""
    return f"{COUNTS[number - 1].capitalize()} {colour} {kind}{plural} on the {side}."


def all_descriptions() -> list[str]:
    """Every description pretraining can say (the tokenizer learns their words)."""
    return [describe(colour, kind, number, side) for colour in COLOURS for kind in KINDS
            for number in range(1, len(COUNTS) + 1) for side in SIDES]


def _blank_picture() -> Path:
    """The plain grey picture of `builtin:tiny-shapes-blank`."""
    from loratui.data.builtin_shapes import shapes_dataset_path

    blank = shapes_dataset_path("builtin:tiny-shapes-blank", "messages")
    with open(blank, encoding="utf-8") as lines:
        return blank.parent / json.loads(lines.readline())["images"][0]


def _build_outliers(out_dir: Path, progress: Progress | None) -> None:
    """tiny-vlm-outliers: the built tiny-vlm (built first if need be) with its outlier units added."""
    import shutil

    import torch
    from transformers import LlavaForConditionalGeneration

    base = builtin_vlm_dir("builtin:tiny-vlm", progress)
    shutil.copytree(base, out_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("complete"))
    model = LlavaForConditionalGeneration.from_pretrained(base, dtype=torch.float32)
    _add_vision_outliers(model)
    model.save_pretrained(out_dir, safe_serialization=True)


def _family_of(model):
    from loratui.model.families.llava import LlavaFamily
    from loratui.model.families.qwen2_vl import Qwen2VLFamily

    return Qwen2VLFamily() if model.config.model_type == "qwen2_vl" else LlavaFamily()


def _add_vision_outliers(model) -> None:
    """Give two SigLIP MLP units activations far past fp16's range, as SigLIP-family towers have.

    Layer OUTLIER_LAYER's second LayerNorm scales residual channel OUTLIER_CHANNEL up by
    OUTLIER_NORM_GAIN (the other fc1 units read it scaled down as much, so they compute
    as before) and two fc1 units read it with a gain of +-OUTLIER_GAIN: one of them
    reaches about 1e5 on most patches, the outlier features of vision towers (vllm
    40290, unsloth-zoo 931). Every weight stays inside fp16's range; fc2 ignores the two
    units, so fp32 and bf16 compute what they did before, while in fp16 the units are
    inf and the image features NaN.
    """
    import torch

    with torch.no_grad():
        layer = model.model.vision_tower.encoder.layers[OUTLIER_LAYER]
        layer.layer_norm2.weight[OUTLIER_CHANNEL] *= OUTLIER_NORM_GAIN
        layer.layer_norm2.bias[OUTLIER_CHANNEL] *= OUTLIER_NORM_GAIN
        fc1, fc2 = layer.mlp.fc1, layer.mlp.fc2
        fc1.weight[:, OUTLIER_CHANNEL] /= OUTLIER_NORM_GAIN
        for unit, sign in ((0, 1.0), (1, -1.0)):
            fc1.weight[unit].zero_()
            fc1.weight[unit, OUTLIER_CHANNEL] = sign * OUTLIER_GAIN
            fc1.bias[unit] = 0.0
            fc2.weight[:, unit] = 0.0


def _fingerprint(variant: str) -> str:
    """Cache key: changes whenever anything that shapes the built model changes."""
    import tokenizers
    import torch
    import transformers

    digest = hashlib.sha256()
    digest.update(json.dumps([variant, torch.__version__, transformers.__version__,
                              tokenizers.__version__]).encode())
    from loratui.data import builtin_shapes

    digest.update(Path(builtin_shapes.__file__).read_bytes())  # the conversations' words
    digest.update(_blank_picture().read_bytes())  # the picture pretraining sees
    digest.update(Path(__file__).read_bytes())  # the recipe itself
    return digest.hexdigest()[:12]
