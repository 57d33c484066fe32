"""The command line: a user error is one line on stderr and exit status 2; ``--debug``
shows the traceback. Run as a user runs it (a subprocess of ``python -m workbench.cli``)."""

import subprocess
import sys

import pytest

from workbench.core import paths


def run_cli(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workbench.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd or paths.ROOT, env=env)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str,
                          progress: bool = False) -> str:
    """Exit 2, no traceback, stderr is the one error line (after the progress bar and the
    kernel's start-up warnings when a notebook ran: ``progress``)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    if progress:
        lines = lines[-1:]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("workbench: error: "), lines[0]
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.mark.parametrize("args, needles", [
    (["notebook", "no_such_notebook"], ["no_such_notebook", "00_quickstart"]),
    (["notebook", "00_quickstart", "-p", "no_such_param", "1"], ["no_such_param", "seq_len"]),
    (["notebook", "00_quickstart", "-p", "seq_len", "[1,"], ["-p seq_len", "YAML"]),
    (["grid", "run", "no_such_spec"], ["no_such_spec", "pilot"]),
    (["grid", "status", "no_such_spec"], ["no_such_spec"]),
    (["grid", "run", "pilot", "--jobs", "0"], ["--jobs", "positive integer"]),
    (["grid", "run", "pilot", "--jobs", "two"], ["--jobs", "'two'"]),
    (["grid", "run", "pilot", "--timeout", "-5"], ["--timeout"]),
    (["grid", "run", "pilot", "--executor", "cloud"], ["--executor", "local"]),
    (["no_such_command"], ["no_such_command", "notebook"]),
    ([], ["command"]),
], ids=lambda v: " ".join(v) if isinstance(v, list) and v and isinstance(v[0], str) else None)
def test_user_errors_are_one_line_and_exit_2(args, needles, capsys):
    """In process (fast): ``main`` returns 2 or argparse exits 2, stderr is one line."""
    from workbench import cli

    try:
        status = cli.main(args)
    except SystemExit as exit_:
        status = exit_.code
    err = capsys.readouterr().err
    proc = subprocess.CompletedProcess(args, status, "", err)
    assert_one_line_error(proc, *needles)


def test_user_error_as_a_subprocess():
    """The same through the real entry point (``python -m workbench.cli``)."""
    assert_one_line_error(run_cli("grid", "run", "no_such_spec"), "no_such_spec")
    assert_one_line_error(run_cli("grid", "run", "pilot", "--jobs", "0"), "--jobs")


def test_debug_shows_the_traceback():
    proc = run_cli("--debug", "grid", "status", "no_such_spec")
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr
    assert "no_such_spec" in proc.stderr
    # after the subcommand too
    proc = run_cli("grid", "status", "no_such_spec", "--debug")
    assert "Traceback (most recent call last)" in proc.stderr


def test_error_inside_a_notebook_is_one_line(tmp_path):
    """A parameter value the notebook itself rejects (seq_len=1) reaches the user as the
    notebook's own error message, in one line, exit status 2."""
    proc = run_cli("notebook", "00_quickstart", "-p", "model", "tiny-llama", "-p", "corpus",
                   "lee", "-p", "seq_len", "1", "-p", "output_dir", str(tmp_path / "out"),
                   "-o", str(tmp_path / "00.ipynb"))
    assert_one_line_error(proc, "ValueError", "seq_len", progress=True)

