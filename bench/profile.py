"""Where a tick's time goes: `python -m bench.profile [reap|status] [--leases N] [--sessions K] [--stale]`.

Sets up the state of row 4 (bench/scale.py: N leases, each naming a live task, in an empty network namespace,
primed by one tick), then runs the deployed command (Debian's python3 -I) once under `-X importtime` and once
under cProfile, and prints the costliest imports and functions. cProfile slows pure-Python code several times,
so read its figures as shares, not as times; the table's figures are the times.
"""

import argparse
import json
import os
import subprocess

from bench import REPO, SYSTEM_PYTHON
from bench.netns import empty_netns
from bench.proc import remove, tmpfs_dir
from bench.scale import CONFIG, ENV, RUN_CLI, Processes, put_state, real_sessions, synthetic_state
from reaper import clock

PROFILED = """
import cProfile, pstats, sys
sys.path.insert(0, {repo!r})
from reaper.cli import main
profile = cProfile.Profile()
profile.enable()
try:
    main({argv!r})
except SystemExit:
    pass
profile.disable()
sys.stdout = sys.__stderr__
stats = pstats.Stats(profile, stream=sys.stderr).strip_dirs()
stats.sort_stats("cumulative").print_stats(30)
stats.sort_stats("tottime").print_stats(15)
"""


def importtime(stderr, top=15):
    """Given `python -X importtime` output, return the top imports by cumulative time, as lines."""
    rows = []
    for line in stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if not line.startswith("import time:") or len(parts) != 3 or not parts[0].strip().isdigit():
            continue
        rows.append((int(parts[1]), int(parts[0]), parts[2].strip()))
    rows.sort(reverse=True)
    return [f"{c / 1000:7.1f} ms cumulative {o / 1000:6.1f} ms self  {n}" for c, o, n in rows[:top]]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", default="reap", choices=("reap", "status"))
    parser.add_argument("--leases", type=int, default=10000)
    parser.add_argument("--sessions", type=int, default=0, help="real SSH sessions, each with its lease")
    parser.add_argument("--stale", action="store_true", help="make 1 lease in 20 stale (ended by the tick)")
    args = parser.parse_args(argv)
    work = tmpfs_dir("irb-profile-")
    processes = stop = None
    try:
        with empty_netns():
            processes = Processes(args.leases)  # in the namespace: their connections are the ticks' to see
            session_leases = []
            if args.sessions:
                stop, session_leases = real_sessions(args.sessions, work)
            state = synthetic_state(args.leases, processes.pids, clock.boot_key(), clock.now(), 20 if args.stale else 0)
            state["leases"].extend(session_leases)
            config = os.path.join(work, "config.yaml")
            with open(config, "w") as f:
                f.write(CONFIG.format(marker=os.path.join(work, "ACTED")))
            state_dir = os.path.join(work, "state")
            os.mkdir(state_dir, 0o755)
            tail = ["--config", config, "--state-dir", state_dir, args.command]
            tail += ["--json"] if args.command == "status" else []
            cli = [SYSTEM_PYTHON, "-I", "-c", RUN_CLI.format(repo=str(REPO)), *tail]
            put_state(state_dir, json.dumps(state).encode())
            if not args.stale:  # prime: the steady state, as in the table
                subprocess.run(cli, env=ENV, cwd="/", capture_output=True, check=False)
                with open(os.path.join(state_dir, "state.json"), "rb") as f:
                    primed = f.read()
            else:
                primed = json.dumps(state).encode()
            put_state(state_dir, primed)
            timed = subprocess.run(
                [SYSTEM_PYTHON, "-I", "-X", "importtime", *cli[2:]], env=ENV, cwd="/", capture_output=True, text=True
            )
            print(f"== imports of `{args.command}` (python -X importtime), top 15 by cumulative time")
            print("\n".join(importtime(timed.stderr)))
            put_state(state_dir, primed)
            code = PROFILED.format(repo=str(REPO), argv=tail)
            done = subprocess.run(
                [SYSTEM_PYTHON, "-I", "-c", code], env=ENV, cwd="/", capture_output=True, text=True, check=False
            )
            print(f"\n== cProfile of `{args.command}` with {args.leases:,} leases and {args.sessions} sessions")
            print(done.stderr)
    finally:
        if stop:
            stop()
        if processes:
            processes.close()
        remove(work)


if __name__ == "__main__":
    main()
