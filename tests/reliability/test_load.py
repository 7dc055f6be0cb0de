"""Load and crash consistency: many hooks at once, and writers SIGKILLed at random moments.

`make test` runs smaller counts; `make reliability` (IDLE_REAPER_FULL=1) runs the counts in RELIABILITY.md.
"""

import os
import random
import signal
import subprocess
import time

import pytest

from reaper import clock
from reaper.state import leases
from tests.conftest import HOOK_ARGV, cli_env
from tests.integration.sshd import idle_reaper

FULL = os.environ.get("IDLE_REAPER_FULL") == "1"
SESSIONS = 500 if FULL else 100  # each is two hook runs, an open and a close
AT_ONCE = 50
KILLS = 600 if FULL else 120


def pam_env(pam_type, port):
    # The hook's parent here holds no connection, so SSH_CONNECTION is not believed; PAM_TTY, recorded as
    # pam_exec gives it, names each writer's event instead.
    return {"PAM_TYPE": pam_type, "PAM_USER": "root", "PAM_SERVICE": "sshd", "PAM_RHOST": "127.0.0.1",
            "PAM_TTY": f"t{port}", "SSH_CONNECTION": f"127.0.0.1 {port} 127.0.0.1 22"}  # fmt: skip


def session_parent(state_dir, port, pause):
    """Start a process that runs the hook as pam_exec does, open then close, and stays alive afterwards.

    It prints "done" once both hooks returned, then waits on stdin: a lost close can't hide behind a dead parent.
    """
    hook = f"{' '.join(HOOK_ARGV)} --state-dir {state_dir}"
    script = (
        f"env PAM_TYPE=open_session {hook} && sleep {pause:.3f} && env PAM_TYPE=close_session {hook} "
        "&& echo done && read x"
    )
    env = {k: v for k, v in pam_env("", port).items() if k != "PAM_TYPE"}
    env["PATH"] = "/usr/bin:/bin"
    return subprocess.Popen(["/bin/sh", "-c", script], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip


@pytest.fixture(params=["tmpfs", "disk"])
def load_state_dir(request, workdir):
    """On tmpfs, as /run is on a systemd machine, and on a disk, as /run may be in a container: there each
    fsync takes milliseconds, so under load the open hook's lock wait runs out and it writes a pending event.
    """
    import shutil
    import tempfile

    if request.param == "disk":
        yield os.path.join(workdir, "state")
        return
    d = tempfile.mkdtemp(prefix="irt-load-", dir="/dev/shm")
    yield os.path.join(d, "state")
    shutil.rmtree(d, ignore_errors=True)


def test_concurrent_opens_and_closes_leave_the_state_exact(require_root, load_state_dir):
    state_dir = load_state_dir
    rng = random.Random(7)
    running, finished = [], []
    started = 0
    pending_seen = set()
    while started < SESSIONS or running:
        while started < SESSIONS and len(running) < AT_ONCE:
            running.append(session_parent(state_dir, 20000 + started, rng.uniform(0, 0.05)))
            started += 1
        still = []
        for p in running:
            if p.poll() is None and not _done(p):
                still.append(p)
            else:
                finished.append(p)
        running = still
        # Mid-run: the state is always valid, and never holds more open leases than parents between hooks.
        assert len(leases.load(state_dir, clock.boot_key())["leases"]) <= AT_ONCE
        if os.path.isdir(state_dir):
            pending_seen |= {n for n in os.listdir(state_dir) if n.startswith("pending.")}
    state = leases.load(state_dir, clock.boot_key())
    assert all(p.poll() is None for p in finished), "every parent is still alive"
    assert state["leases"] == [], f"{len(state['leases'])} leases left over: a close was lost or an open duplicated"
    assert all(r["opened"] is not None for r in state["closed"]), "a close found no open: an open was lost"
    with leases.FlockLock(state_dir, 5):  # a writer folds any pending events in; the file itself is then exact
        leases.commit(state_dir, leases.load(state_dir, clock.boot_key()))
    assert leases.read_state(state_dir)["leases"] == []
    assert not [n for n in os.listdir(state_dir) if n.startswith("pending.")]
    print(f"\nconcurrency: {2 * SESSIONS} hook runs ({SESSIONS} sessions), {AT_ONCE} at a time, parents alive;"
          f" pending events seen mid-run: {len(pending_seen)}; lost 0, duplicated 0, left over 0")  # fmt: skip
    for p in finished:
        p.communicate("\n", timeout=10)


def _done(p):
    """True once the parent printed "done" (both hooks ran); non-blocking enough: it prints right before read."""
    import select

    ready, _, _ = select.select([p.stdout], [], [], 0)
    if ready:
        line = p.stdout.readline().strip()
        assert line == "done", line
        return True
    return False


def test_writers_sigkilled_at_random_moments_never_corrupt_the_state(require_root, config, state_dir):
    rng = random.Random(11)
    # A big state makes each write long enough that kills land inside it.
    boot = clock.boot_key()
    big = leases.empty_state(boot)
    me, my_start = os.getpid(), clock.process_start_ticks(os.getpid())
    for i in range(3000):
        big["leases"].append(
            {"user": "root", "uid": 0, "service": "sshd", "rhost": "127.0.0.1", "tty": "ssh",
             "conn": f"127.0.0.1 {i} 127.0.0.1 22", "client": "127.0.0.1", "client_port": i, "server": "127.0.0.1",
             "server_port": 22, "key": None, "pid": me, "pid_start": my_start, "opened": clock.now(), "boot": boot,
             "source": "hook"}
        )  # fmt: skip
    leases.ensure_dir(state_dir)
    with leases.FlockLock(state_dir, 1):
        leases.write_state(state_dir, big)
    expected = {i for i in range(3000)}
    killed = set()
    kills = reaper_kills = 0
    port = 30000
    while kills < KILLS:
        if kills % 10 == 9:
            writer = subprocess.Popen([*_reaper_argv(config.path, state_dir)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, env=cli_env())  # fmt: skip
            what = None
        else:
            port += 1
            writer = subprocess.Popen([*HOOK_ARGV, "--state-dir", state_dir],
                                      env=pam_env("open_session", port))  # fmt: skip
            what = port
        time.sleep(rng.uniform(0, 0.12))
        if writer.poll() is None:
            writer.send_signal(signal.SIGKILL)
            kills += 1
            reaper_kills += what is None
            if what is not None:
                killed.add(what)
        writer.wait()
        if what is not None and writer.returncode == 0:
            expected.add(what)
        state = leases.read_state(state_dir)  # raises if the file is not valid JSON of the right format
        present = {
            lease["client_port"] if lease["tty"] == "ssh" else int(lease["tty"][1:]) for lease in state["leases"]
        }
        assert expected <= present, f"completed events missing: {sorted(expected - present)[:5]}"
        assert present <= expected | killed, "an event nobody wrote appeared"
    assert reaper_kills > 0
    print(f"\ncrash: {kills} writers SIGKILLed mid-run ({kills - reaper_kills} hooks, {reaper_kills} reaper ticks);"
          f" state valid after every kill; completed events lost 0; killed hooks whose event was"
          f" nonetheless recorded: {len(killed & present)} of {len(killed)}")  # fmt: skip
    assert idle_reaper(config.path, state_dir, "reap").returncode in (0, 4)
    assert not [n for n in os.listdir(state_dir) if n.endswith(".tmp")], "a tick removes temp files of killed writers"


def _reaper_argv(config_path, state_dir):
    from tests.integration.sshd import VENV_PYTHON

    return [VENV_PYTHON, "-m", "reaper", "--config", config_path, "--state-dir", state_dir, "reap"]


@pytest.fixture
def config(workdir):
    path = os.path.join(workdir, "config.yaml")
    with open(path, "w") as f:
        f.write('inactivity_duration: 1w\nmin_session: off\naction: ["/bin/true"]\n')
    os.chmod(path, 0o644)

    class Config:
        pass

    Config.path = path
    return Config
