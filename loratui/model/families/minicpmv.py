"""MiniCPM-V 2.x (remote code, `model.trust_remote_code = true`): its own `model(data={...})` forward.

MiniCPM-V's forward takes one `data` dict (input_ids, position_ids, per-row lists of
pixel_values, tgt_sizes and image_bound) and hands its other keyword arguments
(labels, attention_mask) to its language model. The trainer calls `model(**batch)`
with tensors only, so the model is wrapped (`with_data_forward`), which turns a batch of
tensors into that dict: the loop, checkpoints and the monitor see an ordinary batch
(input_ids, attention_mask, labels, pixel inputs).

Images are sliced as MiniCPM-V's processor slices them (minicpmv_slices.py: the
whole picture plus up to max_slice_nums slices, its placeholder text with image ids
and `<slice>` tags, the settings read from the model's preprocessor_config.json and
config.json). Every picture the tower sees (source or slice) is one entry of
pixel_values, laid out patch by patch and zero-padded to the batch's longest, with its
patch grid in tgt_sizes, its row in image_rows and the span of its `<unk>` queries
in image_bound. Tested against a stand-in with the same interface
(tests/fakes/minicpmv_standin): the real code and weights cannot exist offline.
"""

from __future__ import annotations

from loratui.model.families.minicpmv_slices import (
    SliceSettings,
    by_patch,
    image_text,
    query_spans,
    read_slice_settings,
    slice_image,
    slice_sizes,
)
from loratui.model.families.vision import VisionLanguageFamily, VisionProcessor


class MiniCPMVFamily(VisionLanguageFamily):
    name = "MiniCPM-V vision-language model (remote code)"
    model_types = ("minicpmv",)
    lora_task_type = None  # a plain PeftModel: MiniCPM-V's forward is not a causal LM's signature
    parts = {"vision_tower": "model.vpm", "projector": "model.resampler", "language_model": "model.llm"}
    # One query token stands in the rendered chat for each image; image_expansion writes the image's whole text.
    placeholder_text = "<unk>"
    image_token = "<unk>"

    def load_processor(self, path: str, *, trust_remote_code: bool) -> VisionProcessor:
        from transformers import AutoConfig

        from loratui.errors import Problem, UserInputError
        from loratui.model.loading import load_tokenizer

        tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        # MiniCPM-V's own image processor is remote code that imports torchvision: its slicing is done here,
        # and its settings take the image processor's place.
        settings = read_slice_settings(path, config)
        missing = [t for t in settings.tokens() if t not in tokenizer.get_vocab()]
        if missing:
            raise UserInputError(Problem("model.name_or_path", f"the tokenizer at {path} has no {', '.join(missing)} "
                                         "token (MiniCPM-V's image placeholders)"))
        return VisionProcessor(tokenizer, settings, config)

    def load_model(self, path: str, dtype, *, trust_remote_code: bool, device_map=None, quantization_config=None):
        from transformers import AutoModel

        from loratui.model.loading import load_base_model

        return with_data_forward(load_base_model(AutoModel, "a MiniCPM-V model", path, dtype,
                                                  trust_remote_code=trust_remote_code, device_map=device_map,
                                                  quantization_config=quantization_config))

    def image_tokens(self, processor: VisionProcessor, width: int, height: int) -> int:
        settings: SliceSettings = processor.image_processor
        return settings.query_num * len(slice_sizes(width, height, settings))

    def image_expansion(self, processor: VisionProcessor, width: int, height: int, *, index: int) -> list[int]:
        # Tokenized whole, as the processor tokenizes its text (the image id's digits and the newlines included).
        text = image_text(width, height, index, processor.image_processor)
        return processor.tokenizer(text, add_special_tokens=False)["input_ids"]

    def image_inputs(self, processor: VisionProcessor, images: list, input_ids) -> dict:
        """Every picture the tower sees (each image's source and slices, in row order), its patch grid, its row
        and the span of its query tokens."""
        import torch

        settings: SliceSettings = processor.image_processor
        pictures = [picture for image in images for picture in slice_image(image, settings)]
        laid_out = [by_patch(picture, settings.patch_size) for picture in pictures]
        longest = max(pixels.shape[-1] for pixels in laid_out)
        query = processor.tokenizer.convert_tokens_to_ids(self.image_token)
        rows, bounds = [], []
        for row, ids in enumerate(input_ids.tolist()):
            spans = query_spans(ids, query)
            rows += [row] * len(spans)
            bounds += spans
        if len(bounds) != len(pictures):
            raise ValueError(f"the batch's text has {len(bounds)} runs of {self.image_token} queries for "
                             f"{len(pictures)} pictures (images and slices): its image text and its images disagree")
        patch = settings.patch_size
        return {"pixel_values": torch.stack([torch.nn.functional.pad(pixels, (0, longest - pixels.shape[-1]))
                                             for pixels in laid_out]),
                "tgt_sizes": torch.tensor([[p.height // patch, p.width // patch] for p in pictures], dtype=torch.long),
                "image_rows": torch.tensor(rows, dtype=torch.long),
                "image_bound": torch.tensor(bounds, dtype=torch.long)}


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
                patch = pixel_values.shape[2]
                # Rows and grids in one device-to-host read: slicing off the padding needs them as numbers.
                placed = torch.cat([image_rows.unsqueeze(1), tgt_sizes], dim=1).tolist()
                for index, (row, height, width) in enumerate(placed):
                    # Each picture without the batch's padding: (3, patch, its patches x patch), as MiniCPM-V's
                    # processor gives it.
                    grouped["pixel_values"][row].append(pixel_values[index, :, :, :height * width * patch])
                    grouped["tgt_sizes"][row].append(tgt_sizes[index])
                    grouped["image_bound"][row].append(image_bound[index])
            # As MiniCPM-V's own collator gives them: per row, a (k, 2) tensor of patch grids and of spans.
            for name in ("tgt_sizes", "image_bound"):
                grouped[name] = [torch.stack(values) if values else [] for values in grouped[name]]
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand(rows, -1)
            data = {"input_ids": input_ids, "position_ids": position_ids, **grouped}
            return self.model(data=data, attention_mask=attention_mask, labels=labels, **kwargs)

    return MiniCPMVDataForward(model)
