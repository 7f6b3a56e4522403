"""Strict JSON for event lines: non-finite floats become the strings "nan", "inf", "-inf"."""

from __future__ import annotations

import json
import math
from json.encoder import c_make_encoder, encode_basestring
from typing import Any


def _unencodable(value: Any):
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _strict_encoder():
    """Compact, UTF-8, non-finite floats refused: `JSONEncoder(allow_nan=False, ...).encode`, but faster.

    `JSONEncoder.encode` builds a new C encoder (and a float formatter closure) on
    every call, and checks for circular references, which an event never has;
    building the C encoder once makes a step line about a fifth cheaper. Without
    the C accelerator (another interpreter) the standard encoder does the work.
    """
    if c_make_encoder is None:
        return json.JSONEncoder(allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode
    encode_chunks = c_make_encoder(None, _unencodable, encode_basestring, None, ":", ",", False, False, False)
    join = "".join
    return lambda value: join(encode_chunks(value, 0))


_dumps_strict = _strict_encoder()


def encode_event(event: dict) -> str:
    """One JSON line (without the newline). Fast path first: most events hold only finite numbers."""
    try:
        return _dumps_strict(event)
    except ValueError:
        return _dumps_strict(_finite_or_string(event))
    except TypeError:
        return _dumps_strict(_finite_or_string(event))


def decode_event(line: str | bytes) -> dict:
    """Parse one event line strictly: a bare NaN or Infinity literal is an error, not a float."""
    event = json.loads(line, parse_constant=_reject_constant)
    if not isinstance(event, dict):
        raise ValueError("an event line must be a JSON object")
    return event


def as_float(value: Any) -> float | None:
    """A numeric field back as a float: "nan"/"inf"/"-inf" strings included, None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        return float(value)  # "nan", "inf", "-inf"
    return float(value)


def _reject_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name} (events write it as a string)")


def _finite_or_string(value: Any) -> Any:
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _finite_or_string(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_string(v) for v in value]
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if hasattr(value, "item"):  # a numpy or torch scalar that slipped through
        return _finite_or_string(value.item())
    return str(value)
