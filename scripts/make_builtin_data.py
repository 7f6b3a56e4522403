"""Regenerate the bundled datasets in loratui/data/builtin/ (deterministic; run by hand).

Small templated question/answer pairs: regular enough that a tiny model's loss
falls visibly within a couple of hundred CPU steps, varied enough not to be
memorised at once. The three files hold the same pairs in the three formats.
"""

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "loratui" / "data" / "builtin"
rng = random.Random(1234)

NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
                "eighteen", "nineteen", "twenty"]
ANIMALS = {"cow": "moo", "dog": "woof", "cat": "meow", "duck": "quack", "sheep": "baa", "owl": "hoot",
           "horse": "neigh", "pig": "oink", "lion": "roar", "frog": "croak", "bee": "buzz", "mouse": "squeak"}
COLOURS = {"banana": "yellow", "sky": "blue", "grass": "green", "snow": "white", "coal": "black",
           "tomato": "red", "carrot": "orange", "plum": "purple", "lemon": "yellow", "sea": "blue",
           "leaf": "green", "cherry": "red", "cloud": "white", "night": "black"}
OPPOSITES = {"hot": "cold", "big": "small", "up": "down", "fast": "slow", "light": "dark", "early": "late",
             "happy": "sad", "open": "closed", "full": "empty", "old": "new", "hard": "soft", "left": "right",
             "wet": "dry", "loud": "quiet", "high": "low", "near": "far"}
PLURALS = {"cat": "cats", "box": "boxes", "child": "children", "mouse": "mice", "foot": "feet",
           "city": "cities", "leaf": "leaves", "bus": "buses", "tooth": "teeth", "man": "men",
           "story": "stories", "wolf": "wolves", "glass": "glasses", "baby": "babies"}


def pair():
    kind = rng.choice(["add", "sub", "animal", "colour", "opposite", "plural", "count", "spell", "next"])
    if kind == "add":
        a, b = rng.randint(0, 10), rng.randint(0, 10)
        return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
    if kind == "sub":
        a = rng.randint(0, 20)
        b = rng.randint(0, a)
        return f"What is {a} minus {b}?", f"{a} minus {b} is {a - b}."
    if kind == "animal":
        animal = rng.choice(list(ANIMALS))
        return f"What sound does a {animal} make?", f"A {animal} says {ANIMALS[animal]}."
    if kind == "colour":
        thing = rng.choice(list(COLOURS))
        return f"What colour is the {thing}?", f"The {thing} is {COLOURS[thing]}."
    if kind == "opposite":
        word = rng.choice(list(OPPOSITES))
        return f"What is the opposite of {word}?", f"The opposite of {word} is {OPPOSITES[word]}."
    if kind == "plural":
        word = rng.choice(list(PLURALS))
        return f"What is the plural of {word}?", f"One {word}, two {PLURALS[word]}."
    if kind == "count":
        start = rng.randint(0, 14)
        end = start + rng.randint(2, 6)
        return f"Count from {start} to {end}.", ", ".join(str(n) for n in range(start, end + 1)) + "."
    if kind == "spell":
        word = rng.choice(list(ANIMALS) + list(OPPOSITES))
        return f"Spell the word {word}.", "-".join(word) + "."
    n = rng.randint(0, 19)
    return f"Which number comes after {NUMBER_WORDS[n]}?", f"After {NUMBER_WORDS[n]} comes {NUMBER_WORDS[n + 1]}."


def main(rows: int = 2000) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    pairs = [pair() for _ in range(rows)]
    with open(OUT / "tiny-text.jsonl", "w") as f:
        for q, a in pairs:
            f.write(json.dumps({"text": f"Question: {q}\nAnswer: {a}"}) + "\n")
    with open(OUT / "tiny-qa.jsonl", "w") as f:
        for q, a in pairs:
            f.write(json.dumps({"prompt": f"Question: {q}\nAnswer:", "completion": f" {a}"}) + "\n")
    with open(OUT / "tiny-chat.jsonl", "w") as f:
        for i in range(0, rows, 2):
            (q1, a1), (q2, a2) = pairs[i], pairs[i + 1]
            messages = [{"role": "system", "content": "You answer in one short sentence."},
                        {"role": "user", "content": q1}, {"role": "assistant", "content": a1}]
            if i % 4 == 0:  # every other conversation has a second turn
                messages += [{"role": "user", "content": q2}, {"role": "assistant", "content": a2}]
            f.write(json.dumps({"messages": messages}) + "\n")


if __name__ == "__main__":
    main()
