"""Faults: corrupt state, a stuck lock, wall-clock jumps, reused pids, leases from an earlier boot."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from reaper import clock
from reaper.state import leases
from tests.conftest import HOOK_ARGV, REPO, SYSTEM_PYTHON, cli_env
from tests.integration.sshd import VENV_PYTHON, idle_reaper, status
from tests.reliability.conftest import due_config

CORRUPT = {
    "truncated": b'{"format":1,"boot":"x","leases":[{"us',
    "garbage": b"\x7fELF\x00\x01\x02garbage",
    "empty": b"",
    "future format version": b'{"format":99,"boot":"x","leases":[],"closed":[]}',
    "valid JSON of the wrong shape": b'{"format":1,"boot":"x","leases":"none","closed":[]}',
    "a lease with wrong field types": b'{"format":1,"boot":"x","leases":[{"user":5,"pid":"1","opened":1}],"closed":[]}',
    "a JSON list": b"[1, 2, 3]",
}


def put_state(state_dir, content):
    os.makedirs(state_dir, mode=0o755, exist_ok=True)
    path = leases.state_path(state_dir)
    if content == "directory":
        os.mkdir(path)
    else:
        with open(path, "wb") as f:
            f.write(content)
    return path


@pytest.mark.parametrize("name", [*sorted(CORRUPT), "a directory"])
def test_a_corrupt_state_file_is_never_idle_never_acted_on_and_is_rebuilt(
    require_root, config, state_dir, marker, name
):
    config(due_config(marker))
    put_state(state_dir, CORRUPT.get(name, "directory"))
    st = status(config.path, state_dir)
    assert st["state"] == "unknown" and st["seconds_until_action"] is None
    assert st["state_file"]["status"] == "unusable" and st["state_file"]["problem"]

    done = idle_reaper(config.path, state_dir, "reap")
    assert done.returncode == 4, done.stderr
    assert not os.path.exists(marker), "acted on a corrupt state file"
    assert "state file unusable" in done.stderr and "kept as" in done.stderr  # said so in the log

    kept = [n for n in os.listdir(state_dir) if ".bad-" in n]
    assert len(kept) == 1, "the unusable file must be kept for a person to look at"
    if name != "a directory":
        with open(os.path.join(state_dir, kept[0]), "rb") as f:
            assert f.read() == CORRUPT[name], "the kept file must be unchanged"
    rebuilt = leases.read_state(state_dir)
    assert rebuilt["lost"] is not None
    st = status(config.path, state_dir)
    assert st["state"] == "idle" and st["state_file"]["lost_at"], "status says the history was lost and rebuilt"
    assert st["last_activity"] == "state was lost and rebuilt"


def test_an_unreadable_state_file_is_unknown_to_a_non_root_reader(require_root, users, config, state_dir, marker):
    config(due_config(marker))
    idle_reaper(config.path, state_dir, "reap", "--dry-run")
    path = put_state(state_dir, b'{"format":1,"boot":"x","leases":[],"closed":[]}')
    os.chmod(path, 0o600)
    st = status(config.path, state_dir, user="irt-bob")
    assert st["state"] == "unknown" and "Permission denied" in st["reason"]


def test_a_stuck_lock_holder_delays_a_login_by_about_a_second_the_reaper_skips_and_nothing_is_lost(
    require_root, config, state_dir, marker
):
    config(due_config(marker))
    os.makedirs(state_dir, mode=0o755)
    holder = subprocess.Popen(
        [SYSTEM_PYTHON, "-I", "-c",
         f"import sys; sys.path.insert(0, {str(REPO)!r}); from reaper.state import leases; import time\n"
         f"with leases.FlockLock({state_dir!r}, 1):\n print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    env = {"PAM_USER": "root", "PAM_SERVICE": "sshd", "SSH_CONNECTION": "127.0.0.1 1 127.0.0.1 22"}
    hook = [*HOOK_ARGV, "--state-dir", state_dir]
    try:
        assert holder.stdout.readline().strip() == "held"
        start = time.monotonic()
        opened = subprocess.run(hook, env={**env, "PAM_TYPE": "open_session"}, capture_output=True, timeout=10)
        took = time.monotonic() - start
        assert opened.returncode == 0 and took < 1.5, took
        st = status(config.path, state_dir)
        assert st["state"] == "active" and st["sessions"][0]["user"] == "root", "the login was recorded anyway"
        done = idle_reaper(config.path, state_dir, "reap")
        assert done.returncode == 4
        assert "skipping this tick" in done.stderr and f"held by pid {holder.pid}" in done.stderr
        assert not os.path.exists(marker)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert idle_reaper(config.path, state_dir, "reap").returncode == 0
    assert not os.path.exists(marker), "the session (this test process is its parent) is still open"
    assert leases.read_state(state_dir)["leases"][0]["user"] == "root"
    assert not [n for n in os.listdir(state_dir) if n.startswith("pending.")], "folded into the state"
    closed = subprocess.run(hook, env={**env, "PAM_TYPE": "close_session"}, capture_output=True, timeout=10)
    assert closed.returncode == 0
    assert idle_reaper(config.path, state_dir, "reap", "--wait", "5").returncode == 0
    assert os.path.exists(marker), "once the session closed and the lock is free, the due action runs"


def run_with_wall_clock_shift(config, state_dir, shift):
    """Run `status --json` in a process whose wall clock (time.time) is off by `shift` seconds."""
    code = (
        "import sys, time\n"
        f"real = time.time; time.time = lambda: real() + {shift}\n"
        "from reaper.cli import main\n"
        f"sys.exit(main(['--config', {config!r}, '--state-dir', {state_dir!r}, 'status', '--json']))\n"
    )
    done = subprocess.run([VENV_PYTHON, "-c", code], capture_output=True, text=True, cwd=REPO, check=True,
                          env=cli_env())  # fmt: skip
    return json.loads(done.stdout)


def test_a_wall_clock_jump_of_days_changes_neither_the_countdown_nor_the_decision(require_root, config, state_dir):
    config("inactivity_duration: 7d\nmin_session: off\n")
    idle_reaper(config.path, state_dir, "reap")
    now = status(config.path, state_dir)
    ahead = run_with_wall_clock_shift(config.path, state_dir, 3 * 86400)
    behind = run_with_wall_clock_shift(config.path, state_dir, -3 * 86400)
    for shifted in (ahead, behind):
        assert shifted["state"] == now["state"] == "idle"
        assert abs(shifted["seconds_until_action"] - now["seconds_until_action"]) <= 2
        assert abs(shifted["idle_seconds"] - now["idle_seconds"]) <= 2
    assert ahead["action_at"] != now["action_at"]  # only the displayed wall-clock time moves


def write_state_with(state_dir, lease_fields):
    boot = clock.boot_key()
    st = leases.empty_state(boot)
    base = {"user": "alice", "uid": 1000, "service": "sshd", "rhost": "192.0.2.4", "tty": "ssh", "conn": None,
            "client": None, "client_port": None, "server": None, "server_port": None, "key": None,
            "opened": clock.now() - 100, "boot": boot, "source": "hook"}  # fmt: skip
    st["leases"].append({**base, **lease_fields})
    leases.ensure_dir(state_dir)
    with leases.FlockLock(state_dir, 1):
        leases.write_state(state_dir, st)


def test_a_lease_whose_pid_was_reused_by_an_unrelated_process_is_not_live(require_root, config, state_dir):
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        real_start = clock.process_start_ticks(unrelated.pid)
        write_state_with(state_dir, {"pid": unrelated.pid, "pid_start": real_start - 50})
        st = status(config.path, state_dir)
        assert st["sessions"] == [] and st["state"] == "idle" and st["idle_seconds"] == 0
        write_state_with(state_dir, {"pid": unrelated.pid, "pid_start": real_start})
        assert status(config.path, state_dir)["state"] == "active"
    finally:
        unrelated.kill()
        unrelated.wait()


def test_a_lease_from_an_earlier_boot_is_dropped(require_root, config, state_dir):
    write_state_with(state_dir, {"pid": os.getpid(), "pid_start": clock.process_start_ticks(os.getpid()),
                                 "boot": "00000000-0000-0000-0000-000000000000/1"})  # fmt: skip
    st = status(config.path, state_dir)
    assert st["sessions"] == [] and st["last_activity"] == "boot"
    assert idle_reaper(config.path, state_dir, "reap").returncode == 0
    assert leases.read_state(state_dir)["leases"] == []
