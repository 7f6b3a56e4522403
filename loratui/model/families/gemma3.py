"""Gemma 3 (Gemma3ForConditionalGeneration): a SigLIP tower pooled to a fixed count of soft tokens.

Gemma 3's chat template writes `<start_of_image>` for an image, and its processor then
replaces that, in the rendered text, by "\\n\\n<start_of_image>" + `image_seq_length` x
`<image_soft_token>` + "<end_of_image>\\n\\n". The family does the same in the same order:
an `<image>` placeholder becomes `<start_of_image>` in the conversation, and the text the
chat template renders is expanded before it is tokenized. Expanding before rendering would
not give the same text: Gemma's template trims each turn, which would eat the newlines of
an image at the start or end of a turn.

Every image is resized to the tower's square size and its patches average-pooled by the
projector to the config's `mm_tokens_per_image` (256 in the released models), which is
the processor's `image_seq_length`, so that count is read from the model config.
Pan-and-scan (extra crops of wide images, off in Gemma 3's processor unless asked for)
is not done: each image is one crop.

Training needs `token_type_ids` (1 on the soft tokens): with it the model lets an
image's tokens attend to each other both ways, as it was trained; without it they
would be causal. The projector is `multi_modal_projector` (a norm and a projection
matrix after the pooling).
"""

from __future__ import annotations

from dataclasses import replace

from loratui.model.families.vision import VisionLanguageFamily, VisionProcessor

BOI_TOKEN = "<start_of_image>"
EOI_TOKEN = "<end_of_image>"
SOFT_TOKEN = "<image_soft_token>"
# Gemma3Processor's image sequence, with one soft token: encode() repeats it mm_tokens_per_image times.
IMAGE_SEQUENCE = f"\n\n{BOI_TOKEN}{SOFT_TOKEN}{EOI_TOKEN}\n\n"


class Gemma3Family(VisionLanguageFamily):
    name = "Gemma 3 vision-language model"
    model_types = ("gemma3",)
    parts = {"vision_tower": "model.vision_tower", "projector": "model.multi_modal_projector",
             "language_model": "model.language_model"}
    placeholder_text = BOI_TOKEN  # what Gemma 3's chat template writes for an image
    image_token = SOFT_TOKEN

    def load_processor(self, path: str, *, trust_remote_code: bool) -> VisionProcessor:
        from loratui.errors import Problem, UserInputError

        processor = super().load_processor(path, trust_remote_code=trust_remote_code)
        vocabulary = processor.tokenizer.get_vocab()
        missing = [token for token in (BOI_TOKEN, EOI_TOKEN) if token not in vocabulary]
        if missing:  # the text would tokenize them piece by piece and the model never see an image boundary
            raise UserInputError(Problem("model.name_or_path", f"the tokenizer at {path} has no "
                                         f"{' or '.join(missing)} token"))
        return processor

    def encode(self, processor: VisionProcessor, row):
        return super().encode(replace(processor, tokenizer=ImagesExpandedAfterTemplate(processor.tokenizer)), row)

    def image_tokens(self, processor: VisionProcessor, width: int, height: int) -> int:
        return processor.model_config.mm_tokens_per_image

    def image_inputs(self, processor: VisionProcessor, images: list, input_ids) -> dict:
        pixels = processor.image_processor(images=images, do_pan_and_scan=False, return_tensors="pt")
        soft_token_id = processor.tokenizer.convert_tokens_to_ids(SOFT_TOKEN)
        return {"pixel_values": pixels["pixel_values"], "token_type_ids": (input_ids == soft_token_id).long()}


class ImagesExpandedAfterTemplate:
    """The tokenizer, with each `<start_of_image>` its chat template renders expanded as Gemma3Processor does."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __getattr__(self, name: str):
        return getattr(self.tokenizer, name)

    def __call__(self, *args, **kwargs):
        return self.tokenizer(*args, **kwargs)

    def apply_chat_template(self, *args, **kwargs):
        return self.tokenizer.apply_chat_template(*args, **kwargs).replace(BOI_TOKEN, IMAGE_SEQUENCE)
