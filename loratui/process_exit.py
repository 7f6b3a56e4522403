"""How a loratui process ends: `sys.exit`, except for one rank of a multi-process run.

A rank of `accelerate launch` (gloo on CPUs, NCCL on GPUs) has, by the time
its main function returns, destroyed its process group, written its
checkpoint files and closed every event sink. What is left is the
interpreter's teardown, and there torch's distributed C++ objects (the DDP
reducer still holds the process group, gloo's transport keeps a thread) are
destroyed in no fixed order. Once in about fifty stopped two-rank runs on a
loaded 2-core machine that order aborted the rank (`terminate called without
an active exception`, SIGABRT) after the run had finished correctly, and
torchrun then reported the whole launch as failed and killed the other rank
mid-exit. So a rank flushes what Python still buffers and leaves with
`os._exit`, skipping that teardown; a single process exits normally.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn


def is_launched_rank() -> bool:
    """True in a process that torchrun / accelerate launch started as one of several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def exit_process(code: int | None) -> NoReturn:
    """End the process with `code`; a rank of a multi-process run skips the interpreter's teardown."""
    code = 0 if code is None else code
    if not is_launched_rank():
        sys.exit(code)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing left to say
            pass
    os._exit(code)
