"""PaliGemma: images as a prefix, then a prompt, then the answer (a prefix-LM with no chat template).

PaliGemma's processor builds `<image>` x image_seq_length for each image, then
`<bos>`, the prompt and "\\n" (the prefix), then the answer and `<eos>` (the suffix);
`token_type_ids` are 0 on the prefix, which attends both ways, and 1 on the suffix,
which is causal and the only part with labels. It has no chat template, so loratui
renders a `messages` row the same way, turn by turn:

    <image> x N per image   all the row's images, first, in order (placeholders are dropped
                            from the text: PaliGemma only sees images at the start)
    <bos>
    each turn but the assistant's: its text + "\\n"          (no labels)
    each assistant turn: its text + <eos>                    (labelled)

(each turn's text with its placeholders removed and its ends trimmed of whitespace).

The prefix is everything before the first assistant turn; from its first token on,
the tokens are causal (type 1), so a later question reads the earlier answers but no
earlier token sees a later one. A one-question row is exactly the processor's format;
a multi-turn row continues it with "question\\n" + "answer<eos>" pairs.

The image token count is the image processor's `image_seq_length`, where PaliGemma's
processor reads it (preprocessor_config.json; 256 for the 224 px models); a model
directory without it is refused, as that processor refuses it.
"""

from __future__ import annotations

from loratui.data.dataset import IGNORE_INDEX, BadRow
from loratui.data.vision_rows import PLACEHOLDER, VisionExample, VisionRow
from loratui.model.families.vision import VisionLanguageFamily, VisionProcessor

ROLES = ("system", "user", "assistant")


class PaliGemmaFamily(VisionLanguageFamily):
    name = "PaliGemma vision-language model"
    model_types = ("paligemma",)
    parts = {"vision_tower": "model.vision_tower", "projector": "model.multi_modal_projector",
             "language_model": "model.language_model"}
    placeholder_text = ""  # images go before <bos>, never where the placeholder was
    image_token = "<image>"

    def load_processor(self, path: str, *, trust_remote_code: bool) -> VisionProcessor:
        from loratui.errors import Problem, UserInputError

        processor = super().load_processor(path, trust_remote_code=trust_remote_code)
        if processor.tokenizer.bos_token_id is None:
            raise UserInputError(Problem("model.name_or_path", f"the tokenizer at {path} has no beginning-of-sequence "
                                         "token: PaliGemma's prompt starts after <bos>, its images before it"))
        if not getattr(processor.image_processor, "image_seq_length", None):
            raise UserInputError(Problem("model.name_or_path", f"the image processor at {path} has no "
                                         "image_seq_length (the image tokens per picture, in its "
                                         "preprocessor_config.json)"))
        return processor

    def image_tokens(self, processor: VisionProcessor, width: int, height: int) -> int:
        return processor.image_processor.image_seq_length

    def encode(self, processor: VisionProcessor, row: VisionRow) -> tuple[list[int], list[int]]:
        tokenizer = processor.tokenizer
        input_ids: list[int] = []
        for width, height in row.sizes:
            input_ids += [tokenizer.convert_tokens_to_ids(self.image_token)] * self.image_tokens(processor, width,
                                                                                                  height)
        input_ids.append(tokenizer.bos_token_id)
        labels = [IGNORE_INDEX] * len(input_ids)
        for message in _checked(row.messages):
            text = message["content"].replace(PLACEHOLDER, "").strip()
            if message["role"] == "assistant":
                ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                labels += ids
            else:
                ids = tokenizer(text + "\n", add_special_tokens=False)["input_ids"]
                labels += [IGNORE_INDEX] * len(ids)
            input_ids += ids
        return input_ids, labels

    def collate(self, processor: VisionProcessor, examples: list[VisionExample], images: list) -> dict:
        """The padded batch plus token_type_ids: 0 before a row's first labelled token (its prefix), 1 from it on."""
        batch = super().collate(processor, examples, images)
        batch["token_type_ids"] = (batch["labels"] != IGNORE_INDEX).long().cummax(dim=1).values
        return batch

    def image_inputs(self, processor: VisionProcessor, images: list, input_ids) -> dict:
        return {"pixel_values": processor.image_processor(images=images, return_tensors="pt")["pixel_values"]}


def _checked(messages: list) -> list[dict]:
    """The turns, once each is a system, user or assistant turn with content (placeholders in user turns only).

    Their contents are strings already (vision_rows checked them when it placed the images).
    """
    for turn, message in enumerate(messages):
        if message.get("role") not in ROLES:
            raise BadRow(f"messages[{turn}].role {message.get('role')!r} is not system, user or assistant")
        if not message["content"].strip():
            raise BadRow(f"messages[{turn}].content is empty")
        if message["role"] != "user" and PLACEHOLDER in message["content"]:
            raise BadRow(f"messages[{turn}] has an {PLACEHOLDER} placeholder outside a user turn")
    return messages
