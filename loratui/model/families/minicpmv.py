"""MiniCPM-V 2.x (remote code, `model.trust_remote_code = true`): its own `model(data={...})` forward.

MiniCPM-V's forward takes one `data` dict (input_ids, position_ids, per-row lists of
pixel_values, tgt_sizes and image_bound) and hands its other keyword arguments
(labels, attention_mask) to its language model. The trainer calls `model(**batch)`
with tensors only, so the model is wrapped (`with_data_forward`), which turns a batch of
tensors into that dict: the loop, checkpoints and the monitor see an ordinary batch
(input_ids, attention_mask, labels, pixel inputs).

An image becomes `<image>` + query_num `<unk>` + `</image>` (MiniCPM-V's placeholder;
image_bound marks the `<unk>` run its resampler's queries replace). Pixels are resized
to the config's scale_resolution, normalised with mean and std 0.5 and laid out patch
by patch as MiniCPM-V's processor does. Not done here: the processor's slicing of large
images into up to 9 extra slices (each image is one slice). Tested against a stand-in
with the same interface (tests/fakes/minicpmv_standin): the real code and weights
cannot exist offline.
"""

from __future__ import annotations

from loratui.model.families.vision import VisionLanguageFamily, VisionProcessor

IMAGE_MEAN = IMAGE_STD = 0.5


class MiniCPMVFamily(VisionLanguageFamily):
    name = "MiniCPM-V vision-language model (remote code)"
    model_types = ("minicpmv",)
    lora_task_type = None  # a plain PeftModel: MiniCPM-V's forward is not a causal LM's signature
    parts = {"vision_tower": "model.vpm", "projector": "model.resampler", "language_model": "model.llm"}
    placeholder_text = "<image><unk></image>"
    image_token = "<unk>"

    def load_processor(self, path: str, *, trust_remote_code: bool) -> VisionProcessor:
        from transformers import AutoConfig

        from loratui.errors import Problem, UserInputError
        from loratui.model.loading import load_tokenizer

        tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
        missing = [t for t in ("<image>", "</image>", "<unk>") if t not in tokenizer.get_vocab()]
        if missing:
            raise UserInputError(Problem("model.name_or_path", f"the tokenizer at {path} has no {', '.join(missing)} "
                                         "token (MiniCPM-V's image placeholders)"))
        return VisionProcessor(tokenizer, None, AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code))

    def load_model(self, path: str, dtype, *, trust_remote_code: bool, device_map=None, quantization_config=None):
        from transformers import AutoModel

        from loratui.model.loading import load_base_model

        return with_data_forward(load_base_model(AutoModel, "a MiniCPM-V model", path, dtype,
                                                  trust_remote_code=trust_remote_code, device_map=device_map,
                                                  quantization_config=quantization_config))

    def image_tokens(self, processor: VisionProcessor, width: int, height: int) -> int:
        return processor.model_config.query_num

    def image_inputs(self, processor: VisionProcessor, images: list, input_ids) -> dict:
        """Pixels patch by patch, each image's patch grid, its row and the span of its query tokens."""
        import torch

        side, patch = _slice_settings(processor.model_config)
        unk = processor.tokenizer.convert_tokens_to_ids(self.image_token)
        rows, bounds = [], []
        for row, ids in enumerate(input_ids.tolist()):
            spans = _runs(ids, unk)
            rows += [row] * len(spans)
            bounds += spans
        return {"pixel_values": torch.stack([_by_patch(_normalised(image, side), patch) for image in images]),
                "tgt_sizes": torch.tensor([[side // patch, side // patch]] * len(images), dtype=torch.long),
                "image_rows": torch.tensor(rows, dtype=torch.long),
                "image_bound": torch.tensor(bounds, dtype=torch.long)}


def _slice_settings(config) -> tuple[int, int]:
    """(scale_resolution, patch_size): MiniCPM-V 2.x keeps them in its slice_config, the stand-in at the top."""
    settings = getattr(config, "slice_config", None) or config
    read = settings.get if isinstance(settings, dict) else lambda key: getattr(settings, key)
    return int(read("scale_resolution")), int(read("patch_size"))


def _runs(ids: list[int], token: int) -> list[list[int]]:
    """[start, end) of each run of `token` in `ids`."""
    spans, start = [], None
    for index, value in enumerate(ids + [None]):
        if value == token and start is None:
            start = index
        elif value != token and start is not None:
            spans.append([start, index])
            start = None
    return spans


def _normalised(image, side: int):
    import numpy as np
    import torch

    array = np.asarray(image.resize((side, side)), dtype=np.float32) / 255.0
    return (torch.from_numpy(array).permute(2, 0, 1) - IMAGE_MEAN) / IMAGE_STD


def _by_patch(image, patch: int):
    """(3, H, W) -> (3, patch, H*W/patch): patches side by side, MiniCPM-V's processor's reshape_by_patch."""
    import torch

    patches = torch.nn.functional.unfold(image.unsqueeze(0), (patch, patch), stride=(patch, patch))
    patches = patches.reshape(3, patch, patch, -1).permute(0, 1, 3, 2)
    return patches.reshape(3, patch, -1)


def with_data_forward(model):
    """`model` wrapped so that model(**batch) with tensors calls MiniCPM-V's model(data={...}) with per-row lists."""
    import torch

    class MiniCPMVDataForward(torch.nn.Module):
        base_model_prefix = "model"  # what peft and transformers read on the model they are given

        def __init__(self, inner):
            super().__init__()
            self.model = inner
            self.config = inner.config

        def forward(self, input_ids, attention_mask, labels=None, pixel_values=None, tgt_sizes=None,
                    image_rows=None, image_bound=None, **kwargs):
            rows = input_ids.shape[0]
            grouped = {name: [[] for _ in range(rows)] for name in ("pixel_values", "tgt_sizes", "image_bound")}
            if pixel_values is not None:
                for index, row in enumerate(image_rows.tolist()):
                    grouped["pixel_values"][row].append(pixel_values[index])
                    grouped["tgt_sizes"][row].append(tgt_sizes[index])
                    grouped["image_bound"][row].append(image_bound[index])
            # As MiniCPM-V's own collator gives them: per row, a (k, 2) tensor of patch grids and of spans.
            for name in ("tgt_sizes", "image_bound"):
                grouped[name] = [torch.stack(values) if values else [] for values in grouped[name]]
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand(rows, -1)
            data = {"input_ids": input_ids, "position_ids": position_ids, **grouped}
            return self.model(data=data, attention_mask=attention_mask, labels=labels, **kwargs)

    return MiniCPMVDataForward(model)
