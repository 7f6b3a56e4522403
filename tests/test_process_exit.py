"""A rank of a multi-process run leaves without the interpreter's teardown; a single process exits normally.

Why: loratui/process_exit.py (torch's distributed C++ objects can abort a rank
while the interpreter tears them down, after the run has finished).
"""

import os
import subprocess
import sys

import pytest

SCRIPT = """
import atexit
from loratui.process_exit import exit_process
atexit.register(lambda: print("teardown", flush=True))
print("all said", end="")  # left in Python's buffer: exit_process must flush it
exit_process(3)
"""


def run_script(world_size: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WORLD_SIZE": world_size}
    return subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize("world_size", ["2", "8"])
def test_a_rank_flushes_its_output_keeps_its_exit_code_and_skips_the_teardown(world_size):
    result = run_script(world_size)
    assert result.returncode == 3, result.stderr
    assert result.stdout == "all said"


def test_a_single_process_exits_with_the_interpreters_teardown():
    result = run_script("1")
    assert result.returncode == 3, result.stderr
    assert result.stdout == "all saidteardown\n"
