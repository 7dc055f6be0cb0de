"""`reap --wait`: a tick waiting for a deadline notices sessions that open or close meanwhile."""

import os
import subprocess
import time

from tests.conftest import HOOK_ARGV, cli_env
from tests.integration.sshd import VENV_PYTHON

ENV = {"PAM_USER": "root", "PAM_SERVICE": "sshd", "SSH_CONNECTION": "127.0.0.1 40000 127.0.0.1 22"}


def hook(state_dir, pam_type, port):
    env = {**ENV, "PAM_TYPE": pam_type, "SSH_CONNECTION": f"127.0.0.1 {port} 127.0.0.1 22"}
    subprocess.run([*HOOK_ARGV, "--state-dir", state_dir], env=env, check=True)


def start_reap(config_path, state_dir, wait):
    argv = [VENV_PYTHON, "-m", "reaper", "--config", config_path, "--state-dir", state_dir, "reap", "--wait", str(wait)]
    reaper = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    # Its first decision is logged: only then is it waiting (a loaded machine can take seconds to get there, and
    # a session opened before that first look would be a different test).
    first = reaper.stderr.readline()
    assert "idle" in first, first + reaper.stderr.read()
    return reaper


def test_a_session_opening_during_the_wait_stops_it_at_once(require_root, config, state_dir, workdir):
    marker = os.path.join(workdir, "acted")
    config(f'inactivity_duration: 3s\nmin_session: off\naction: ["/usr/bin/touch", "{marker}"]\n')
    hook(state_dir, "open_session", 1)
    hook(state_dir, "close_session", 1)  # the deadline is 3 s from now
    reaper = start_reap(config.path, state_dir, 10)
    time.sleep(1)
    hook(state_dir, "open_session", 2)  # this test process is the session's parent: it stays live
    started = time.monotonic()
    _, err = reaper.communicate(timeout=10)
    assert reaper.returncode == 0, err
    assert time.monotonic() - started < 1.5, "the waiting tick noticed the login within its watch interval"
    time.sleep(2.5)
    assert not os.path.exists(marker)
    hook(state_dir, "close_session", 2)


def test_a_later_deadline_set_during_the_wait_is_waited_for_too(require_root, config, state_dir, workdir):
    marker = os.path.join(workdir, "acted")
    config(f'inactivity_duration: 4s\nmin_session: off\naction: ["/bin/sh", "-c", "date +%s.%N > {marker}"]\n')
    hook(state_dir, "open_session", 1)
    hook(state_dir, "close_session", 1)
    reaper = start_reap(config.path, state_dir, 4)  # on its own it would give up 4 s from now
    time.sleep(1)
    hook(state_dir, "open_session", 2)
    hook(state_dir, "close_session", 2)  # a new deadline, 4 s from now: past the first tick's own wait
    closed = time.time()
    _, err = reaper.communicate(timeout=15)
    assert reaper.returncode == 0, err
    with open(marker) as f:
        acted = float(f.read())
    assert 4 - 0.2 <= acted - closed <= 4 + 1.5, acted - closed


def test_the_tests_can_never_power_off_the_machine_they_run_on(require_root, config, state_dir):
    """The default action is `systemctl poweroff`; every idle-reaper the tests run finds a refusing one first."""
    from tests.integration.sshd import idle_reaper

    config("inactivity_duration: 1s\nmin_session: off\n")  # action: poweroff, due at once
    done = idle_reaper(config.path, state_dir, "reap")
    assert done.returncode == 1
    assert "tests never power off the machine: refused 'systemctl poweroff'" in done.stderr
