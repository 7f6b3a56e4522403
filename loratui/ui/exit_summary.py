"""What a run leaves behind, said on the way out: the adapter, the newest checkpoint, the exact commands.

Printed to the shell when the dashboard exits from an ended run, and shown in
the failure panel, so nobody has to remember a run directory's path.
"""

from __future__ import annotations

from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from loratui.run_dir import RunDir
from loratui.ui.run_files import list_checkpoints


def where_it_stands(run_dir: RunDir) -> str:
    """What a finished, stopped or failed run leaves: the adapter, the newest checkpoint, how to go on."""
    lines = []
    if (run_dir.adapter / "adapter_config.json").is_file():
        lines.append(f"  adapter:           {run_dir.adapter}")
    checkpoints = list_checkpoints(run_dir.checkpoints)
    if checkpoints:
        lines.append(f"  newest checkpoint: {checkpoints[0].path} (step {checkpoints[0].step})")
        lines.append(f"  resume:            {resume_command(run_dir)}")
    lines.append(f"  look again:        loratui watch {run_dir.root}")
    return "\n".join(lines)


def resume_command(run_dir: RunDir) -> str:
    """The exact command that resumes this run from its newest checkpoint.

    The run's resolved config.toml names its own output_dir and name; when the
    directory has moved since (copied, renamed), the command says where it is now.
    """
    command = f"loratui run {run_dir.root / 'config.toml'} --resume"
    try:
        run = tomllib.loads((run_dir.root / "config.toml").read_text()).get("run") or {}
        here = Path(run.get("output_dir", "")) / str(run.get("name", ""))
    except (OSError, ValueError):
        return command
    if here.resolve() != run_dir.root.resolve():
        command += f" --set run.output_dir={run_dir.root.parent} --set run.name={run_dir.root.name}"
    return command
