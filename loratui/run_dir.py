"""The run directory: one place for everything a run writes, created private to the user.

    <output_dir>/<name>/
      config.toml      the resolved config (every key)
      events.jsonl     the event log (the trainer writes, readers tail)
      control.jsonl    commands to the trainer (the dashboard or a person appends)
      trainer.log      the trainer process's own stdout/stderr
      checkpoints/step-000050/   complete checkpoints (manifest written last)
      adapter/         the final LoRA adapter (peft.PeftModel.from_pretrained loads it)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from loratui.errors import Problem, UserInputError

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
PRIVATE_UMASK = 0o077  # what the trainer writes gets the same modes


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def pending_config(self) -> Path:
        """A --resume's config, kept aside until the trainer accepts the checkpoint with it."""
        return self.root / "config.pending.toml"

    def config_to_load(self) -> Path:
        return self.pending_config if self.pending_config.is_file() else self.config

    def adopt_pending_config(self) -> None:
        if self.pending_config.is_file():
            os.replace(self.pending_config, self.config)

    def discard_pending_config(self) -> None:
        self.pending_config.unlink(missing_ok=True)

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def control(self) -> Path:
        return self.root / "control.jsonl"

    @property
    def trainer_log(self) -> Path:
        return self.root / "trainer.log"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def advice(self) -> Path:
        return self.root / "advice.json"

    def exists(self) -> bool:
        return self.events.exists() or self.checkpoints.exists()

    def create(self) -> None:
        """Make the directories, private to the user (0700), and the files that readers open."""
        old_umask = os.umask(PRIVATE_UMASK)
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
            self.checkpoints.mkdir(exist_ok=True, mode=PRIVATE_DIR)
            for path in (self.events, self.control):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE))
        finally:
            os.umask(old_umask)
        os.chmod(self.root, PRIVATE_DIR)

    def write_private(self, path: Path, text: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)


def run_dir_for(config) -> RunDir:
    return RunDir(Path(config.run.output_dir) / config.run.name)


def prepare_run_dir(config, *, resume: bool, config_text: str) -> RunDir:
    """Create the run directory, or refuse to reuse one without --resume (overwriting nothing)."""
    run_dir = run_dir_for(config)
    if run_dir.exists() and not resume:
        raise UserInputError(Problem(
            str(run_dir.root),
            "run directory already exists; continue it with --resume, or choose another name "
            "(--set run.name=...)"))
    if resume and not run_dir.exists():
        raise UserInputError(Problem(str(run_dir.root), "nothing to resume: the run directory does not exist "
                                     "(drop --resume to start a new run)"))
    try:
        run_dir.create()
    except OSError as exc:  # output_dir is a file, read-only, full: say where, not a traceback
        raise UserInputError(Problem(f"run.output_dir = {str(config.run.output_dir)!r}",
                                     f"cannot create the run directory {run_dir.root}: "
                                     f"{exc.strerror or exc}")) from None
    # A refused resume (changed model, say) must leave the run's own config as it was.
    run_dir.write_private(run_dir.pending_config if resume else run_dir.config, config_text)
    return run_dir
