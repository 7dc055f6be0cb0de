"""Hostile PAM values through a real PAM stack: stored safely, never break the state file, shown escaped."""

import json
import os

import pytest

from reaper.state import leases
from tests.integration.pamstack import SERVICE, PamStack
from tests.integration.sshd import idle_reaper, status

NEWLINES_AND_ANSI = "evil\nuser\r\x1b[2J\x1b]0;owned\x07\x1b[31m"
BINARY = {"hex": bytes(range(1, 256)).hex()}  # every byte but NUL
HUGE = "A" * 100_000
BAD_UTF8 = {"hex": (b"\xff\xfe\xc3(" + b" 1 2 3").hex()}

CASES = {
    "newlines and ANSI escapes": dict(user=NEWLINES_AND_ANSI, rhost=NEWLINES_AND_ANSI, tty=NEWLINES_AND_ANSI,
                                      env={"SSH_CONNECTION": NEWLINES_AND_ANSI}),
    "binary": dict(user=BINARY, rhost=BINARY, tty=BINARY, env={"SSH_CONNECTION": BINARY}),
    # Linux-PAM itself refuses a PAM_RHOST or PAM_TTY this long (the session fails before any module runs),
    # so those two are tested at 100 KB by running the hook directly, below.
    "100 KB strings": dict(user=HUGE, env={"SSH_CONNECTION": HUGE, "SSH_AUTH_INFO_0": HUGE}),
    "invalid UTF-8": dict(user=BAD_UTF8, rhost=BAD_UTF8, tty=BAD_UTF8, env={"SSH_CONNECTION": BAD_UTF8}),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_values_are_stored_safely_and_shown_escaped(require_root, state_dir, config, name):
    config(f"inactivity_duration: 1h\nmin_session: off\nservices: [{SERVICE}]\n")
    stack = PamStack(state_dir)
    try:
        driver = stack.start(steps=["open", "wait-stdin", "close"], **CASES[name])
        from tests.integration.sshd import wait_for

        wait_for(lambda: os.path.exists(leases.state_path(state_dir)) and leases.read_state(state_dir)["leases"])
        state = leases.read_state(state_dir)  # valid JSON of the right format, or this raises
        (lease,) = state["leases"]
        for field in ("user", "rhost", "tty", "conn"):
            assert lease[field] is None or len(lease[field]) <= leases.MAX_FIELD
        with open(leases.state_path(state_dir), "rb") as f:
            raw = f.read()
        assert raw.isascii() and b"\n" not in raw and b"\x1b" not in raw

        st = status(config.path, state_dir)
        assert st["state"] == "active" and len(st["sessions"]) == 1
        text = idle_reaper(config.path, state_dir, "status")
        assert text.returncode == 0
        assert not any(ch in text.stdout for ch in "\x1b\r\x07\x00"), "a control character reached the screen"
        session_lines = [line for line in text.stdout.splitlines() if line.startswith("  counted")]
        assert len(session_lines) == 1, "one session must stay one line"
        raw_json = idle_reaper(config.path, state_dir, "status", "--json").stdout
        assert "\x1b" not in raw_json and json.loads(raw_json)["sessions"][0]["user"] == st["sessions"][0]["user"]
        out, _ = driver.communicate("\n", timeout=30)
        assert json.loads(out)["steps"] == [0, 0], "the PAM session must succeed whatever the values"
        state = leases.read_state(state_dir)
        assert state["leases"] == [] and len(state["closed"]) == 1, "the close must match the open"
    finally:
        stack.remove()


def test_100_kb_values_are_dropped_and_long_ones_clipped_when_run_as_pam_exec_runs_the_hook(require_root, state_dir):
    import subprocess

    from tests.conftest import HOOK_ARGV

    long = "x" * 3000  # within what the launcher passes (4096), over what a record keeps (MAX_FIELD)
    env = {"PAM_TYPE": "open_session", "PAM_SERVICE": "sshd", "PAM_USER": HUGE, "PAM_RHOST": long, "PAM_TTY": long,
           "SSH_CONNECTION": HUGE, "SSH_AUTH_INFO_0": "publickey ssh-ed25519 " + HUGE}  # fmt: skip
    done = subprocess.run([*HOOK_ARGV, "--state-dir", state_dir], env=env, capture_output=True)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    (lease,) = leases.read_state(state_dir)["leases"]
    assert (lease["user"], lease["conn"], lease["key"]) == (None, None, None), "the launcher drops 100 KB values"
    assert len(lease["rhost"]) == len(lease["tty"]) == leases.MAX_FIELD
