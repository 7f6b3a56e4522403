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

    def lora_targets(self, lora_config, vision_config) -> dict:
        """Overrides of add_lora's target_modules / modules_to_save; none: the [lora] section as it is."""
        return {}

    def configure_batches(self, stream, model, data_config) -> str | None:
        """Fit the batch stream to the loaded model (packing, say); a notice for the run's log, or None."""
        return None

    def prepare_model(self, model, config, precision_name: str, device_type: str) -> None:
        """A last change to the LoRA model before training (a part kept in fp32, say); none by default."""

    def step_figures(self, stream, seconds: float) -> dict:
        """Fields the family adds to each `step` event (images per second, say); none by default."""
        return {}

    def part_of(self, module_name: str) -> str:
        """The part a module or parameter belongs to; anything no prefix claims is the language model."""
        name = module_name.removeprefix("base_model.model.")
        for part, prefix in self.parts.items():
            if prefix and (name == prefix or name.startswith(prefix + ".")):
                return part
        return "language_model"
