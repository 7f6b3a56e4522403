"""builtin:tiny-chat-longtail: conversations whose lengths have a long tail, for padding and packing.

Real instruction data is mostly short rows with a few long ones: padding every
batch to its longest row then wastes most of the computed tokens. This data set
strings the question/answer pairs of builtin:tiny-chat into conversations of a
Pareto-distributed number of turns (most have one or two, a few have up to
MAX_TURNS), so the built-in tokenizer's lengths run from about 20 tokens to
about the default data.max_length (256). The file is generated from a fixed
seed and shipped; `python -m loratui.data.builtin_longtail` writes it again
(tests/test_packing.py checks that the shipped file is what this writes).
"""

from __future__ import annotations

import json
import random

from loratui.data.builtin_data import builtin_dataset_path

NAME = "builtin:tiny-chat-longtail"
SEED = 1234
ROWS = 1000
MAX_TURNS = 10  # at most about 250 tokens with the built-in tokenizer, within the default max_length
TAIL_SHAPE = 1.1  # Pareto shape: P(turns >= n) = n ** -1.1
SYSTEM = "You answer in one short sentence."


def question_answer_pairs() -> list[tuple[str, str]]:
    """Every (user, assistant) pair of builtin:tiny-chat, in file order."""
    pairs = []
    with open(builtin_dataset_path("builtin:tiny-chat"), encoding="utf-8") as file:
        for line in file:
            turns = [m for m in json.loads(line)["messages"] if m["role"] != "system"]
            pairs += [(turns[i]["content"], turns[i + 1]["content"]) for i in range(0, len(turns) - 1, 2)]
    return pairs


def rows() -> list[dict]:
    rng = random.Random(SEED)
    pairs = question_answer_pairs()
    out = []
    for _ in range(ROWS):
        turns = min(MAX_TURNS, int(rng.paretovariate(TAIL_SHAPE)))
        messages = [{"role": "system", "content": SYSTEM}]
        for question, answer in rng.sample(pairs, turns):
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        out.append({"messages": messages})
    return out


def render() -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows())


if __name__ == "__main__":
    builtin_dataset_path(NAME).write_text(render(), encoding="utf-8")
