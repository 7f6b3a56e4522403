"""Errors a user can fix: shown as one clear message and exit code 2, never a traceback."""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_TRAINING_FAILED = 1
EXIT_BAD_INPUT = 2


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the user's input, and where it is."""

    where: str  # "config.toml:12 train.precision", "--set train.lr", "data.jsonl:7"
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class UserInputError(Exception):
    """Bad config, data or arguments: every problem found, reported at once."""

    def __init__(self, problems: list[Problem] | Problem | str, *, headline: str | None = None):
        if isinstance(problems, str):
            problems = [Problem("loratui", problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems = list(problems)
        self.headline = headline
        super().__init__(self.render())

    def render(self) -> str:
        if len(self.problems) == 1 and not self.headline:
            return f"error: {self.problems[0]}"
        head = self.headline or f"{len(self.problems)} problems found"
        return "error: " + head + "\n" + "\n".join(f"  {p}" for p in self.problems)
