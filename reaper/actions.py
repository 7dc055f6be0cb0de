"""Run the configured action: an argv list, never through a shell."""

import subprocess  # noqa: S404 - an argv list from the root-owned config, no shell

from reaper.errors import ReaperError

ACTION_TIMEOUT = 120


def run(argv):
    """Run the action. Return its output. Raise ReaperError if it can't start, times out or fails."""
    try:
        done = subprocess.run(  # noqa: S603 - argv list, shell=False
            list(argv), stdin=subprocess.DEVNULL, capture_output=True, timeout=ACTION_TIMEOUT, check=False
        )
    except OSError as e:
        raise ReaperError(f"action {list(argv)} could not start: {e.strerror}") from None
    except subprocess.TimeoutExpired:
        raise ReaperError(f"action {list(argv)} did not finish within {ACTION_TIMEOUT}s") from None
    output = (done.stdout + done.stderr).decode("utf-8", "replace").strip()
    if done.returncode != 0:
        raise ReaperError(f"action {list(argv)} failed with exit status {done.returncode}: {output[-500:]}")
    return output
