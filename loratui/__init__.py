"""loratui: a terminal dashboard for live, precision-monitored LoRA training."""

__version__ = "0.1.0"
