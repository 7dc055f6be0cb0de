"""Benchmarks of idle-reaper against the targets of issue 6: `python -m bench` (or `make bench`) prints the table.

Every figure is a median with its spread, measured side by side with what it is compared to, in one run and
interleaved, because the machine is shared and noisy. Nothing here asserts a time. See BENCHMARKS.md.
"""

import pathlib

from tests.conftest import build_launcher

REPO = pathlib.Path(__file__).resolve().parent.parent
# What the Debian package runs: Debian's interpreter, with python3-filelock/yaml/humanfriendly from Debian.
SYSTEM_PYTHON = "/usr/bin/python3"
# The project venv: the same interpreter with the PyPI versions (filelock 4.x), for comparison.
VENV_PYTHON = str(REPO / ".venv" / "bin" / "python")
# The two arms every hook figure compares, run as pam_exec runs them:
# - "ours": what the package's PAM profile runs (/usr/libexec/idle-reaper/pam-session), built for this
#   checkout: the static launcher, which execs `/usr/bin/python3 -I -S hooks/pam-session` with a fixed
#   environment. Then --state-dir DIR.
HOOK_ARGV = [str(build_launcher())]
# - "pass": the floor of any Python hook, the interpreter with the hook's flags doing nothing, started by
#   pam_exec directly (no launcher).
NOOP_ARGV = [SYSTEM_PYTHON, "-I", "-S", "-c", "pass"]
NOOP_SHOWN = "`python3 " + " ".join(NOOP_ARGV[1:]) + "`"
