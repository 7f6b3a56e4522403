"""LLaVA-NeXT, Idefics3 and the native MiniCPM-V 4.x families on tiny random models built offline.

Each model is built from a seeded config with transformers' own classes, beside a
locally trained tokenizer that carries the family's special tokens and the
family's PIL image processor, saved with save_pretrained and loaded by the real
trainer as any local model directory is. The tiny-shapes pictures are 56 px: each
family's processor settings are chosen so that they are cut into tiles or slices,
the layout these families exist for. The image token counts are checked against
the models' own processors (LlavaNextProcessor, Idefics3Processor,
MiniCPMV4_6Processor's text expansion) over several picture sizes.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from helpers import make_config, steps_of, train_in_process
from loratui.model.families import family_for
from loratui.model.families.vision import VisionProcessor

SEED = 20251206
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=512, rms_norm_eps=1e-5)
TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
TILE = 28  # a tile's (or slice's) side in pixels: a 56 px picture is 2 x 2 of them
PATCH = 7
HALF_MEAN = dict(image_mean=[0.5] * 3, image_std=[0.5] * 3)
ROWS = 32  # of tiny-shapes for the training runs: tokenizing all 1024 rows would be most of each run's time
# Pictures of other sizes and shapes than the training data's, for the token counts.
SIZES = [(56, 56), (90, 40), (40, 90), (20, 20), (100, 30), (33, 57)]

IDEFICS3_TOKENS = ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"] + [
    f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7)]
MINICPMV_TOKENS = ["<|image_pad|>", "<|video_pad|>", "<image>", "</image>", "<slice>", "</slice>", "<image_id>",
                   "</image_id>"]


def tokenizer_with(tokens: list[str]):
    from loratui.model.builtin_vlm import train_vlm_tokenizer

    return train_vlm_tokenizer(tokens)


def text_config(tokenizer, **extra) -> dict:
    return dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                bos_token_id=None, **TEXT, **extra)


def llava_next(tokenizer, *, tower: str = "siglip"):
    """SigLIP (no CLS feature, strategy "full") or CLIP (a CLS feature the "default" strategy drops)."""
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration,
                              LlavaNextImageProcessorPil, SiglipVisionConfig)

    grid = [[TILE, 2 * TILE], [2 * TILE, TILE], [2 * TILE, 2 * TILE]]
    vision = SiglipVisionConfig(**TOWER, image_size=TILE, patch_size=PATCH, vision_use_head=False) \
        if tower == "siglip" else CLIPVisionConfig(**TOWER, image_size=TILE, patch_size=PATCH)
    config = LlavaNextConfig(vision_config=vision, text_config=LlamaConfig(**text_config(tokenizer)),
                             image_grid_pinpoints=grid, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                             vision_feature_select_strategy="full" if tower == "siglip" else "default",
                             vision_feature_layer=-1)
    images = LlavaNextImageProcessorPil(size={"shortest_edge": TILE}, crop_size={"height": TILE, "width": TILE},
                                        image_grid_pinpoints=grid, **HALF_MEAN)
    return LlavaNextForConditionalGeneration(config), images


def idefics3(tokenizer, *, longest_edge: int = 2 * TILE):
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil, LlamaConfig
    from transformers.models.idefics3 import Idefics3VisionConfig

    config = Idefics3Config(vision_config=Idefics3VisionConfig(**TOWER, image_size=TILE, patch_size=PATCH),
                            text_config=LlamaConfig(**text_config(tokenizer)), scale_factor=2,
                            image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    images = Idefics3ImageProcessorPil(size={"longest_edge": longest_edge}, max_image_size={"longest_edge": TILE},
                                       **HALF_MEAN)
    return Idefics3ForConditionalGeneration(config), images


def minicpmv(tokenizer, model_type: str):
    from transformers import AutoConfig, AutoModelForImageTextToText
    from transformers.models.minicpmv4_6 import MiniCPMV4_6ImageProcessorPil

    ids = tokenizer.convert_tokens_to_ids
    text = text_config(tokenizer, model_type="qwen3_5_text", head_dim=16, linear_key_head_dim=16,
                       linear_value_head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
                       layer_types=["linear_attention", "full_attention"])
    canvas = dict(image_start_id=ids("<image>"), image_end_id=ids("</image>"), slice_start_id=ids("<slice>"),
                  slice_end_id=ids("</slice>"), newline_id=tokenizer("\n", add_special_tokens=False)["input_ids"][0]) \
        if model_type == "minicpmv4_7" else {}
    # The window merger after the first of two tower layers; each slice 4 x 4 patches, one token after both merges.
    config = AutoConfig.for_model(model_type, text_config=text, insert_layer_id=0, image_size=TILE,
                                  vision_config=dict(**TOWER, image_size=TILE, patch_size=PATCH),
                                  image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"), **canvas)
    images = MiniCPMV4_6ImageProcessorPil(scale_resolution=TILE, patch_size=PATCH, max_slice_nums=4, **HALF_MEAN)
    return AutoModelForImageTextToText.from_config(config), images


BUILDERS = {
    "llava_next": (["<image>"], llava_next),
    "idefics3": (IDEFICS3_TOKENS, idefics3),
    "minicpmv4_6": (MINICPMV_TOKENS, lambda tokenizer: minicpmv(tokenizer, "minicpmv4_6")),
    "minicpmv4_7": (MINICPMV_TOKENS, lambda tokenizer: minicpmv(tokenizer, "minicpmv4_7")),
}
# Where each part lives, as transformers names the modules (and one module inside each, to show they are real).
PARTS = {
    "llava_next": {"vision_tower": "model.vision_tower.encoder.layers.0.mlp.fc1",
                   "projector": "model.multi_modal_projector.linear_1",
                   "language_model": "model.language_model.layers.0.self_attn.q_proj"},
    "idefics3": {"vision_tower": "model.vision_model.encoder.layers.0.mlp.fc1",
                 "projector": "model.connector.modality_projection.proj",
                 "language_model": "model.text_model.layers.0.self_attn.q_proj"},
    "minicpmv4_6": {"vision_tower": "model.vision_tower.vit_merger.self_attn.q_proj",
                    "projector": "model.merger.mlp.0.linear_1",
                    "language_model": "model.language_model.layers.1.self_attn.q_proj"},
}
PARTS["minicpmv4_7"] = PARTS["minicpmv4_6"]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """Each family's tiny model directory, built once for the module (on first use)."""
    built = {}

    def build(model_type: str):
        if model_type not in built:
            tokens, builder = BUILDERS[model_type]
            tokenizer = tokenizer_with(tokens)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(SEED)
                model, images = builder(tokenizer)
            path = tmp_path_factory.mktemp(model_type)
            model.save_pretrained(path)
            tokenizer.save_pretrained(path)
            images.save_pretrained(path)
            built[model_type] = path
        return built[model_type]

    return build


@pytest.fixture(scope="module")
def shapes_rows(tmp_path_factory):
    """The first ROWS rows of builtin:tiny-shapes (messages format), their pictures by absolute path."""
    from loratui.data.builtin_shapes import shapes_dataset_path

    source = shapes_dataset_path("builtin:tiny-shapes", "messages")
    rows = [json.loads(line) for line in source.read_text().splitlines()[:ROWS]]
    path = tmp_path_factory.mktemp("shapes") / "shapes.jsonl"
    path.write_text("".join(json.dumps(dict(row, images=[str(source.parent / image) for image in row["images"]]))
                            + "\n" for row in rows))
    return path


def vlm_config(tmp_path, model_dir, data_path, name: str, extra: list[str]):
    return make_config(tmp_path, [f'model.name_or_path="{model_dir}"', f'data.path="{data_path}"',
                                  "train.batch_size=4", "train.warmup_steps=0", "train.learning_rate=0.005",
                                  "monitor.probe_every=1000", "monitor.probe_first_steps=0",
                                  f'run.output_dir="{tmp_path / "runs"}"', f"run.name={name}", *extra])


@pytest.mark.parametrize("model_type", list(BUILDERS))
def test_each_family_trains_lora_on_its_language_model(tmp_path, model_dirs, shapes_rows, model_type):
    model_dir = model_dirs(model_type)
    family = family_for(str(model_dir))
    assert model_type in family.model_types
    code, events, run_dir = train_in_process(vlm_config(tmp_path, model_dir, shapes_rows, model_type, [
        "train.precision=fp32", "train.max_steps=4"]))
    assert code == 0, events[-1]
    data = next(e for e in events if e["type"] == "data")
    assert data["images"] == data["examples"] == ROWS
    losses = [s["loss"] for s in steps_of(events)]
    assert len(losses) == 4 and all(math.isfinite(loss) for loss in losses)
    assert min(losses[1:]) < losses[0], losses  # the adapter learns from the first steps
    assert all(s["images"] == 4 for s in steps_of(events))
    saved = load_file(str(run_dir.adapter / "adapter_model.safetensors"))
    # The defaults: LoRA on the language model alone, the projector trained in full, the vision tower frozen.
    lora = [name for name in saved if ".lora_" in name]
    assert lora and {family.part_of(name) for name in lora} == {"language_model"}
    if model_type.startswith("minicpmv"):  # Qwen3.5's linear-attention projections are linear layers too
        assert any(".linear_attn.in_proj_qkv.lora_A" in name for name in lora)
    assert {family.part_of(name) for name in saved if ".lora_" not in name} == {"projector"}


@pytest.mark.parametrize("model_type", list(BUILDERS))
def test_part_of_names_the_real_modules(model_dirs, model_type):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(model_dirs(model_type))
    family = family_for(str(model_dirs(model_type)))
    modules = dict(model.named_modules())
    for part, module in PARTS[model_type].items():
        assert module in modules and family.part_of(module) == part
        assert family.parts[part] in modules  # every prefix is a real module
        # peft's names carry its wrapper's prefix: the same part.
        assert family.part_of(f"base_model.model.{module}.lora_A.default") == part
    assert {family.part_of(name) for name in modules} == {"vision_tower", "projector", "language_model"}
    if model_type == "llava_next":
        assert family.part_of("model.image_newline") == "projector"


@pytest.mark.parametrize("model_type", ["llava_next", "idefics3", "minicpmv4_6"])
def test_a_health_probe_names_a_module_in_each_part(tmp_path, model_dirs, shapes_rows, model_type):
    """bf16 with a probe on the first step: each part's headroom reading names one of that part's modules."""
    from test_monitor_support import train_monitored

    family = family_for(str(model_dirs(model_type)))
    code, events, _ = train_monitored(vlm_config(tmp_path, model_dirs(model_type), shapes_rows, f"{model_type}-probe", [
        "train.precision=bf16", "train.max_steps=1", "monitor.probe_first_steps=1"]))
    assert code == 0, events[-1]
    parts = next(e for e in events if e["type"] == "health")["parts"]
    for part in ("vision_tower", "projector", "language_model"):
        module = parts[part]["fp16_headroom"]["module"]
        assert family.part_of(module) == part, (part, module)
    assert parts["vision_tower"]["fp16_headroom"]["module"].startswith(family.parts["vision_tower"] + ".")


def picture(width: int, height: int):
    return Image.new("RGB", (width, height), (200, 40, 40))


@pytest.mark.parametrize("tower", ["siglip", "clip"])
def test_llava_next_counts_image_tokens_as_its_processor_does(tower):
    from transformers import LlavaNextProcessor

    tokenizer = tokenizer_with(["<image>"])
    model, images = llava_next(tokenizer, tower=tower)
    processor = VisionProcessor(tokenizer, images, model.config)
    family = family_for_type("llava_next")
    theirs = LlavaNextProcessor(image_processor=images, tokenizer=tokenizer, patch_size=PATCH,
                                vision_feature_select_strategy=model.config.vision_feature_select_strategy,
                                num_additional_image_tokens=int(tower == "clip"))
    counts = set()
    for width, height in SIZES:
        encoded = theirs(text="<image>", images=[picture(width, height)], return_tensors="pt")
        expected = int((encoded["input_ids"] == model.config.image_token_id).sum())
        assert family.image_tokens(processor, width, height) == expected, (width, height)
        counts.add(expected)
    assert len(counts) > 3  # the sizes exercise different grids and paddings
    inputs = family.image_inputs(processor, [picture(56, 56), picture(90, 40)], None)
    # anyres: (images, tiles, 3, H, W), zero-padded to the most tiles, with each image's (height, width).
    assert tuple(inputs["pixel_values"].shape) == (2, 5, 3, TILE, TILE)
    assert inputs["image_sizes"].tolist() == [[56, 56], [40, 90]]
    # The model itself agrees: its features fill exactly the image tokens the family wrote.
    assert torch.isfinite(forward_on_mixed_pictures(family, processor, model))


def forward_on_mixed_pictures(family, processor, model):
    """Loss of a two-row batch: one wide picture, then two of other sizes, through the family's encode and collate;
    backward reaches the vision tower (the pictures are in the loss)."""
    from loratui.data.vision_rows import VisionExample, VisionRow

    rows = [([(90, 40)], "<image>What colour is it?"), ([(56, 56), (33, 57)], "<image> and <image>: same colour?")]
    examples, pictures = [], []
    for sizes, question in rows:
        row = VisionRow([{"role": "user", "content": question}, {"role": "assistant", "content": "red"}],
                        [], list(sizes))
        examples.append(VisionExample(*family.encode(processor, row), [], list(sizes)))
        pictures += [picture(width, height) for width, height in sizes]
    model.train()
    loss = model(**family.collate(processor, examples, pictures)).loss
    loss.backward()
    tower = model.get_submodule(family.parts["vision_tower"])
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tower.parameters())
    return loss.detach()


@pytest.mark.parametrize("longest_edge", [2 * TILE, TILE, 3 * TILE])
def test_idefics3_writes_each_image_as_its_processor_does(longest_edge):
    """Token for token, tiles with their row and column tokens and the global image; one tile: no split."""
    from transformers import Idefics3Processor

    tokenizer = tokenizer_with(IDEFICS3_TOKENS)
    model, images = idefics3(tokenizer, longest_edge=longest_edge)
    processor = VisionProcessor(tokenizer, images, model.config)
    family = family_for_type("idefics3")
    per_tile = (TILE // PATCH) ** 2 // 4
    theirs = Idefics3Processor(image_processor=images, tokenizer=tokenizer, image_seq_len=per_tile)
    for width, height in SIZES:
        encoded = theirs(text="<image>", images=[[picture(width, height)]])
        assert family.image_expansion(processor, width, height, index=0) == encoded["input_ids"][0], (width, height)
        assert family.image_tokens(processor, width, height) == encoded["input_ids"][0].count(
            model.config.image_token_id)
    rows_of = [tokenizer.convert_tokens_to_ids(f"<row_{r}_col_1>") for r in range(1, 4)]
    expansion = family.image_expansion(processor, 56, 56, index=0)
    assert sum(token in rows_of for token in expansion) == {TILE: 0, 2 * TILE: 2, 3 * TILE: 3}[longest_edge]
    assert torch.isfinite(forward_on_mixed_pictures(family, processor, model))


def family_for_type(model_type: str):
    from loratui.model.families import _BY_MODEL_TYPE

    return _BY_MODEL_TYPE[model_type]()


@pytest.mark.parametrize("model_type", ["minicpmv4_6", "minicpmv4_7"])
@pytest.mark.parametrize("scale_resolution", [TILE, 2 * TILE])
def test_minicpmv_native_writes_each_image_as_its_processor_does(scale_resolution, model_type):
    """Token for token against MiniCPMV4_6Processor's own text expansion (its constructor wants a video processor,
    which needs torchvision: the instance is made without it, its image path is the real code)."""
    from transformers.models.minicpmv4_6 import MiniCPMV4_6ImageProcessorPil, MiniCPMV4_6Processor
    from transformers.models.minicpmv4_7 import MiniCPMV4_7Processor

    tokenizer = tokenizer_with(MINICPMV_TOKENS)
    model, _ = minicpmv(tokenizer, model_type)
    images = MiniCPMV4_6ImageProcessorPil(scale_resolution=scale_resolution, patch_size=PATCH, max_slice_nums=4,
                                          **HALF_MEAN)
    processor = VisionProcessor(tokenizer, images, model.config)
    family = family_for_type(model_type)
    theirs = processor_without_video(MiniCPMV4_7Processor if model_type == "minicpmv4_7" else MiniCPMV4_6Processor,
                                     images, tokenizer)
    slices = set()
    for width, height in SIZES:
        text = "<|image_pad|>x<|image_pad|>"  # two images: the second numbered 1
        encoded = theirs(text=[text], images=[picture(width, height), picture(height, width)])
        ours = family.image_expansion(processor, width, height, index=0) + \
            tokenizer("x", add_special_tokens=False)["input_ids"] + \
            family.image_expansion(processor, height, width, index=1)
        assert ours == encoded["input_ids"][0].tolist(), (width, height)
        if model_type == "minicpmv4_7":  # its canvas M-RoPE's modality marks, as the processor sets them
            marks = family.image_inputs(processor, [picture(width, height), picture(height, width)],
                                        torch.tensor([ours]))["mm_token_type_ids"]
            assert marks.tolist() == encoded["mm_token_type_ids"].tolist()
        slices.add(ours.count(tokenizer.convert_tokens_to_ids("<slice>")))
    assert len(slices) > 1  # sliced and unsliced pictures both checked
    assert torch.isfinite(forward_on_mixed_pictures(family, processor, model))


def processor_without_video(processor_class, image_processor, tokenizer):
    """The processor with what its __init__ sets for images (the released checkpoints' marker tokens), no video."""
    names = dict(image_token="<|image_pad|>", video_token="<|video_pad|>", image_start_token="<image>",
                 image_end_token="</image>", slice_start_token="<slice>", slice_end_token="</slice>",
                 image_id_start_token="<image_id>", image_id_end_token="</image_id>")
    processor = processor_class.__new__(processor_class)
    processor.image_processor, processor.tokenizer = image_processor, tokenizer
    processor.slice_mode = image_processor.slice_mode
    processor.default_use_image_id = image_processor.use_image_id
    processor.image_token_divisor = 16
    for name, token in names.items():
        setattr(processor, name, token)
    processor.image_token_id = tokenizer.convert_tokens_to_ids(names["image_token"])
    processor.video_token_id = tokenizer.convert_tokens_to_ids(names["video_token"])
    return processor


@pytest.mark.parametrize("model_type, missing", [("idefics3", "<row_2_col_2>"), ("minicpmv4_6", "<slice>")])
def test_a_tokenizer_without_the_layout_tokens_is_refused_by_name(tmp_path, model_type, missing):
    """Without them the image text would be tokenized into bytes and trained on silently: refuse up front."""
    from loratui.errors import UserInputError

    tokens, builder = BUILDERS[model_type]
    tokenizer = tokenizer_with([token for token in tokens if token != missing])
    model, images = builder(tokenizer)
    model.config.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    images.save_pretrained(tmp_path)
    with pytest.raises(UserInputError, match="model.name_or_path") as refused:
        family_for(str(tmp_path)).load_processor(str(tmp_path), trust_remote_code=False)
    assert missing in str(refused.value)
