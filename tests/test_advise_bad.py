"""`loratui advise` on bad input, and on failures outside any one trial: one clear message, never a traceback.

Bad input (arguments, config, data, a run directory that cannot be written) is
exit 2, as everywhere in loratui. A failure that leaves no trial able to run
(the first model does not load, the step-0 checkpoint cannot be written) is
exit 1, with what went wrong in one line. A failure inside one trial is not
here: it fails that trial only (test_advise_measure.py).
"""

import resource

import pytest

from helpers import loratui_cli
from loratui.cli import main
from loratui.events.jsonl import read_events

FAST = "[run]\nname = \"advised\"\noutput_dir = \"runs\"\n[train]\nbatch_size = 2\n"


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.toml").write_text(FAST)
    return tmp_path


def advise(*args: str) -> int:
    return main(["advise", *args])


def test_bad_arguments_and_config_are_one_message_and_exit_2(work, capsys):
    cases = {("config.toml", "--steps", "0"): "error: --steps: 0: a trial needs at least one step",
             ("missing.toml",): "error: missing.toml: no such config file",
             ("config.toml", "--set", "train.batch_size=0"): "train.batch_size = 0 is not allowed",
             ("config.toml", "--set", "nope.key=1"): "--set: nope: unknown key"}
    for args, message in cases.items():
        assert advise(*args) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    with pytest.raises(SystemExit) as exit_:  # argparse's own message, its own exit 2
        advise("config.toml", "--steps", "many")
    assert exit_.value.code == 2 and "argument --steps: invalid int value: 'many'" in capsys.readouterr().err
    assert not (work / "runs").exists()


def test_a_run_directory_that_cannot_be_written_is_bad_input(work, capsys):
    (work / "runs").write_text("a file where the run directories should go\n")
    assert advise("config.toml", "--steps", "1") == 2
    err = capsys.readouterr().err
    assert err == f"error: run.output_dir: cannot write the advice into {work / 'runs' / 'advised'}: " \
                  f"Not a directory\n"


def test_bad_data_found_while_the_trials_set_up_is_bad_input(work, capsys):
    (work / "data.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}, '
                                     '{"role": "assistant", "content": "hello"}]}\nnot json\n')
    assert advise("config.toml", "--steps", "1", "--set", 'data.path="data.jsonl"') == 2
    err = capsys.readouterr().err
    assert "data.jsonl:2" in err and "Traceback" not in err
    assert not (work / "runs" / "advised" / "advice.json").exists()


def test_when_the_first_model_cannot_load_no_trial_runs_and_one_line_says_why(work):
    # Out of memory loading the bf16 model (injected): there is no start state for any trial.
    result = loratui_cli("advise", "config.toml", "--steps", "1", cwd=work,
                         env={"LORATUI_TEST_FAIL_LOADING": "bfloat16"})
    root = work / "runs" / "advised"
    error = "InjectedFault: injected failure loading the model in bfloat16 (LORATUI_TEST_FAIL_LOADING)"
    assert result.returncode == 1, result.stderr
    assert result.stderr.endswith(f"advise: the trials could not start (bf16 first): {error} "
                                  f"(the traceback: {root / 'advise' / 'events.jsonl'})\n")
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not (root / "advice.json").exists()
    failed = [e for e in read_events(root / "advise" / "events.jsonl") if e["type"] == "run_failed"]
    assert len(failed) == 1 and failed[0]["error"] == error
    assert failed[0]["traceback"].startswith("Traceback") and "load_base_model" in failed[0]["traceback"]


def test_a_step_0_checkpoint_that_cannot_be_written_stops_the_advice_cleanly(work, capsys):
    # Every trial starts from the step-0 checkpoint: the trials stop on a failed save even where the
    # config says checkpoint.on_error = "continue". A file size limit refuses the adapter (~150 KB).
    original = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, original[1]))
    try:
        code = advise("config.toml", "--steps", "1", "--set", 'checkpoint.on_error="continue"')
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, original)
    err = capsys.readouterr().err
    assert code == 1, err
    assert "advise: checkpoint could not be written: " in err and "File too large" in err
    assert "Traceback" not in err


def test_advice_json_that_cannot_be_written_is_one_message(work, capsys):
    blocked = work / "runs" / "advised" / "advice.json"
    (blocked / "in-the-way").mkdir(parents=True)  # a directory where advice.json goes
    assert advise("config.toml", "--steps", "1", "--json") == 2
    captured = capsys.readouterr()
    assert captured.err.endswith(f"error: run.output_dir: cannot write {blocked}: Is a directory\n")
    assert "Traceback" not in captured.err and captured.out == ""
    # The trials ran and their evidence stays.
    steps = [e for e in read_events(blocked.parent / "advise" / "events.jsonl") if e["type"] == "step"]
    assert {s["precision"] for s in steps} == {"bf16", "fp16", "fp32"}
