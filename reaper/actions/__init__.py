"""Run the configured action: an argv list, never through a shell. Also the package of what a tick does
besides deciding: the history log (history.py) and the Prometheus textfile (metrics.py).

The reaper's own unit has no network (IPAddressDeny=any, no AF_INET). A command of the admin's (one that asks
a control plane to stop this machine, say) may need it, so under systemd it runs in a unit of its own,
idle-reaper-action.service, which has its own sandbox; the reaper starts that unit and waits for it.
Poweroff is only a call to systemd, and runs from the reaper itself.
"""

import os

from reaper.errors import ReaperError

ACTION_TIMEOUT = 120
ACTION_UNIT = "idle-reaper-action.service"


def under_systemd(environ=os.environ):
    """True if this runs as a systemd unit (which sets INVOCATION_ID) on a system that systemd manages."""
    return bool(environ.get("INVOCATION_ID")) and os.path.isdir("/run/systemd/system")


def run(argv, in_unit=False):
    """Run the action, or with `in_unit` start ACTION_UNIT (which runs it) and wait for it.

    Return its output. Raise ReaperError if it can't start, times out or fails.
    """
    if in_unit:
        # The unit's own TimeoutStartSec bounds the action; this waits a little longer for systemctl.
        return run_command(["systemctl", "start", ACTION_UNIT], ACTION_TIMEOUT + 30, f"action {list(argv)}")
    return run_command(argv, ACTION_TIMEOUT, f"action {list(argv)}")


def run_command(argv, timeout, what):
    """Run argv with no stdin and wait up to timeout seconds; return its output (stdout and stderr).

    Raise ReaperError, its text starting with `what`, if it can't start, times out or exits non-zero.
    """
    # Imported here: every tick imports this package (the notice, history, metrics); only one that acts needs it.
    import subprocess  # noqa: S404 - an argv list from the root-owned config or our own, no shell

    try:
        done = subprocess.run(  # noqa: S603 - argv list, shell=False
            list(argv), stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
        )
    except OSError as e:
        raise ReaperError(f"{what} could not start: {e.strerror}") from None
    except subprocess.TimeoutExpired:
        raise ReaperError(f"{what} did not finish within {timeout}s") from None
    output = (done.stdout + done.stderr).decode("utf-8", "replace").strip()
    if done.returncode != 0:
        raise ReaperError(f"{what} failed with exit status {done.returncode}: {output[-500:]}")
    return output
