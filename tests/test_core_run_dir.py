"""A run directory that cannot be created is bad input: one line naming run.output_dir, exit 2."""

from helpers import ROOT, loratui_cli

EXAMPLE = str(ROOT / "config.example.toml")


def test_an_output_dir_that_is_a_file_is_one_clear_error(tmp_path):
    not_a_dir = tmp_path / "runs"
    not_a_dir.write_text("a file where the runs should go\n")
    result = loratui_cli("run", EXAMPLE, "--headless", "--set", f"run.output_dir={not_a_dir}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "run.output_dir" in error[0] and "Not a directory" in error[0]
    assert not_a_dir.read_text() == "a file where the runs should go\n"  # nothing lost
