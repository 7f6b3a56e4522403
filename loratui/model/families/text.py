"""Text causal language models (Llama, Qwen2, GPT-2, ... and the built-in tiny models): the default family."""

from __future__ import annotations

from loratui.model.families.base import ModelFamily


class TextFamily(ModelFamily):
    name = "text causal LM"
    model_types = ("llama",)  # and any model_type no other family claims (families.family_for)
    parts = {"language_model": ""}
    supports_packing = True  # data.packing: configure_batches packs the stream once the model is loaded

    def load_processor(self, path: str, *, trust_remote_code: bool):
        from loratui.model.loading import load_tokenizer

        return load_tokenizer(path, trust_remote_code=trust_remote_code)

    def build_examples(self, data_config, processor, *, progress=None):
        from loratui.data.dataset import load_examples

        return load_examples(data_config.path, data_config.format, processor, max_length=data_config.max_length,
                             on_too_long=data_config.on_too_long, on_bad_row=data_config.on_bad_row,
                             progress=progress)

    def batches(self, examples: list, processor, *, batch_size: int, seed: int, shuffle: bool, rank: int,
                world_size: int):
        from loratui.data.dataset import BatchStream

        # Right-padded input_ids, labels and attention_mask (data.dataset.collate) until the trainer
        # packs it for the loaded model (configure_batches).
        return BatchStream(examples, batch_size, seed=seed, shuffle=shuffle, pad_id=processor.pad_token_id,
                           rank=rank, world_size=world_size)

    def configure_batches(self, stream, model, data_config) -> str | None:
        from loratui.data.packing import setup_packing

        return setup_packing(stream, model, data_config)

    def count_tokens(self, batch: dict) -> int:
        from loratui.data.packing import PackedBatch

        return batch.real_tokens if isinstance(batch, PackedBatch) else int(batch["attention_mask"].sum())

    def load_model(self, path: str, dtype, *, trust_remote_code: bool, device_map=None, quantization_config=None):
        from transformers import AutoModelForCausalLM

        from loratui.model.loading import load_base_model

        return load_base_model(AutoModelForCausalLM, "a causal language model", path, dtype,
                               trust_remote_code=trust_remote_code, device_map=device_map,
                               quantization_config=quantization_config)

    def identity(self, config, processor) -> dict:
        from loratui.model.loading import model_identity

        return model_identity(config, processor)
