"""Row 8: growth. 10,000 sessions from distinct client addresses through the real hook, and what the state does.

The sessions are tests/reliability/growth.py's (the reliability tier's, reused as it is): one after another,
each from its own loopback address (the first from 127.0.0.2, which counts; then 127.1.x.y, which the config
ignores), each holding a real ESTABLISHED connection from that address whose server end the driver holds, as
sshd's monitor does; each opens and closes through the launcher and the Python hook, which takes the connection
from its parent's socket. The driver times each open and counts the closed records after each close.

Before the sessions, one tick (`idle-reaper reap`) runs on the state dir, which keeps the config's parse there
as a machine's timer does every minute, so a close that caps the records reads the policy from it. The config
is tests/reliability/test_growth.py's policy with a far deadline and a marker-file action (as row 4's):
nothing acts.

It runs in chunks of 100 sessions on one state file; after each chunk the state file's size is read and the
floor (`python3 -I -S -c pass`) is run a few times, so that a load that drifts over the run's minutes can be
told from a hook that slows down as the state grows.

Then, side by side in random order, the open (and the close) on a state at the cap (the 1,000 closed records the
run left) and on an empty state (a state file with no records), each put back before every run: every login
reads and writes the whole state, so this is what the cap costs a login.

All in an empty network namespace of its own (bench/netns.py) where no TIME_WAIT sockets are kept
(net.ipv4.tcp_max_tw_buckets=0 there): 10,000 connections closed within minutes would otherwise leave hundreds
of them for the hook's read of /proc/PID/net/tcp to render (a real machine's closes are spread over days).
"""

import json
import os
import random
import shutil
import subprocess

from bench import HOOK_ARGV, NOOP_ARGV, NOOP_SHOWN, REPO, SYSTEM_PYTHON, stats
from bench.hookalone import Session
from bench.netns import NetNs
from bench.proc import Spawner, remove, tmpfs_dir
from bench.scale import ENV, RUN_CLI, put_state
from bench.table import Row, met
from reaper import clock, defaults
from reaper.config import CACHE_FILE
from reaper.state import leases
from tests.reliability.test_growth import GROWTH, seed

# test_growth.py's policy (sessions from 127.1.0.0/16 never count; growth.py's first, from 127.0.0.2, does),
# with a far deadline and a marker-file action: the tick that keeps the config's parse must not act.
CONFIG = """\
inactivity_duration: 1w
min_session: off
ignore:
  networks: [127.1.0.0/16]
action: ["/usr/bin/touch", "{marker}"]
"""

SESSIONS, QUICK_SESSIONS = 10_000, 20
CHUNK, QUICK_CHUNK = 100, 10
WINDOW = 100  # sessions at the start, the middle and the end
FLOOR_RUNS = 5  # runs of the floor after each chunk
SIDE_ROUNDS, QUICK_SIDE_ROUNDS = 100, 5
TARGET_FLAT = 1.2
COUNTED = "127.0.0.2"  # growth.py's first session: the only one the config counts


def _kb(n):
    return f"{n / 1024:.0f} KB"


def keep_config_parse(state_dir, config):
    """Run one tick on the state dir, as the timer does, so the config's parse is kept there for the hook."""
    argv = [SYSTEM_PYTHON, "-I", "-c", RUN_CLI.format(repo=str(REPO)), "--config", config, "--state-dir", state_dir]
    done = subprocess.run([*argv, "reap"], env=ENV, cwd="/", capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0 or not os.path.exists(os.path.join(state_dir, CACHE_FILE)):
        raise RuntimeError(f"the tick kept no parse of the config ({done.returncode}): {done.stderr[-800:]}")


def grow(sessions, chunk, state_dir, config, floor):
    """Run the sessions through growth.py in chunks; return (opens, closed counts, floor times, state sizes).

    floor: a Spawner to run the floor with, between chunks (index i of the floor times: after chunk i)."""
    opens, closed, floors, sizes = [], [], [], []
    for first in range(0, sessions, chunk):
        count = min(chunk, sessions - first)
        argv = [SYSTEM_PYTHON, "-I", str(GROWTH), HOOK_ARGV[0], state_dir, config, str(first), str(count)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"growth.py failed at session {first}: {done.stderr[-1500:]}")
        got = json.loads(done.stdout)
        opens += got["opens"]
        closed += got["closed"]
        sizes.append(os.stat(leases.state_path(state_dir)).st_size)
        floors.append([floor.run(NOOP_ARGV, env={}, cwd="/").seconds for _ in range(FLOOR_RUNS)])
    return opens, closed, floors, sizes


def side_by_side(cap_state, config, rounds, work, rng):
    """Open then close on a state at the cap and on an empty one, in random order; return {arm: {open, close}}."""
    boot = clock.boot_key()
    states = {"empty": json.dumps(leases.empty_state(boot)).encode(), "cap": cap_state}
    dirs = {}
    for arm in states:
        dirs[arm] = os.path.join(work, f"side-{arm}")
        os.mkdir(dirs[arm], 0o755)
        shutil.copy2(os.path.join(work, "state", CACHE_FILE), dirs[arm])  # the config's parse, as in the run
    times = {arm: {"open": [], "close": []} for arm in states}
    session = Session()
    try:
        for i in range(rounds + 2):  # the first 2 rounds warm up
            order = list(states)
            rng.shuffle(order)
            for arm in order:
                put_state(dirs[arm], states[arm])
                argv = [*HOOK_ARGV, "--state-dir", dirs[arm], "--config", config]
                for what in ("open", "close"):
                    done = session.monitor.run(argv, env=session.env(f"{what}_session"), cwd="/", umask=0o022)
                    if i >= 2:
                        times[arm][what].append(done.seconds)
    finally:
        session.close()
    return times


def run(quick=False, seed_=8, sessions=None):
    """Return the Rows of the growth benchmark (`sessions`: how many, else 10,000, or 20 with quick)."""
    sessions, chunk = (sessions or QUICK_SESSIONS, QUICK_CHUNK) if quick else (sessions or SESSIONS, CHUNK)
    window = min(WINDOW, max(1, sessions // 4))
    rng = random.Random(seed_)  # noqa: S311 - reproducible orders, not secrets
    work = tmpfs_dir("irb-growth-")
    ns = NetNs()
    floor = None
    try:
        config = os.path.join(work, "config.yaml")
        marker = os.path.join(work, "ACTED")
        with open(config, "w") as f:
            f.write(CONFIG.format(marker=marker))
        os.chmod(config, 0o644)
        state_dir = os.path.join(work, "state")
        os.mkdir(state_dir, 0o755)
        with ns.entered():
            subprocess.run(["sysctl", "-qw", "net.ipv4.tcp_max_tw_buckets=0"], check=True)
            floor = Spawner()
            keep_config_parse(state_dir, config)
            load_start = os.getloadavg()[0]
            started = clock.now()
            opens, closed, floors, sizes = grow(sessions, chunk, state_dir, config, floor)
            took = clock.now() - started
            load_end = os.getloadavg()[0]
            with open(leases.state_path(state_dir), "rb") as f:
                final = f.read()
            state = json.loads(final)
            counted_kept = sum(1 for r in state["closed"] if r.get("client") == COUNTED)
            if len(state["closed"]) >= defaults.MAX_CLOSED:
                cap_state, cap_source = final, "the state this run left"
            else:  # --quick: too few sessions to reach the cap
                seeded = os.path.join(work, "seeded")
                seed(seeded, defaults.MAX_CLOSED)
                with open(leases.state_path(seeded), "rb") as f:
                    cap_state = f.read()
                cap_source = f"a seeded state (this run made only {len(state['closed'])} closed records)"
            side = side_by_side(cap_state, config, QUICK_SIDE_ROUNDS if quick else SIDE_ROUNDS, work, rng)
            acted = os.path.exists(marker)
    finally:
        if floor is not None:
            floor.close()
        ns.close()
        remove(work)

    middle = sessions // 2 - window // 2
    parts = {"start": opens[:window], "middle": opens[middle : middle + window], "end": opens[-window:]}
    chunks_of = {"start": (0, window), "middle": (middle, middle + window), "end": (sessions - window, sessions)}
    floor_of = {}
    for name, (lo, hi) in chunks_of.items():  # the floor runs that followed the window's chunks
        floor_of[name] = [t for c in range(lo // chunk, (hi - 1) // chunk + 1) for t in floors[c]]
    med = {name: stats.median(v) for name, v in parts.items()}
    flat = stats.ratio(med["end"], med["start"])
    rel = {name: stats.ratio(med[name], stats.median(floor_of[name])) for name in parts}
    top, at_end = max(closed), closed[-1]
    cap_ok = top <= defaults.MAX_CLOSED and counted_kept == 1 and not acted
    cap_open, empty_open = (stats.median(side[a]["open"]) for a in ("cap", "empty"))
    shown = f"{sessions:,}"
    return [
        Row(
            "8a",
            f"growth: {shown} sessions from distinct addresses through the real hook; the state after each close",
            f"the cap: {defaults.MAX_CLOSED:,} closed records",
            f"at most {top:,} closed records ({at_end:,} at the end); state.json {_kb(sizes[-1])} at the end,"
            f" at most {_kb(max(sizes))}",
            "-",
            f"<= {defaults.MAX_CLOSED:,} closed records; the latest counted kept",
            met(cap_ok),
            (
                f"{shown} sessions in {took / 60:.1f} min (open and close each, one after another), load average"
                f" {load_start:.1f} at the start, {load_end:.1f} at the end",
                f"the only counted session (the first, from {COUNTED}) is kept among the closed records:"
                f" {'yes' if counted_kept == 1 else f'no ({counted_kept})'}",
                "one tick ran first and kept the config's parse in the state dir, as the timer's do; the closes"
                " that cap the records read the policy from it",
                *(["the marker action ran: the tick acted, which it must not with a far deadline"] if acted else []),
            ),
        ),
        Row(
            "8b",
            f"growth: the open hook at the end (last {window} sessions) against the start (first {window})",
            f"start: {stats.spread(parts['start'])} ms; middle (sessions {middle + 1:,}-{middle + window:,}):"
            f" {stats.spread(parts['middle'])} ms",
            f"end: {stats.spread(parts['end'])} ms",
            stats.fmt_ratio(flat),
            f"<= {TARGET_FLAT}x",
            met(flat <= TARGET_FLAT),
            (
                "each window over the floor run right after its sessions"
                f" ({NOOP_SHOWN}, {FLOOR_RUNS} runs a chunk of {chunk}), so a load that drifts shows apart:"
                f" start {rel['start']:.2f}x, middle {rel['middle']:.2f}x, end {rel['end']:.2f}x;"
                f" end/start {stats.ratio(rel['end'], rel['start']):.2f}x",
                "timed by growth.py from its fork to the hook's exit (its subprocess.run), the parent holding the"
                " session's connection and the listener",
            ),
        ),
        Row(
            "8c",
            f"open hook on a state at the cap ({defaults.MAX_CLOSED:,} closed records), side by side",
            f"an empty state: {stats.spread(side['empty']['open'])} ms",
            f"{stats.spread(side['cap']['open'])} ms; state.json {_kb(len(cap_state))}",
            stats.fmt_ratio(stats.ratio(cap_open, empty_open)),
            f"<= {TARGET_FLAT}x (flat, as 8b)",
            met(stats.ratio(cap_open, empty_open) <= TARGET_FLAT),
            (
                f"the state at the cap is {cap_source}; each put back before every run, in random order",
                f"the close (off the login path): empty {stats.spread(side['empty']['close'])} ms, at the cap"
                f" {stats.spread(side['cap']['close'])} ms (each close there caps the records again, with the"
                " policy from the kept parse of the config)",
            ),
        ),
    ]
