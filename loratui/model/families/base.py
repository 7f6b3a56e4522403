"""The ModelFamily interface every family implements (what each method must do: families/__init__.py)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable


class ModelFamily(ABC):
    name: str  # for people: "text causal LM"
    model_types: tuple[str, ...] = ()  # the Hugging Face model_type values this family trains
    lora_task_type: str = "CAUSAL_LM"
    parts: dict[str, str] = {}  # part -> module-name prefix on the base model; the first match wins
    supports_packing: bool = False

    @abstractmethod
    def load_processor(self, path: str, *, trust_remote_code: bool): ...

    @abstractmethod
    def build_examples(self, data_config, processor, *, progress: Callable[[int, int], None] | None = None): ...

    @abstractmethod
    def batches(self, examples: list, processor, *, batch_size: int, seed: int, shuffle: bool, rank: int,
                world_size: int): ...

    @abstractmethod
    def count_tokens(self, batch: dict) -> int: ...

    @abstractmethod
    def load_model(self, path: str, dtype, *, trust_remote_code: bool, device_map=None,
                   quantization_config=None): ...

    @abstractmethod
    def identity(self, config, processor) -> dict: ...

    def part_of(self, module_name: str) -> str:
        """The part a module or parameter belongs to; anything no prefix claims is the language model."""
        name = module_name.removeprefix("base_model.model.")
        for part, prefix in self.parts.items():
            if prefix and (name == prefix or name.startswith(prefix + ".")):
                return part
        return "language_model"
