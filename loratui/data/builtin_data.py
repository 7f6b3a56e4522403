"""Where the bundled datasets live inside the package."""

from __future__ import annotations

from pathlib import Path

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
BUILTIN_FORMATS = {"builtin:tiny-text": "text", "builtin:tiny-qa": "prompt_completion",
                   "builtin:tiny-chat": "messages", "builtin:tiny-chat-mojibake": "messages",
                   "builtin:tiny-chat-longtail": "messages"}


def builtin_dataset_path(name: str) -> Path:
    return BUILTIN_DIR / f"{name.removeprefix('builtin:')}.jsonl"
