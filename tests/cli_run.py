"""The `mmmerge` command run in the test's process, and the check of a one-line error, for every CLI test."""

import contextlib
import io
import subprocess

from mmmerge.cli import main


def run(*args):
    """The command in this process (importing torch in a new one costs seconds); `test_cli.test_real_process`
    covers that path."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def one_line_error(r, *needles):
    """The run failed with exit code 2 and one `error: ...` line holding every needle, and no traceback."""
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr
