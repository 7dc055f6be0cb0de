"""The state stays bounded whatever the number of distinct clients, and the cap keeps the latest counted activity.

`make test` starts from a state already holding 995 closed sessions of distinct addresses and runs 120 real
sessions through the hook; `make reliability` (IDLE_REAPER_FULL=1) runs all 10,000 through it. The open hook's
time at the start and the end is printed (BENCHMARKS.md has the measured row); no time is asserted here.
"""

import json
import os
import statistics
import subprocess
import sys

from reaper import clock, defaults
from reaper.state import leases
from tests.conftest import HOOK_ARGV, REPO, SYSTEM_PYTHON

FULL = os.environ.get("IDLE_REAPER_FULL") == "1"
SESSIONS = 10_000 if FULL else 120
SEEDED = 0 if FULL else 995
GROWTH = REPO / "tests" / "reliability" / "growth.py"
# Sessions from 127.1.0.0/16 are the control plane's and never count; the first, from 127.0.0.2, counts.
CONFIG = "inactivity_duration: 1h\nmin_session: off\nignore:\n  networks: [127.1.0.0/16]\n"


def seed(state_dir, n):
    """A state holding n closed sessions of distinct (ignored) addresses, as if they had come before."""
    boot, now = clock.boot_key(), clock.now()
    state = leases.empty_state(boot)
    for i in range(n):
        client = f"127.1.{200 + i // 250}.{i % 250 + 1}"
        state["closed"].append({
            "user": "root", "uid": 0, "service": "sshd", "rhost": client, "tty": "ssh", "conn": None,
            "client": client, "client_port": 40000, "server": "127.0.0.1", "server_port": 22, "key": None,
            "pid": 1, "pid_start": 1, "opened": now - 100, "boot": boot, "source": "hook", "closed": now - 50,
            "end": "hook",
        })  # fmt: skip
    leases.ensure_dir(state_dir)
    with leases.FlockLock(state_dir, 1):
        leases.write_state(state_dir, state)


def test_distinct_clients_never_grow_the_state_past_the_cap_nor_lose_the_latest_counted(
    require_root, config, state_dir
):
    config(CONFIG)
    if SEEDED:
        seed(state_dir, SEEDED)
    done = subprocess.run(
        [SYSTEM_PYTHON, "-I", str(GROWTH), HOOK_ARGV[0], state_dir, config.path, "0", str(SESSIONS)],
        capture_output=True, text=True, timeout=3600, check=True,
    )  # fmt: skip
    result = json.loads(done.stdout)
    assert max(result["closed"]) <= defaults.MAX_CLOSED, "the cap must hold after every close"
    assert result["closed"][-1] == defaults.MAX_CLOSED
    state = leases.read_state(state_dir)
    counted = [r for r in state["closed"] if r["client"] == "127.0.0.2"]
    assert len(counted) == 1, "the only counted session (the first) must survive every cap"
    assert {r["client"] for r in state["closed"][-100:]} == {f"127.1.{i // 250}.{i % 250 + 1}"
                                                             for i in range(SESSIONS - 100, SESSIONS)}  # fmt: skip
    first, last = result["opens"][:50], result["opens"][-50:]
    sys.stderr.write(
        f"open hook: median {statistics.median(first) * 1000:.1f} ms over the first 50 sessions,"
        f" {statistics.median(last) * 1000:.1f} ms over the last 50 ({SEEDED} seeded + {SESSIONS} sessions)\n"
    )
