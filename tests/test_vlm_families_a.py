"""Qwen2.5-VL, Qwen3-VL, Gemma 3 and PaliGemma: each family trains a tiny random model through the real trainer.

Each model is built offline from a seeded config with transformers' own class, next
to a tokenizer trained here on the tiny-shapes text (carrying the family's special
tokens) and the family's PIL image processor, and saved as an ordinary model
directory. The checks: the family expands an image into the same tokens as the
model's own processor class does, the real trainer learns on a fixed batch in fp32,
its parts map names the real modules, and (Gemma 3) the monitor's headroom probe
names a vision-tower module.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from helpers import make_config, steps_of, train_in_process

SEED = 1234
ROWS = 8  # one batch: every step sees the same rows, so the loss must fall
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, max_position_embeddings=512, rms_norm_eps=1e-5)
SIGLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56,
              patch_size=14, vision_use_head=False)
QWEN_VISION_TOKENS = ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"]
# head_dim / 2 rope frequencies split between time, height and width (multimodal rope).
MROPE_SECTION = [2, 3, 3]
GEMMA3_TOKENS = {"boi_token": "<start_of_image>", "image_token": "<image_soft_token>", "eoi_token": "<end_of_image>"}
# Gemma's turn format, trimming each turn's text as Gemma 3's own template does (an image at the start of a turn
# keeps its newlines only if the image sequence is written after the template: the family's order).
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>"
    "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n{{ message['content'] | trim }}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
GEMMA3_IMAGE_TOKENS = 4  # the tower's 4 x 4 patches pooled 2 x 2
PALIGEMMA_IMAGE_TOKENS = 16  # one per patch of the 56 px picture
# Gemma 3's tower ends in a LayerNorm whose gain puts its output past fp16's range, as SigLIP-family towers'
# outlier features do (vllm issue 40290); the projector's RMSNorm rescales it, so fp32 training is unchanged.
LOUD_TOWER_GAIN = 2e4


# ------------------------------------------------------------------ building the tiny models

def shapes_tokenizer(specials: list[str], *, chat_template: str | None = None, **named):
    """A byte-level BPE over the tiny-shapes text; `specials` single tokens, `named` ones also as attributes;
    loratui's built-in chat template unless `chat_template` is given ("" for none)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from loratui.data.builtin_shapes import all_answers, all_questions
    from loratui.model.builtin import CHAT_TEMPLATE

    chat = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=chat + specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([*all_questions(), *all_answers()] * 20, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                        extra_special_tokens=chat[1:] + specials, **named)
    tokenizer.chat_template = (CHAT_TEMPLATE if chat_template is None else chat_template) or None
    return tokenizer


def text_config(tokenizer) -> dict:
    return dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=True, **TEXT)


def qwen_vl(version: str):
    """Qwen2.5-VL, Qwen3-VL or Qwen3-VL-MoE: its own vision tower and merger (and Qwen3-VL's deepstack mergers)."""
    import transformers

    tokenizer = shapes_tokenizer(QWEN_VISION_TOKENS)
    ids = tokenizer.convert_tokens_to_ids
    text = text_config(tokenizer)
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": MROPE_SECTION}
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=TEXT["hidden_size"])
    if version == "2.5":
        config = transformers.Qwen2_5_VLConfig
        model_class = transformers.Qwen2_5_VLForConditionalGeneration
        del text["head_dim"]  # Qwen2.5-VL's text config derives it (hidden_size / heads)
        # Windows of one merged 28 px unit: the 56 px pictures take four, so window attention partitions.
        vision.update(patch_size=14, window_size=28, fullatt_block_indexes=[1])
    else:
        moe = version == "3-moe"
        config = transformers.Qwen3VLMoeConfig if moe else transformers.Qwen3VLConfig
        model_class = transformers.Qwen3VLMoeForConditionalGeneration if moe else \
            transformers.Qwen3VLForConditionalGeneration
        text["rope_parameters"]["mrope_interleaved"] = True
        if moe:  # four experts of which two run per token, in every layer
            text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1)
        vision.update(patch_size=16, num_position_embeddings=16, deepstack_visual_indexes=[0])
    config = config(text_config=text, vision_config=vision, image_token_id=ids("<|image_pad|>"),
                    video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
                    vision_end_token_id=ids("<|vision_end|>"), tie_word_embeddings=True)
    patch = vision["patch_size"]
    # 56 px pictures, resized to multiples of patch x merge within this range, as Qwen's processor does.
    images = transformers.Qwen2VLImageProcessorPil(min_pixels=(2 * patch) ** 2, max_pixels=(8 * patch) ** 2,
                                                   patch_size=patch, merge_size=2, temporal_patch_size=2)
    return tokenizer, model_class(config), images


def gemma3():
    from transformers import (Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil,
                              Gemma3TextConfig, SiglipVisionConfig)

    tokenizer = shapes_tokenizer(["<bos>", "<start_of_turn>", "<end_of_turn>", *GEMMA3_TOKENS.values()],
                                 chat_template=GEMMA_CHAT_TEMPLATE, bos_token="<bos>", **GEMMA3_TOKENS)
    ids = tokenizer.convert_tokens_to_ids
    config = Gemma3Config(text_config=Gemma3TextConfig(**text_config(tokenizer), query_pre_attn_scalar=16,
                                                       sliding_window=64),
                          vision_config=SiglipVisionConfig(**SIGLIP), mm_tokens_per_image=GEMMA3_IMAGE_TOKENS,
                          boi_token_index=ids(GEMMA3_TOKENS["boi_token"]),
                          eoi_token_index=ids(GEMMA3_TOKENS["eoi_token"]),
                          image_token_index=ids(GEMMA3_TOKENS["image_token"]), tie_word_embeddings=True)
    model = Gemma3ForConditionalGeneration(config)
    with torch.no_grad():
        model.model.vision_tower.post_layernorm.weight.fill_(LOUD_TOWER_GAIN)
    images = Gemma3ImageProcessorPil(size={"height": 56, "width": 56}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return tokenizer, model, images


def paligemma():
    """PaliGemma 2's layout: a SigLIP tower, a linear projector and a Gemma 2 language model (sliding-window layers)."""
    from transformers import Gemma2Config, PaliGemmaConfig, PaliGemmaForConditionalGeneration, SiglipImageProcessorPil
    from transformers import SiglipVisionConfig

    # PaliGemma has no chat template: the family renders conversations itself.
    tokenizer = shapes_tokenizer(["<bos>", "<image>"], chat_template="", bos_token="<bos>", image_token="<image>")
    text = Gemma2Config(**text_config(tokenizer), query_pre_attn_scalar=16, sliding_window=64)
    config = PaliGemmaConfig(text_config=text,
                             vision_config=SiglipVisionConfig(**SIGLIP), projection_dim=TEXT["hidden_size"],
                             image_token_index=tokenizer.convert_tokens_to_ids("<image>"), tie_word_embeddings=True)
    images = SiglipImageProcessorPil(size={"height": 56, "width": 56}, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                                     image_seq_length=PALIGEMMA_IMAGE_TOKENS)
    return tokenizer, PaliGemmaForConditionalGeneration(config), images


BUILDERS = {"qwen2_5_vl": lambda: qwen_vl("2.5"), "qwen3_vl": lambda: qwen_vl("3"),
            "qwen3_vl_moe": lambda: qwen_vl("3-moe"), "gemma3": gemma3, "paligemma": paligemma}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The directory of each family's tiny model, built on first use."""
    built = {}

    def build(model_type: str):
        if model_type not in built:
            out = tmp_path_factory.mktemp(model_type)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(SEED)
                tokenizer, model, images = BUILDERS[model_type]()
            tokenizer.save_pretrained(out)
            model.save_pretrained(out, safe_serialization=True)
            images.save_pretrained(out)
            built[model_type] = out
        return built[model_type]

    return build


@pytest.fixture(scope="module")
def shapes_rows(tmp_path_factory):
    """The first ROWS rows of builtin:tiny-shapes (a picture, its colour, a follow-up question), as a user's file."""
    from loratui.data.builtin_shapes import shapes_dataset_path

    source = shapes_dataset_path("builtin:tiny-shapes", "messages")
    out = tmp_path_factory.mktemp("data") / "shapes.jsonl"
    with open(source, encoding="utf-8") as lines:
        rows = [json.loads(next(lines)) for _ in range(ROWS)]
    out.write_text("".join(json.dumps(dict(row, images=[str(source.parent / p) for p in row["images"]])) + "\n"
                           for row in rows))
    return out


def family_and_processor(path):
    from loratui.model.families import family_for

    family = family_for(str(path))
    return family, family.load_processor(str(path), trust_remote_code=False)


# ------------------------------------------------------------------ the checks

FAMILIES = ["qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "gemma3", "paligemma"]


def picture():
    from PIL import Image

    from loratui.data.builtin_shapes import shapes_dataset_path

    return Image.open(shapes_dataset_path("builtin:tiny-shapes", "messages").parent / "images/train-00000.png")


def encoded(family, processor, image, messages):
    from loratui.data.vision_rows import VisionRow

    return family.encode(processor, VisionRow(messages, [None], [image.size]))


QUESTION = [{"role": "user", "content": "<image>What colour are the shapes?"}, {"role": "assistant", "content": "red"}]


@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "gemma3"])
def test_an_image_becomes_the_tokens_the_models_own_processor_gives(model_dir, model_type, monkeypatch):
    """The family's rendering of a conversation with a picture is token for token what the model's processor class
    makes of the same chat text with its image marker, and its image inputs are the processor's."""
    import transformers
    from transformers.processing_utils import ProcessorMixin

    check_class = ProcessorMixin.check_argument_for_proper_class

    def images_and_text_only(self, name, value):
        # Qwen's processors look their video processor's class up in a registry that needs torchvision, which
        # does not load here; pictures never reach the video processor.
        return None if name == "video_processor" else check_class(self, name, value)

    monkeypatch.setattr(ProcessorMixin, "check_argument_for_proper_class", images_and_text_only)

    path = model_dir(model_type)
    family, processor = family_and_processor(path)
    processor_class, marker = {"qwen2_5_vl": (transformers.Qwen2_5_VLProcessor, family.placeholder_text),
                               "qwen3_vl": (transformers.Qwen3VLProcessor, family.placeholder_text),
                               "qwen3_vl_moe": (transformers.Qwen3VLProcessor, family.placeholder_text),
                               "gemma3": (transformers.Gemma3Processor, GEMMA3_TOKENS["boi_token"])}[model_type]
    extra = {"image_seq_length": GEMMA3_IMAGE_TOKENS} if model_type == "gemma3" else {}
    reference = processor_class(image_processor=processor.image_processor, tokenizer=processor.tokenizer, **extra)
    image = picture()
    chat = processor.tokenizer.apply_chat_template(
        [dict(m, content=m["content"].replace("<image>", marker)) for m in QUESTION], tokenize=False)
    expected = reference(text=[chat], images=[image], add_special_tokens=False, return_tensors="pt")

    input_ids, labels = encoded(family, processor, image, QUESTION)
    assert input_ids == expected["input_ids"][0].tolist() + [processor.tokenizer.eos_token_id]
    image_token_id = processor.tokenizer.convert_tokens_to_ids(family.image_token)
    assert input_ids.count(image_token_id) == family.image_tokens(processor, *image.size) > 1
    assert all(label == -100 for token, label in zip(input_ids, labels) if token == image_token_id)
    ours = family.image_inputs(processor, [image], torch.tensor([input_ids]))
    assert torch.equal(ours["pixel_values"], expected["pixel_values"])
    # The processor's marks of the image tokens: multimodal rope (Qwen) or Gemma 3's bidirectional image attention.
    marks = "token_type_ids" if model_type == "gemma3" else "mm_token_type_ids"
    assert torch.equal(ours[marks][0, :-1], expected[marks][0])
    if model_type != "gemma3":
        assert torch.equal(ours["image_grid_thw"], expected["image_grid_thw"])


def test_paligemma_rows_render_as_its_processors_prefix_and_suffix(model_dir):
    """A one-question row is exactly PaliGemma's processor format: the image tokens, <bos>, the prompt and "\\n"
    (token type 0, no labels), then the answer and <eos> (token type 1, the labels); later turns stay causal."""
    import copy

    import transformers

    from loratui.data.vision_rows import VisionExample

    path = model_dir("paligemma")
    family, processor = family_and_processor(path)
    # The processor adds PaliGemma's <loc>/<seg> tokens to the tokenizer it is given: give it a copy.
    reference = transformers.PaliGemmaProcessor(image_processor=processor.image_processor,
                                                tokenizer=copy.deepcopy(processor.tokenizer))
    image = picture()
    expected = reference(text=["<image>What colour are the shapes?"], suffix=["red"], images=[image],
                         return_tensors="pt")
    input_ids, labels = encoded(family, processor, image, QUESTION)
    assert input_ids[:PALIGEMMA_IMAGE_TOKENS + 1] == [reference.image_token_id] * PALIGEMMA_IMAGE_TOKENS + [
        processor.tokenizer.bos_token_id]
    assert input_ids == expected["input_ids"][0].tolist()
    assert labels == expected["labels"][0].tolist()
    batch = family.collate(processor, [VisionExample(input_ids, labels, [None], [image.size])], [image])
    assert torch.equal(batch["token_type_ids"][0], expected["token_type_ids"][0])
    assert torch.equal(batch["pixel_values"], expected["pixel_values"])

    two_turns = QUESTION + [{"role": "user", "content": "How many shapes are there?"},
                            {"role": "assistant", "content": "one"}]
    input_ids, labels = encoded(family, processor, image, two_turns)
    tokenizer = processor.tokenizer
    answers = [token for token, label in zip(input_ids, labels) if label != -100]
    assert answers == tokenizer("red", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] + \
        tokenizer("one", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    types = family.collate(processor, [VisionExample(input_ids, labels, [None], [image.size])], [image])
    prefix = int((types["token_type_ids"][0] == 0).sum())
    assert prefix == int((expected["token_type_ids"][0] == 0).sum())  # the first answer starts the causal part


def test_a_paligemma_directory_without_image_seq_length_is_refused_with_its_key(model_dir, tmp_path):
    """PaliGemma's processor needs image_seq_length (image tokens per picture); so does the family, which says so."""
    import shutil

    from loratui.errors import UserInputError
    from loratui.model.families.paligemma import PaliGemmaFamily

    broken = shutil.copytree(model_dir("paligemma"), tmp_path / "paligemma")
    settings = json.loads((broken / "preprocessor_config.json").read_text())
    del settings["image_seq_length"]
    (broken / "preprocessor_config.json").write_text(json.dumps(settings))
    with pytest.raises(UserInputError, match="image_seq_length") as refused:
        PaliGemmaFamily().load_processor(str(broken), trust_remote_code=False)
    assert str(broken) in str(refused.value) and "model.name_or_path" in str(refused.value)


# Modules of each model and the part that holds them (the tied lm_head reads the language model's embeddings).
REAL_NAMES = {
    "qwen2_5_vl": {"model.visual.patch_embed.proj": "vision_tower", "model.visual.blocks.1.attn.qkv": "vision_tower",
                   "model.visual.merger.mlp.0": "projector",
                   "model.language_model.layers.0.self_attn.q_proj": "language_model", "lm_head": "language_model"},
    "qwen3_vl": {"model.visual.pos_embed": "vision_tower", "model.visual.blocks.0.mlp.linear_fc1": "vision_tower",
                 "model.visual.deepstack_merger_list.0.linear_fc1": "vision_tower",
                 "model.visual.merger.linear_fc2": "projector",
                 "model.language_model.layers.1.mlp.down_proj": "language_model"},
    "qwen3_vl_moe": {"model.visual.deepstack_merger_list.0.linear_fc1": "vision_tower",
                     "model.visual.merger.linear_fc1": "projector",
                     "model.language_model.layers.0.mlp.experts": "language_model",
                     "model.language_model.layers.1.mlp.gate": "language_model"},
    "gemma3": {"model.vision_tower.encoder.layers.0.self_attn.q_proj": "vision_tower",
               "model.vision_tower.post_layernorm": "vision_tower",
               "model.multi_modal_projector.mm_soft_emb_norm": "projector",
               "model.language_model.layers.0.self_attn.o_proj": "language_model"},
    "paligemma": {"model.vision_tower.embeddings.patch_embedding": "vision_tower",
                  "model.multi_modal_projector.linear": "projector",
                  "model.language_model.layers.1.mlp.gate_proj": "language_model"},
}


@pytest.mark.parametrize("model_type", FAMILIES)
def test_the_family_trains_its_tiny_model_and_names_its_parts(model_dir, shapes_rows, tmp_path, model_type):
    """fp32 through the real trainer on one fixed batch: finite losses that fall; LoRA on the language model and
    the projector trained in full (the defaults), the vision tower frozen; part_of on the model's real names."""
    path = model_dir(model_type)
    config = make_config(tmp_path, [
        f"model.name_or_path=\"{path}\"", f"data.path=\"{shapes_rows}\"", f"run.output_dir=\"{tmp_path / 'runs'}\"",
        f"run.name={model_type}", "train.precision=fp32", f"train.batch_size={ROWS}", "train.max_steps=4",
        "train.warmup_steps=0", "train.learning_rate=0.01", "lora.dropout=0.0", "checkpoint.every_steps=1000",
        "monitor.probe_every=1000", "monitor.probe_first_steps=0"])
    code, events, run_dir = train_in_process(config)
    assert code == 0, events[-1]
    assert next(e for e in events if e["type"] == "data")["images"] == ROWS
    losses = [s["loss"] for s in steps_of(events)]
    assert len(losses) == 4 and all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0], losses  # the same rows every step: training must lower their loss

    from safetensors.torch import load_file

    from loratui.model.families import family_for

    family = family_for(str(path))
    assert model_type in family.model_types
    saved = load_file(str(run_dir.adapter / "adapter_model.safetensors"))
    parts = {family.part_of(name) for name in saved}
    assert parts == {"language_model", "projector"}, sorted(saved)
    assert all(family.part_of(name) == "language_model" for name in saved if "lora_" in name)

    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(str(path))
    names = {name for name, _ in model.named_modules()}
    for name, part in REAL_NAMES[model_type].items():
        assert name in names, name  # the module exists where transformers puts it
        assert family.part_of(name) == part and family.part_of(f"base_model.model.{name}") == part, name
    sizes = {part: 0 for part in ("vision_tower", "projector", "language_model")}
    for name, parameter in model.named_parameters():
        sizes[family.part_of(name)] += parameter.numel()
    assert all(sizes.values()), sizes  # every part has weights: each prefix names a real module


def test_qwen3_vl_deepstack_mergers_train_with_the_tower(model_dir, shapes_rows, tmp_path):
    """vision.tower = "lora" on Qwen3-VL: LoRA on the tower's blocks and its deepstack mergers (vision tower), never
    on the final merger, which the projector's default trains in full."""
    from safetensors.torch import load_file

    from loratui.model.families.qwen3_vl import Qwen3VLFamily

    config = make_config(tmp_path, [
        f"model.name_or_path=\"{model_dir('qwen3_vl')}\"", f"data.path=\"{shapes_rows}\"",
        f"run.output_dir=\"{tmp_path / 'runs'}\"", "run.name=tower-lora", "train.precision=fp32", "train.batch_size=4",
        "train.max_steps=1", "vision.tower=\"lora\"", "monitor.probe_every=1000", "monitor.probe_first_steps=0"])
    code, events, run_dir = train_in_process(config)
    assert code == 0, events[-1]
    saved = load_file(str(run_dir.adapter / "adapter_model.safetensors"))
    adapted = {name.split(".lora_A")[0] for name in saved if ".lora_A" in name}
    assert "base_model.model.model.visual.blocks.1.mlp.linear_fc1" in adapted
    assert "base_model.model.model.visual.deepstack_merger_list.0.linear_fc2" in adapted
    assert not any(".visual.merger." in name for name in adapted)
    assert any(".visual.merger." in name and "lora_" not in name for name in saved)  # the projector, in full
    family = Qwen3VLFamily()
    assert {family.part_of(name) for name in adapted} == {"vision_tower", "language_model"}


def test_the_headroom_probe_names_gemma3s_vision_tower(model_dir, shapes_rows, tmp_path):
    """bf16 with the monitor: the probe's fp32 recomputation measures the tower's final LayerNorm past fp16's
    range and the headroom reading names that module and its part."""
    from test_monitor_support import train_monitored

    path = model_dir("gemma3")
    config = make_config(tmp_path, [
        f"model.name_or_path=\"{path}\"", f"data.path=\"{shapes_rows}\"", f"run.output_dir=\"{tmp_path / 'runs'}\"",
        "run.name=gemma3-bf16", "train.precision=bf16", "train.batch_size=4", "train.max_steps=1",
        "monitor.probe_first_steps=1"])
    code, events, _ = train_monitored(config)
    assert code == 0, events[-1]
    headroom = next(e for e in events if e["type"] == "health")["checks"]["fp16_headroom"]
    assert headroom["module"].startswith("model.vision_tower.") and headroom["part"] == "vision_tower", headroom
    assert headroom["peak"] > 65504 / 4
