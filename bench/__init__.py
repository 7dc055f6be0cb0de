"""Benchmarks of idle-reaper against the targets of issue 6: `python -m bench` (or `make bench`) prints the table.

Every figure is a median with its spread, measured side by side with what it is compared to, in one run and
interleaved, because the machine is shared and noisy. Nothing here asserts a time. See BENCHMARKS.md.
"""

import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent
HOOK = REPO / "hooks" / "pam-session"
# What the Debian package runs: Debian's interpreter, with python3-filelock/yaml/humanfriendly from Debian.
SYSTEM_PYTHON = "/usr/bin/python3"
# The project venv: the same interpreter with the PyPI versions (filelock 4.x), for comparison.
VENV_PYTHON = str(REPO / ".venv" / "bin" / "python")
