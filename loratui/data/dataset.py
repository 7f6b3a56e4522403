"""Read JSONL rows in three formats, tokenize them with loss masks, and batch them reproducibly.

Formats:
- text: {"text": ...}; loss on every token.
- prompt_completion: {"prompt": ..., "completion": ...}; loss on the completion only.
- messages: {"messages": [{"role", "content"}, ...]} rendered with the tokenizer's chat
  template; loss on the assistant turns only.

Bad rows stop the run with file:line (on_bad_row = "error") or are skipped and
counted by reason ("skip"); rows longer than max_length are truncated, dropped
and counted, or stop the run with file:line.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from loratui.data.builtin_data import builtin_dataset_path
from loratui.errors import Problem, UserInputError

IGNORE_INDEX = -100  # label value the loss skips (transformers' convention)


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]


@dataclass
class DataReport:
    rows_read: int = 0
    examples: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> rows
    truncated: int = 0
    dropped_too_long: int = 0

    def summary(self) -> str:
        parts = [f"{self.examples} examples from {self.rows_read} rows"]
        if self.skipped:
            reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))
            parts.append(f"{sum(self.skipped.values())} bad rows skipped ({reasons})")
        if self.truncated:
            parts.append(f"{self.truncated} truncated to max_length")
        if self.dropped_too_long:
            parts.append(f"{self.dropped_too_long} dropped as longer than max_length")
        return "; ".join(parts)

    def as_dict(self) -> dict:
        return {"rows_read": self.rows_read, "examples": self.examples, "skipped": dict(self.skipped),
                "truncated": self.truncated, "dropped_too_long": self.dropped_too_long}


class BadRow(Exception):
    """A row that cannot be used; the message says why."""


def load_examples(path: str, data_format: str, tokenizer, *, max_length: int, on_too_long: str,
                  on_bad_row: str, progress: Callable[[int, int], None] | None = None
                  ) -> tuple[list[Example], DataReport]:
    """Tokenized examples and the counts of what was skipped, dropped or truncated."""
    file = builtin_dataset_path(path) if path.startswith("builtin:") else Path(path)
    lines = _read_lines(file)
    report = DataReport()
    examples: list[Example] = []
    if data_format not in _ENCODERS:  # "minicpmv": rows with images, read by a vision-language family
        raise UserInputError(Problem("data.format", f'"{data_format}" rows carry images: they need a '
                                     "vision-language model (this one is a text model)"))
    encode = _ENCODERS[data_format]
    for index, (line_number, raw) in enumerate(lines):
        if progress and index % 256 == 0:
            progress(index, len(lines))
        if not raw.strip():
            continue
        report.rows_read += 1
        where = f"{file}:{line_number}"
        try:
            row = _parse_row(raw)
            example = encode(row, tokenizer)
        except BadRow as bad:
            if on_bad_row == "error":
                raise UserInputError(Problem(where, f"{bad} (set data.on_bad_row = \"skip\" to skip such rows)")) from None
            report.skipped[_reason_key(str(bad))] += 1
            continue
        if not any(label != IGNORE_INDEX for label in example.labels):
            if on_bad_row == "error":
                raise UserInputError(Problem(where, "no tokens to learn from (empty completion or no assistant "
                                             "turn)")) from None
            report.skipped["nothing to learn"] += 1
            continue
        if len(example.input_ids) > max_length:
            if on_too_long == "error":
                raise UserInputError(Problem(where, f"{len(example.input_ids)} tokens, longer than "
                                             f"data.max_length = {max_length} (on_too_long can be truncate "
                                             f"or drop)")) from None
            if on_too_long == "drop":
                report.dropped_too_long += 1
                continue
            example = Example(example.input_ids[:max_length], example.labels[:max_length])
            report.truncated += 1
            if not any(label != IGNORE_INDEX for label in example.labels):
                report.skipped["nothing to learn after truncation"] += 1
                report.truncated -= 1
                continue
        examples.append(example)
    return finish_reading(file, examples, report, len(lines), progress)


def finish_reading(file: Path, examples: list, report: DataReport, rows: int,
                   progress: Callable[[int, int], None] | None):
    """(examples, report) once every row is read; a file with no usable row is bad input, with its counts."""
    if progress:
        progress(rows, rows)
    report.examples = len(examples)
    if not examples:
        detail = f" ({report.summary()})" if report.rows_read else ""
        raise UserInputError(Problem(str(file), f"no usable training rows{detail}"))
    return examples, report


def _read_lines(file: Path) -> list[tuple[int, str]]:
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise UserInputError(Problem(str(file), "no such data file")) from None
    except OSError as exc:
        raise UserInputError(Problem(str(file), f"cannot be read: {exc.strerror}")) from None
    lines = []
    # A file's final newline ends its last row; it does not start another (progress counts rows).
    for number, raw in enumerate(data.removesuffix(b"\n").split(b"\n"), start=1):
        try:
            lines.append((number, raw.decode("utf-8")))
        except UnicodeDecodeError as exc:
            lines.append((number, _NotUtf8(f"not UTF-8 (byte {exc.start})")))
    return lines


class _NotUtf8(str):
    """A line that could not be decoded; parsing it reports why."""


def _parse_row(raw: str) -> dict:
    if isinstance(raw, _NotUtf8):
        raise BadRow(str(raw))
    try:
        row = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadRow(f"malformed JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise BadRow(f"expected a JSON object, got {type(row).__name__}")
    return row


def _reason_key(message: str) -> str:
    """Group skip reasons: 'malformed JSON (... at column 3)' -> 'malformed JSON'."""
    return message.split(" (")[0]


def _text_field(row: dict, name: str) -> str:
    if name not in row:
        raise BadRow(f"missing field {name!r}")
    value = row[name]
    if not isinstance(value, str):
        raise BadRow(f"field {name!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise BadRow(f"field {name!r} is empty")
    return value


def _encode_text(row: dict, tokenizer) -> Example:
    ids = tokenizer(_text_field(row, "text"), add_special_tokens=False)["input_ids"]
    ids = ids + [tokenizer.eos_token_id]
    return Example(ids, list(ids))


def _encode_prompt_completion(row: dict, tokenizer) -> Example:
    prompt = tokenizer(_text_field(row, "prompt"), add_special_tokens=False)["input_ids"]
    completion = tokenizer(_text_field(row, "completion"), add_special_tokens=False)["input_ids"]
    completion = completion + [tokenizer.eos_token_id]
    return Example(prompt + completion, [IGNORE_INDEX] * len(prompt) + completion)


def _encode_messages(row: dict, tokenizer) -> Example:
    """Render with the chat template; label the tokens of each assistant turn.

    Each assistant turn's span is found by rendering the conversation up to it
    (with the generation prompt) and through it: the difference is what the
    model must learn to say. Tokens are labelled by their character offsets.
    """
    messages = row.get("messages")
    if row.get("images"):
        raise BadRow("the row has images and the model is a text model (images need a vision-language model)")
    if messages is None:
        raise BadRow("missing field 'messages'")
    if not isinstance(messages, list) or not messages:
        raise BadRow("field 'messages' must be a non-empty list")
    for turn, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or \
                not isinstance(message.get("content"), str):
            raise BadRow(f"messages[{turn}] must be an object with string 'role' and 'content'")
        if message["role"] not in ("system", "user", "assistant", "tool"):
            raise BadRow(f"messages[{turn}].role {message['role']!r} is not system, user, assistant or tool")
        if not message["content"].strip():
            raise BadRow(f"messages[{turn}].content is empty")
    if tokenizer.chat_template is None:
        raise BadRow("the tokenizer has no chat template (use format = \"text\" or \"prompt_completion\")")
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for turn, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:turn], tokenize=False, add_generation_prompt=True) \
            if turn else ""
        through = tokenizer.apply_chat_template(messages[: turn + 1], tokenize=False)
        if not full.startswith(through) or not through.startswith(before):
            raise BadRow("the chat template does not render conversations prefix by prefix, so assistant "
                         "turns cannot be located")
        spans.append((len(before), len(through)))
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"] + [tokenizer.eos_token_id]
    labels = [token if any(start >= lo and start < hi for lo, hi in spans) else IGNORE_INDEX
              for token, (start, _end) in zip(encoded["input_ids"], encoded["offset_mapping"])]
    labels.append(tokenizer.eos_token_id if messages[-1]["role"] == "assistant" else IGNORE_INDEX)
    return Example(ids, labels)


_ENCODERS = {"text": _encode_text, "prompt_completion": _encode_prompt_completion,
             "messages": _encode_messages}


@dataclass
class DataPosition:
    """Where the stream stands: the next micro-batch is batch `batch` of epoch `epoch`."""

    epoch: int = 0
    batch: int = 0


class BatchStream:
    """Micro-batches in a seeded order that is a pure function of (seed, epoch).

    That makes exact resume cheap: the position (epoch, batch index) is all a
    checkpoint needs to store, whatever happened before.
    """

    def __init__(self, examples: list[Example], batch_size: int, *, seed: int, shuffle: bool,
                 pad_id: int, rank: int = 0, world_size: int = 1, group_by_length: bool = False):
        self.examples = examples
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.pad_id = pad_id
        self.rank = rank
        self.world_size = world_size
        self.position = DataPosition()
        # Which examples form each micro-batch is decided above; how they become tensors is
        # this callable's job: padded rows by default, packed rows (data/packing.py) where set.
        self.collate: Callable[[list[Example]], dict] = self.padded_collate
        self._group_by_length = group_by_length
        self._order_epoch = -1
        self._batches: list[list[int]] = []

    @property
    def group_by_length(self) -> bool:
        """Batches of similar lengths (data/batching.py), for padded batches."""
        return self._group_by_length

    @group_by_length.setter
    def group_by_length(self, value: bool) -> None:
        self._group_by_length = value
        self._order_epoch = -1  # the epoch's batches are cut anew

    def padded_collate(self, examples: list[Example]) -> dict:
        return collate(examples, self.pad_id)

    def unpacked(self) -> BatchStream:
        """A copy at the same position whose micro-batches are padded, one example a row (for per-row analysis)."""
        replica = copy.copy(self)
        replica.collate = replica.padded_collate
        return replica

    @property
    def batches_per_epoch(self) -> int:
        per_rank = len(self.examples) // self.world_size if self.world_size > 1 else len(self.examples)
        return max(1, -(-per_rank // self.batch_size))

    def next_batch(self) -> dict:
        if self.position.batch >= self.batches_per_epoch:
            self.position = DataPosition(self.position.epoch + 1, 0)
        indices = self._epoch_batches(self.position.epoch)[self.position.batch]
        self.position = DataPosition(self.position.epoch, self.position.batch + 1)
        return self.collate([self.examples[i] for i in indices])

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        if epoch != self._order_epoch:
            import torch

            order = list(range(len(self.examples)))
            generator = None
            if self.shuffle:
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                order = torch.randperm(len(self.examples), generator=generator).tolist()
            if self.world_size > 1:
                # Every rank sees a disjoint, equally long share (the remainder is left out).
                per_rank = len(order) // self.world_size
                order = order[self.rank * per_rank:(self.rank + 1) * per_rank]
            if self._group_by_length:
                from loratui.data.batching import length_grouped_batches

                lengths = [len(example.input_ids) for example in self.examples]
                self._batches = length_grouped_batches(order, lengths, self.batch_size, generator)
            else:
                self._batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
            self._order_epoch = epoch
        return self._batches

    def __iter__(self) -> Iterator[dict]:
        while True:
            yield self.next_batch()


def collate(examples: list[Example], pad_id: int) -> dict:
    """Right-pad to the longest example; padding is masked from attention and loss."""
    import torch

    longest = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(examples), longest), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}
