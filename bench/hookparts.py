"""Where the open hook's time goes: `python -m bench.hookparts [--rounds N] [--hook NAME=HOOK_FILE ...]`.

Row 2 in parts, with the hook's parent holding the session's connection as in row 2 (bench/hookalone.py):

- end to end, interleaved in a random order each round: `python3 -I -S -c pass` started directly (the floor);
  the launcher on an empty file (what starting any hook through the launcher costs); our open; and the open of
  each `--hook NAME=FILE` given (another hooks/pam-session, a prototype, through a launcher built for it);
- in the hook's own process (a child of the same parent, its imports fresh each run): the imports, then each
  step of an open as reaper.hook.record takes it, timed with perf_counter;
- what reading the parent's /proc/PID/net/tcp and tcp6 costs, and the size of the kernel's connection table
  it walks (net.ipv4.tcp_ehash_entries).

`--sockets N` holds N more ESTABLISHED loopback connections (2N sockets) while it measures, in the hook's
network namespace (`--where same`: a machine serving many connections) or in another one (`--where other`: a
container's, say, on the same kernel), as a machine that is not idle has.

Medians with their spread; no target, nothing asserted. Prints text, progress to stderr.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

from bench import HOOK_ARGV, NOOP_ARGV, REPO, SYSTEM_PYTHON, stats
from bench.hookalone import Session
from bench.netns import NetNs
from bench.proc import remove, tmpfs_dir
from tests.conftest import LAUNCHER_SOURCE, build_launcher

# Run by SYSTEM_PYTHON -I -S as a child of the session's monitor, with the open's PAM environment: one open,
# as reaper.hook.record makes it, each step timed. Prints JSON {step: seconds}.
STEPS = r"""
import time
t0 = time.perf_counter()
import os, sys
sys.path.insert(0, {repo!r})
from reaper import hook, clock
from reaper.evidence import monitor
from reaper.state import leases
t = {{"imports": time.perf_counter() - t0}}

def step(name, fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    t[name] = t.get(name, 0.0) + time.perf_counter() - start
    return out

env, pid, state_dir = os.environ, os.getppid(), {state_dir!r}
now, boot = clock.now(), step("clock.boot_key", clock.boot_key)
process = step("monitor.read (stat, status, loginuid, exe)", monitor.read, pid)
step("pwd.getpwnam", hook._uid_of, env["PAM_USER"])
step("monitor.socket_inodes (/proc/PPID/fd)", monitor.socket_inodes, pid)
held = step("monitor.connections (fd + /proc/PPID/net/tcp, tcp6)", monitor.connections, pid)
lease, problems = step("hook.identify (all of the above again)", hook.identify, env, pid, True)
assert lease["conn"], (held, problems)
lease["opened"], lease["boot"] = now, boot
step("leases.ensure_dir", leases.ensure_dir, state_dir)
def locked():
    with leases.FlockLock(state_dir, 0.5):
        state = leases.load(state_dir, boot)
        leases.add_lease(state, lease)
        leases.commit(state_dir, state)
step("lock, load, add, commit", locked)
step("syslog", hook.log, 6, "bench.hookparts: an open, timed in parts")
import json
print(json.dumps(t))
"""
NET_TCP = r"""
import json, os, time
out = {}
for name in ("tcp", "tcp6"):
    start = time.perf_counter()
    with open(f"/proc/{os.getppid()}/net/{name}") as f:
        lines = len(f.read().splitlines()) - 1
    out[name] = [time.perf_counter() - start, lines]
print(json.dumps(out))
"""


# N ESTABLISHED loopback connections held open until stdin closes; prints "ready".
CROWD = r"""
import resource, socket, sys
n = int(sys.argv[1])
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = []
listener = socket.create_server(("127.0.0.1", 0), backlog=128)
for _ in range(n):
    held.append(socket.create_connection(listener.getsockname()))
    held.append(listener.accept()[0])
print("ready", flush=True)
sys.stdin.read()
"""
PER_PROCESS = 4000  # connections (two fds each) a process holds, within a hard RLIMIT_NOFILE of 10,000 or so


class Crowd:
    """n ESTABLISHED loopback connections, held by a few processes here or in a new network namespace."""

    def __init__(self, n, where):
        ns = None if where == "same" else NetNs()
        self.procs = []
        try:
            for first in range(0, n, PER_PROCESS):
                argv = [SYSTEM_PYTHON, "-I", "-S", "-c", CROWD, str(min(PER_PROCESS, n - first))]
                if ns is None:
                    self._start(argv)
                else:
                    with ns.entered():
                        self._start(argv)
        except BaseException:
            self.close()
            raise
        finally:
            if ns is not None:
                ns.close()

    def _start(self, argv):
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.procs.append(proc)
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("a process holding the connections did not start")

    def close(self):
        for proc in self.procs:
            proc.stdin.close()
            proc.wait(60)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.hookparts", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--hook", action="append", default=[], metavar="NAME=FILE", help="another hook to compare")
    parser.add_argument("--sockets", type=int, default=0, help="hold N more loopback connections meanwhile")
    parser.add_argument("--where", choices=("same", "other"), default="same", help="their network namespace")
    args = parser.parse_args(argv)
    rng = random.Random(9)  # noqa: S311 - reproducible orders, not secrets
    held = Crowd(args.sockets, args.where) if args.sockets else None
    work = tmpfs_dir("irb-parts-")
    build = tempfile.mkdtemp(prefix="irb-parts-build-")
    session = None
    try:
        session = Session()
        if held:
            print(f"{args.sockets} more ESTABLISHED connections held, in the {args.where} network namespace")
        empty = os.path.join(build, "empty.py")
        open(empty, "w").close()
        arms = {
            "pass": NOOP_ARGV,
            "launcher, empty file": [str(build_launcher(LAUNCHER_SOURCE, f"{empty}.launch", empty))],
        }
        arms["ours"] = HOOK_ARGV
        for spec in args.hook:
            name, _, path = spec.partition("=")
            arms[name] = [str(build_launcher(LAUNCHER_SOURCE, os.path.join(build, f"{len(arms)}.launch"), path))]
        times = {name: [] for name in arms}
        state_dirs = {name: os.path.join(work, f"state-{i}") for i, name in enumerate(arms)}  # one per hook
        print(f"[hookparts] end to end, {args.rounds} rounds", file=sys.stderr)
        for i in range(args.rounds + 3):
            order = list(arms)
            rng.shuffle(order)
            for name in order:
                hooks = name not in ("pass", "launcher, empty file")
                argv = [*arms[name], "--state-dir", state_dirs[name]] if hooks else arms[name]
                done = session.monitor.run(argv, env=session.env("open_session"), cwd="/", umask=0o022)
                if i >= 3:
                    times[name].append(done.seconds)
                if hooks:  # closed again, untimed, so every open meets the same state
                    session.monitor.run(argv, env=session.env("close_session"), cwd="/", umask=0o022)
        print(f"end to end (spawn to exit), the parent holding the session's connection, {args.rounds} rounds:")
        base = stats.median(times["pass"])
        for name, values in times.items():
            print(f"  {name:24} {stats.spread(values)} ms  {stats.ratio(stats.median(values), base):.2f}x pass")

        print(f"[hookparts] in the hook's process, {args.rounds} runs", file=sys.stderr)
        parts = {}
        code = STEPS.format(repo=str(REPO), state_dir=os.path.join(work, "steps"))
        out = os.path.join(work, "out")
        for _ in range(args.rounds):
            done = session.monitor.run([SYSTEM_PYTHON, "-I", "-S", "-c", code], env=session.env("open_session"),
                                       cwd="/", umask=0o022, stdout=out, stderr=out)  # fmt: skip
            with open(out) as f:
                text = f.read()
            if done.returncode != 0:
                raise RuntimeError(f"the steps failed: {text[-1500:]}")
            for name, seconds in json.loads(text).items():
                parts.setdefault(name, []).append(seconds)
            session.monitor.run([*HOOK_ARGV, "--state-dir", os.path.join(work, "steps")],
                                env=session.env("close_session"), cwd="/", umask=0o022)  # fmt: skip
        print(
            f"\nin the hook's own process, an open in steps ({args.rounds} runs; identify repeats the steps above it):"
        )
        for name, values in parts.items():
            print(f"  {name:54} {stats.spread(values, unit=lambda s: f'{s * 1000:.2f}')} ms")

        nets = {"tcp": [], "tcp6": []}
        lines = {}
        for _ in range(args.rounds):
            done = session.monitor.run([SYSTEM_PYTHON, "-I", "-S", "-c", NET_TCP], stdout=out, cwd="/")
            with open(out) as f:
                for name, (seconds, n) in json.load(f).items():
                    nets[name].append(seconds)
                    lines[name] = n
        with open("/proc/sys/net/ipv4/tcp_ehash_entries") as f:
            buckets = f.read().strip()
        print(
            f"\nreading the parent's /proc/PID/net/* as the hook does (the kernel walks all {buckets} buckets of"
            " its connection table, which every network namespace shares, for each read that reaches the end):"
        )
        for name, values in nets.items():
            print(f"  {name:5} {stats.spread(values, unit=lambda s: f'{s * 1000:.2f}')} ms, {lines[name]} lines")
    finally:
        if session is not None:
            session.close()
        if held:
            held.close()
        remove(work)
        remove(build)
    return 0


if __name__ == "__main__":
    sys.exit(main())
