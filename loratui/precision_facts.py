"""The three training precisions by name and their torch dtypes: shared by the trainer, the monitor and the advisor."""

from __future__ import annotations

# Names as the config, events and control commands spell them -> torch dtype attribute names
# (strings, so that importing this module does not import torch).
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
