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
PAM_CONFIG = REPO / "packaging" / "pam-configs" / "idle-reaper"


def deployed_interpreter():
    """Return the interpreter and flags the package's PAM profile runs the hook with, e.g. [python3, -I, -S].

    Read from packaging/pam-configs/idle-reaper, so the benchmarks run the hook exactly as it is installed.
    """
    for line in PAM_CONFIG.read_text().splitlines():
        words = line.split()
        if "pam_exec.so" in words:
            argv = words[words.index("pam_exec.so") + 1 :]
            argv = [w for w in argv if w not in ("quiet", "seteuid", "stdout") and not w.startswith("log=")]
            return argv[: argv.index(next(w for w in argv if w.endswith("pam-session")))]
    raise RuntimeError(f"no pam_exec line in {PAM_CONFIG}")


HOOK_INTERPRETER = deployed_interpreter()
HOOK_ARGV = [*HOOK_INTERPRETER, str(HOOK)]  # then --state-dir DIR
# The floor of any Python hook: the same interpreter with the same flags, doing nothing.
NOOP_ARGV = [*HOOK_INTERPRETER, "-c", "pass"]
NOOP_SHOWN = "`python3 " + " ".join(NOOP_ARGV[1:]) + "`"
