"""Run the ``fedsilo`` command line in-process and capture what it printed."""

from __future__ import annotations

import contextlib
import io

from fedsilo.cli import main


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``fedsilo *argv``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()
