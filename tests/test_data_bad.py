"""Bad training data: exact counts of what was skipped, dropped or truncated, or an error at file:line.

Rows are written by hand so that every count is known in advance: short rows
are a few tokens, long rows hundreds, against data.max_length = 32. The real
tokenizer of the built-in model reads them through the real loader, and the
command line is checked end to end for exit 2 and the row's file:line.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from loratui import cli
from loratui.data.dataset import load_examples
from loratui.errors import UserInputError
from loratui.model.loading import load_tokenizer, resolve_model_path
from test_reliability_support import single_cpu_thread  # noqa: F401 (an autouse fixture)

MAX_LENGTH = 32
LONG = "many words in a very long row " * 40  # ~280 tokens


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_model_path("builtin:tiny-llama"), trust_remote_code=False)


def write_rows(path: Path, rows: list) -> Path:
    """Rows are dicts (written as JSON), str (written as is) or bytes (written raw)."""
    data = b"".join((row if isinstance(row, bytes) else
                     (row if isinstance(row, str) else json.dumps(row)).encode()) + b"\n" for row in rows)
    path.write_bytes(data)
    return path


TEXT_ROWS = [
    {"text": "What is one plus one? Two."},           # 1 good
    '{"text": "an unterminated object"',              # 2 malformed JSON
    {"prompt": "no text field here"},                 # 3 missing field
    {"text": 5},                                      # 4 wrong type
    {"text": ""},                                     # 5 empty string
    {"text": "   "},                                  # 6 blank string
    b'{"text": "caf\xe9 au lait"}',                   # 7 not UTF-8
    "[1, 2, 3]",                                      # 8 not an object
    "",                                               # 9 blank line: not a row at all
    {"text": "What is two plus two? Four."},          # 10 good
    {"text": None},                                   # 11 wrong type
    '{"text": NaN}',                                  # 12 a NaN literal where a string belongs
    {"text": LONG},                                   # 13 too long
    {"text": LONG + " and then some"},                # 14 too long
]
TEXT_SKIPPED = Counter({"malformed JSON": 1, "missing field 'text'": 1, "field 'text' must be a string, got int": 1,
                        "field 'text' is empty": 2, "not UTF-8": 1, "expected a JSON object, got list": 1,
                        "field 'text' must be a string, got NoneType": 1,
                        "field 'text' must be a string, got float": 1})


def load(path: Path, tokenizer, data_format: str = "text", on_bad_row: str = "skip", on_too_long: str = "truncate"):
    return load_examples(str(path), data_format, tokenizer, max_length=MAX_LENGTH, on_too_long=on_too_long,
                         on_bad_row=on_bad_row)


@pytest.mark.parametrize("on_too_long,examples,truncated,dropped", [
    ("truncate", 4, 2, 0),
    ("drop", 2, 0, 2),
])
def test_bad_rows_are_skipped_and_counted_by_reason(tmp_path, tokenizer, on_too_long, examples, truncated, dropped):
    path = write_rows(tmp_path / "rows.jsonl", TEXT_ROWS)
    found, report = load(path, tokenizer, on_too_long=on_too_long)
    assert report.rows_read == 13  # the blank line is not a row
    assert report.skipped == TEXT_SKIPPED
    assert (report.examples, report.truncated, report.dropped_too_long) == (examples, truncated, dropped)
    assert len(found) == examples and all(len(e.input_ids) <= MAX_LENGTH for e in found)
    assert "9 bad rows skipped" in report.summary()


@pytest.mark.parametrize("line,reason", [
    (2, "malformed JSON"), (3, "missing field 'text'"), (4, "must be a string, got int"),
    (5, "field 'text' is empty"), (7, "not UTF-8"), (8, "expected a JSON object"),
])
def test_with_on_bad_row_error_the_first_bad_row_is_named_by_file_and_line(tmp_path, tokenizer, line, reason):
    rows = [TEXT_ROWS[0], TEXT_ROWS[line - 1], TEXT_ROWS[9]]
    path = write_rows(tmp_path / "rows.jsonl", rows)
    with pytest.raises(UserInputError) as error:
        load(path, tokenizer, on_bad_row="error")
    assert f"{path}:2" in str(error.value) and reason in str(error.value)
    assert 'data.on_bad_row = "skip"' in str(error.value)


def test_with_on_too_long_error_the_long_row_is_named(tmp_path, tokenizer):
    path = write_rows(tmp_path / "rows.jsonl", [TEXT_ROWS[0], TEXT_ROWS[9], {"text": LONG}])
    with pytest.raises(UserInputError) as error:
        load(path, tokenizer, on_too_long="error")
    assert f"{path}:3" in str(error.value) and f"data.max_length = {MAX_LENGTH}" in str(error.value)


def test_prompt_completion_rows(tmp_path, tokenizer):
    rows = [
        {"prompt": "One plus one?", "completion": "Two."},    # good
        {"prompt": "No completion"},                          # missing field
        {"prompt": "Empty completion", "completion": ""},     # empty
        {"prompt": 3, "completion": "Three."},                # wrong type
        {"prompt": LONG, "completion": "lost"},               # truncation cuts the whole completion away
        {"prompt": "Short", "completion": LONG},              # truncated, still has labels
    ]
    path = write_rows(tmp_path / "rows.jsonl", rows)
    found, report = load(path, tokenizer, data_format="prompt_completion")
    assert report.skipped == Counter({"missing field 'completion'": 1, "field 'completion' is empty": 1,
                                      "field 'prompt' must be a string, got int": 1,
                                      "nothing to learn after truncation": 1})
    assert (report.examples, report.truncated) == (2, 1)


def test_messages_rows(tmp_path, tokenizer):
    rows = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]},  # good
        {"messages": "hello"},                                                                         # not a list
        {"messages": []},                                                                              # empty
        {"messages": [{"role": "wizard", "content": "Hi"}]},                                           # bad role
        {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}]},       # empty content
        {"messages": [{"role": "user"}]},                                                              # no content
        {"messages": [{"role": "user", "content": "Only a question"}]},                                # nothing to learn
        {"conversation": []},                                                                          # missing field
    ]
    path = write_rows(tmp_path / "rows.jsonl", rows)
    found, report = load(path, tokenizer, data_format="messages")
    assert report.examples == 1 and report.rows_read == 8
    assert report.skipped == Counter({"field 'messages' must be a non-empty list": 2,
                                      "messages[0].role 'wizard' is not system, user, assistant or tool": 1,
                                      "messages[0].content is empty": 1,
                                      "messages[0] must be an object with string 'role' and 'content'": 1,
                                      "nothing to learn": 1, "missing field 'messages'": 1})


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"], ids=["empty file", "blank lines only"])
def test_a_file_without_rows_is_refused(tmp_path, tokenizer, content):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(content)
    with pytest.raises(UserInputError) as error:
        load(path, tokenizer)
    assert str(path) in str(error.value) and "no usable training rows" in str(error.value)


def test_a_file_of_only_bad_rows_is_refused_with_the_counts(tmp_path, tokenizer):
    path = write_rows(tmp_path / "rows.jsonl", TEXT_ROWS[1:8])
    with pytest.raises(UserInputError) as error:
        load(path, tokenizer)
    assert "no usable training rows (0 examples from 7 rows; 7 bad rows skipped" in str(error.value)


def run_cli(tmp_path, capsys, *sets: str) -> tuple[int, str]:
    config = tmp_path / "config.toml"
    config.write_text('[data]\npath = "rows.jsonl"\nformat = "text"\nmax_length = 32\n'
                      '[train]\nprecision = "fp32"\nmax_steps = 1\nbatch_size = 2\nwarmup_steps = 0\n')
    code = cli.main(["run", str(config), "--headless", *(f"--set={s}" for s in sets)])
    out, err = capsys.readouterr()
    return code, out + err


def test_the_command_line_names_a_bad_row_and_exits_2(tmp_path, capsys):
    write_rows(tmp_path / "rows.jsonl", TEXT_ROWS)
    code, output = run_cli(tmp_path, capsys)
    assert code == 2 and "Traceback" not in output
    assert f"{tmp_path / 'rows.jsonl'}:2: malformed JSON" in output


def test_a_run_that_skips_bad_rows_reports_the_counts_in_its_data_event(tmp_path, capsys):
    write_rows(tmp_path / "rows.jsonl", TEXT_ROWS)
    code, output = run_cli(tmp_path, capsys, 'data.on_bad_row="skip"', 'data.on_too_long="drop"')
    assert code == 0, output
    from loratui.events.jsonl import read_events

    data = next(e for e in read_events(tmp_path / "runs" / "loratui-run" / "events.jsonl") if e["type"] == "data")
    assert data["skipped"] == dict(TEXT_SKIPPED)
    assert (data["rows_read"], data["examples"], data["dropped_too_long"], data["truncated"]) == (13, 2, 2, 0)
