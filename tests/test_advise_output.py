"""What `loratui advise` prints while it works and after: progress lines, the plain table (no training: fast)."""

import io

from loratui.advise.cli import ConsoleProgress
from loratui.advise.render import plain_text
from loratui.advise.trials import TrialPlan

BF16 = TrialPlan("bf16", "bf16", "fp32")


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_rewrites_one_line_per_trial_on_a_terminal():
    stream = Terminal()
    progress = ConsoleProgress(stream)
    for step in (1, 2, 3):
        progress.trial_step(BF16, 0, 2, step, 3)
    progress.trial_step(BF16, 1, 2, 1, 3)
    progress.note("fp16: not supported on this machine")
    assert stream.getvalue() == ("\radvise: trial 1 of 2 (bf16): step 1/3\radvise: trial 1 of 2 (bf16): step 2/3"
                                 "\radvise: trial 1 of 2 (bf16): step 3/3\n\radvise: trial 2 of 2 (bf16): step 1/3"
                                 "\nadvise: fp16: not supported on this machine\n")


def test_progress_prints_whole_lines_without_a_terminal():
    stream = io.StringIO()
    progress = ConsoleProgress(stream)
    for step in range(0, 31):
        progress.trial_step(BF16, 0, 1, step, 30)
    assert stream.getvalue().splitlines() == [f"advise: trial 1 of 1 (bf16): step {s}/30" for s in (0, 10, 20, 30)]


def test_plain_table_marks_unsupported_trials_and_names_the_adapter_dtype(tmp_path):
    measured = {"verdict": "healthy", "support": "native", "tokens_per_s": 1234.5, "peak_memory_mib": 512.0,
                "final_loss": 2.5, "skipped_steps": 0, "skipped_after_calibration": 0, "final_scale": None,
                "fidelity_cosine": None, "relative_error": None, "underflow_share": None, "fp16_headroom": None,
                "stale_share": 0.0, "seconds": 3.2, "steps_done": 30, "memory_measure": "cuda_peak_allocated"}
    unsupported = {"verdict": "unsupported", "support": "unsupported", "steps_done": 0, "memory_measure": None}
    advice = {"recommendation": "fp32", "adapter_dtype": "fp32", "reasons": ["fp32 is the only one here"],
              "events": "advise/events.jsonl",
              "trials": {"bf16": unsupported, "bf16-pure": unsupported, "fp32": measured}}
    text = plain_text(advice, tmp_path)
    lines = text.splitlines()
    assert lines[0].split() == ["bf16", "bf16-pure", "fp32"]
    assert lines[1].split() == ["verdict", "unsupported", "unsupported", "healthy"]
    assert lines[3].split() == ["tokens/s", "-", "-", "1234"]
    assert 'recommendation: fp32 with train.adapter_dtype = "fp32"' in text
    assert "  - fp32 is the only one here" in text
    assert "peak resident memory" not in text  # CUDA's own peak: no caveat needed
