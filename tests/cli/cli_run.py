"""Running the real `pyserving` CLI in a subprocess, as an operator would."""

from __future__ import annotations

import os
import subprocess
import sys

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}


def pyserving(*args: object, timeout: float = 60, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pyserving", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**ENV, **(env or {})})


def one_line_error(result: subprocess.CompletedProcess[str], prog: str) -> str:
    """The error text of a failed command, after checking it failed the way a CLI should: exit code 1, one line
    on stderr, no traceback, nothing on stdout."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    assert result.stdout == ""
    return lines[0]
