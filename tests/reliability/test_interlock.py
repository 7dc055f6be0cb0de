"""The safety interlock: before acting, the live system is checked on its own, independently of the state file.

Each test makes the action due at once (inactivity_duration 1s, booted long ago) and then shows a real SSH
session that the state does not explain stops it.
"""

import os
import socket
import time

import pytest

from reaper.state import leases
from tests.conftest import REPO, cli_env
from tests.integration.sshd import Sshd, end, idle_reaper, status
from tests.reliability.conftest import due_config

READY = "ready"
HOLD = f"echo {READY}; read x"


def assert_blocked(config, state_dir, marker, user):
    """reap must not act, must say why, and status must not read idle."""
    st = status(config.path, state_dir)
    assert st["state"] != "idle", st
    done = idle_reaper(config.path, state_dir, "reap")
    assert done.returncode == 4, done.stderr
    assert "not recorded by the hook" in done.stderr and user in done.stderr
    assert not os.path.exists(marker), "powered off under a connected user"
    after = status(config.path, state_dir)
    assert after["state"] == "active", "the reaper records the session it found, so it is counted from now on"
    (s,) = [s for s in after["sessions"] if s["user"] == user]
    assert s["counted"] and s["source"] == "live"
    for _ in range(2):  # and it stays that way, tick after tick
        assert idle_reaper(config.path, state_dir, "reap").returncode == 0
        assert not os.path.exists(marker)


def test_state_deleted_while_a_real_session_is_open(sshd, config, state_dir, marker):
    config(due_config(marker))
    client = sshd.start("irt-alice", HOLD, ready=READY)
    assert status(config.path, state_dir)["state"] == "active"
    os.unlink(leases.state_path(state_dir))
    assert_blocked(config, state_dir, marker, "irt-alice")
    end(client)
    # Its end is noticed (stale: no close hook ran for it), and the countdown starts from there.
    done = idle_reaper(config.path, state_dir, "reap", "--wait", "10")
    assert done.returncode == 0 and os.path.exists(marker)
    assert "irt-alice" in status(config.path, state_dir)["last_activity"]


@pytest.mark.parametrize("label", ["irt-alice", "root"])
def test_a_session_on_an_sshd_whose_pam_stack_never_ran_the_hook(require_root, users, config, state_dir, marker, label):
    config(due_config(marker))
    server = Sshd(users, state_dir, hook_line=False)
    try:
        client = server.start(label, HOLD, ready=READY)
        assert not os.path.exists(leases.state_path(state_dir))
        assert_blocked(config, state_dir, marker, label)
        end(client)
    finally:
        server.stop()


def test_sshd_is_found_by_its_executable_when_it_runs_under_another_name(require_root, users, config, state_dir,
                                                                          marker):  # fmt: skip
    config(due_config(marker))
    server = Sshd(users, state_dir, hook_line=False, name="devbox-sshd")
    try:
        client = server.start("irt-alice", HOLD, ready=READY)
        assert_blocked(config, state_dir, marker, "irt-alice")
        end(client)
    finally:
        server.stop()


def test_a_connection_still_at_the_login_prompt_does_not_block(sshd, config, state_dir, marker):
    config(due_config(marker))
    with socket.create_connection(("127.0.0.1", sshd.port)) as raw:
        assert raw.recv(100).startswith(b"SSH-2.0-")
        raw.sendall(b"SSH-2.0-probe\r\n")
        time.sleep(0.3)  # sshd forks its unprivileged pre-auth child
        done = idle_reaper(config.path, state_dir, "reap")
        assert done.returncode == 0, done.stderr
        assert os.path.exists(marker), "an unauthenticated connection must not keep the machine up"


def test_an_ignored_users_unrecorded_session_does_not_block(require_root, users, config, state_dir, marker):
    config(due_config(marker, "ignore:\n  users: [irt-ci]\n"))
    server = Sshd(users, state_dir, hook_line=False)
    try:
        client = server.start("irt-ci", HOLD, ready=READY)
        done = idle_reaper(config.path, state_dir, "reap")
        assert done.returncode == 0 and os.path.exists(marker)
        end(client)
    finally:
        server.stop()


def test_a_users_own_process_named_sshd_does_not_stop_the_check_for_good(require_root, users, config, state_dir,
                                                                         workdir, marker):  # fmt: skip
    """The unit keeps only CAP_SYS_PTRACE: no DAC override, so a user's own (dumpable) process is closed to it."""
    import shutil
    import subprocess

    config(due_config(marker))
    fake = os.path.join(workdir, "sshd")
    shutil.copy("/bin/sleep", fake)
    os.chmod(fake, 0o755)
    # setpriv execs (runuser would fork, and killing it would leave the child running)
    squatter = subprocess.Popen(["setpriv", "--reuid=irt-bob", "--regid=irt-bob", "--init-groups", fake, "60"])
    try:
        time.sleep(0.2)
        from tests.integration.sshd import VENV_PYTHON

        argv = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", VENV_PYTHON, "-m", "reaper",
                "--config", config.path, "--state-dir", state_dir]  # fmt: skip
        import json

        done = subprocess.run([*argv, "status", "--json"], capture_output=True, text=True, check=True, cwd=REPO,
                              env=cli_env())  # fmt: skip
        st = json.loads(done.stdout)
        assert st["live_check"]["complete"], st["live_check"]
    finally:
        squatter.kill()
        squatter.wait()
