"""Rows 4 and 5: `idle-reaper reap` (one tick) and `idle-reaper status --json` with 0 to 10,000 leases.

Measured as deployed: Debian's /usr/bin/python3 -I with Debian's python3-filelock 3.9, python3-yaml and
python3-humanfriendly, running the reaper package of this checkout the way /usr/bin/idle-reaper does. The venv
(the same interpreter with PyPI's filelock 4.x) is measured alongside for comparison. Each is compared with
"interpreter start plus imports": the same interpreter importing what the command imports, and doing nothing.

The leases are synthetic but of this boot and realistic. Each names a live process of its own (forked by a
holder this benchmark starts) with its real start time, and that process holds the lease's own ESTABLISHED TCP
connection (over loopback), as each session has its sshd monitor and its connection: so the tick reads /proc for
each process and /proc/net/tcp with every connection in it, and scans as many more processes looking for sshd's.
Their users and keys vary (the clients are all 127.0.0.1, for the connections are real), and the config ignores
a user and a network, so the policy has work to do. The steady-state cases are what a timer tick meets all day:
before timing, one tick has run on the state (learning the decision), and the state file is put back as it left
it before every timed run, so nothing changes and nothing is written. Two variants show the rest: one in twenty
leases stale (process and connection gone: ended, and the file written, by every run), and real SSH sessions to a
real sshd, each with its lease, that the tick must match to the state (in a second namespace, where the other
leases' connections are not seen, so their processes are what keeps them live).

Each size is a block of its own, with only its own live processes, and with its own "interpreter start plus
imports" runs interleaved with its ticks: what a tick costs beyond its imports is its work, and the growth.
It all runs in an empty network namespace (bench/netns.py), where the only SSH sessions are the benchmark's.
The config has a far deadline and a marker-file action: nothing acts.
"""

import json
import os
import random
import subprocess
from dataclasses import dataclass, field

from bench import REPO, SYSTEM_PYTHON, VENV_PYTHON, stats
from bench.hookalone import fake_auth_info
from bench.netns import NetNs, empty_netns
from bench.proc import Spawner, remove, tmpfs_dir
from bench.table import ERROR, Row, met
from reaper import clock

SIZES = (0, 100, 1000, 10000)
QUICK_SIZES = (0, 10, 100, 1000)  # --quick: the same rows, smaller
# One live process per lease, as each session has its own sshd monitor, holding its own ESTABLISHED TCP
# connection, as each session has one: a small holder forks them, each with both ends of a loopback connection
# to the holder's listener, and they wait on a pipe until it closes. (Threads would be cheaper, but the kernel's
# /proc/PID/stat of a thread-group leader sums over all its threads, so reading it costs O(threads).) About
# 250 KB of memory each. Prints "PORT PID:CLIENT_PORT ...".
HOLDER = """
import os, socket, sys
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(128)
r, w = os.pipe()
out = []
for _ in range(int(sys.argv[1])):
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    pid = os.fork()
    if pid == 0:
        os.close(w)
        os.close(1)
        listener.close()
        try:
            os.read(r, 1)
        finally:
            os._exit(0)
    out.append(f"{pid}:{client.getsockname()[1]}")
    client.close()
    server.close()
os.close(r)
sys.stdout.write(" ".join([str(listener.getsockname()[1]), *out]) + "\\n")
sys.stdout.flush()
sys.stdin.read()
os.close(w)
for pid in out:
    os.waitpid(int(pid.split(":")[0]), 0)
"""
TARGET_REAP_S = 0.150
TARGET_REAP_RSS_MB = 40
TARGET_STATUS_S = 0.200
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
RUN_CLI = "import sys; sys.path.insert(0, {repo!r}); from reaper.cli import main; sys.exit(main())"
IMPORTS = "import sys; sys.path.insert(0, {repo!r}); import {modules}"
# What each command has imported by the time it is done (its sys.modules at exit: argparse imports shutil and
# gettext locale as it runs, the netlink reader struct and _socket), imported and nothing done.
REAP_MODULES = "reaper.cli, reaper.log, reaper.commands.reap, filelock, syslog, shutil, locale, struct, _socket"
STATUS_MODULES = "reaper.cli, reaper.log, reaper.commands.status, json, shutil, locale, struct, _socket"
SESSION_USER = f"irb-scale-{os.getpid()}"  # unique per run, as bench/login.py's
CONFIG = """\
inactivity_duration: 1w
min_session: 10s
services: [sshd]
ignore:
  users: [probe]
  networks: [10.0.0.0/8]
action: ["/usr/bin/touch", "{marker}"]
"""


def start_ticks(pid):
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return int(stat[stat.rindex(b")") + 2 :].split()[19])


class Processes:
    """n live processes, forked by a holder, each with an ESTABLISHED loopback connection of its own.

    .pids is [(pid, start ticks, (client, client port, server, server port))]; close() ends them all. Start it
    in the network namespace the ticks run in, or the connections are not theirs to see.
    """

    def __init__(self, n):
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, "-I", "-S", "-c", HOLDER, str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        line = self.proc.stdout.readline().split()
        if not line:
            self.close()
            raise RuntimeError(f"the holder of {n} processes did not start")
        port = int(line[0])
        self.pids = []
        for item in line[1:]:
            pid, client_port = (int(x) for x in item.split(":"))
            self.pids.append((pid, start_ticks(pid), ("127.0.0.1", client_port, "127.0.0.1", port)))

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def synthetic_state(n, helpers, boot, now, stale_every=0, seed=4):
    """Return a state (format 1) with n leases of this boot, the i-th naming the live process helpers[i].

    With stale_every=k, every k-th lease is stale instead: half a pid that is gone, half a live pid whose start
    time is another's (a reused pid).
    """
    rng = random.Random(seed)  # noqa: S311 - reproducible orders, not secrets
    leases = []
    for i in range(n):
        user = "probe" if i % 10 == 0 else f"dev{i % 37}"
        pid, start, (client, port, server, server_port) = helpers[i % len(helpers)]
        if stale_every and i % stale_every == stale_every - 1:
            pid, start = (4_000_000 + i, start) if (i // stale_every) % 2 else (pid, start + 1)  # gone, reused
            port = server_port = 9  # and its connection is gone
        key = fake_auth_info(999 if user == "probe" else i % 37).split()[2][:43]  # one key per user
        leases.append(
            {
                "user": user, "uid": 1000 + i % 37, "service": "sshd", "rhost": client, "tty": "ssh",
                "conn": f"{client} {port} {server} {server_port}", "client": client, "client_port": port,
                "server": server, "server_port": server_port, "key": f"SHA256:{key}", "pid": pid, "pid_start": start,
                "opened": now - rng.uniform(60, 7200), "boot": boot, "source": "hook",
            }
        )  # fmt: skip
    closed = []
    for i in range(10):
        record = dict(leases[i] if i < len(leases) else {"user": f"dev{i}", "service": "sshd", "boot": boot})
        record.update(opened=now - 9000 + i * 60, closed=now - 8000 + i * 60, end="hook", pid=None)
        closed.append(record)
    return {"format": 1, "boot": boot, "leases": leases, "closed": closed, "lost": None, "reaper": {}}


@dataclass
class Case:
    label: str
    argv: list
    state: bytes | None = None  # put back before each run
    prime: bool = False  # run once untimed first, and put back what that run left
    with_sessions: bool = False  # run where the real SSH sessions are (else in an empty network namespace)
    times: list = field(default_factory=list)
    rss: list = field(default_factory=list)
    codes: list = field(default_factory=list)
    error: str | None = None
    sessions: int | None = None  # how many sessions `status --json` listed
    json_out: bool = False


def put_state(state_dir, data):
    tmp = os.path.join(state_dir, "state.json.bench")
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o644)
    os.rename(tmp, os.path.join(state_dir, "state.json"))


def state_dir_of(argv):
    return argv[argv.index("--state-dir") + 1]


def real_sessions(k, work):
    """Start an sshd (with our hook) in this namespace and k SSH sessions held open; return (stop, leases)."""
    from tests.integration.sshd import Sshd, Users

    users = Users([SESSION_USER])
    hook_dir = os.path.join(work, "hook-state")
    server = None
    try:
        server = Sshd(users, hook_dir)
        for _ in range(k):
            server.start(SESSION_USER, "echo ready; exec cat", ready="ready")
        with open(os.path.join(hook_dir, "state.json")) as f:
            found = json.load(f)["leases"]
    except BaseException:
        if server:
            server.stop()
        users.remove()
        raise

    def stop():
        server.stop()
        wait_user_gone(SESSION_USER)
        users.remove()

    return stop, found


def wait_user_gone(name, timeout=10):
    """Wait until no process runs as the user (its sessions ended), so that userdel can remove it."""
    import pwd
    import time

    uid = pwd.getpwnam(name).pw_uid
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        if not any(_uid_of(entry) == uid for entry in os.listdir("/proc") if entry.isdigit()):
            return
        time.sleep(0.05)


def _uid_of(pid):
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def run(quick=False, seed=5):
    """Return the Rows of the tick and status benchmarks."""
    rounds = 1 if quick else 30
    warmup = 0 if quick else 2
    k = 1 if quick else 20
    sizes = QUICK_SIZES if quick else SIZES
    rng = random.Random(seed)  # noqa: S311 - reproducible orders, not secrets
    work = tmpfs_dir("irb-scale-")
    config = os.path.join(work, "config.yaml")
    marker = os.path.join(work, "ACTED")
    with open(config, "w") as f:
        f.write(CONFIG.format(marker=marker))
    spawners = {}
    results = {}
    netns = NetNs()
    try:
        with netns.entered():
            spawners[False] = Spawner()
        for n in sizes:
            _block(n, n == sizes[-1], k, config, work, netns, spawners, rounds, warmup, rng, results)
        acted = os.path.exists(marker)
    finally:
        for spawner in spawners.values():
            spawner.close()
        netns.close()
        remove(work)
    return rows(results, acted, k, sizes)


def _block(n, big, k, config, work, netns, spawners, rounds, warmup, rng, results):
    """Measure one size: its live processes, its ticks and its imports, interleaved."""
    with netns.entered():
        processes = Processes(n)
    stop_sessions = None
    try:
        boot, now = clock.boot_key(), clock.now()
        state = synthetic_state(n, processes.pids, boot, now)
        cases = []

        def add(label, python, tail=(), state=None, prime=False, sessions=False):
            if not tail:  # interpreter start plus the imports of that command
                modules = REAP_MODULES if "reap" in label else STATUS_MODULES
                cases.append(Case(label, [python, "-I", "-c", IMPORTS.format(repo=str(REPO), modules=modules)]))
                return
            state_dir = os.path.join(work, label.replace(" ", "-"))
            os.mkdir(state_dir, 0o755)
            cli = [python, "-I", "-c", RUN_CLI.format(repo=str(REPO)), "--config", config, "--state-dir", state_dir]
            cases.append(
                Case(label, [*cli, *tail], json.dumps(state).encode(), prime, sessions, json_out="--json" in tail)
            )

        pythons = {"deb": SYSTEM_PYTHON, "venv": VENV_PYTHON}
        for tag in ("deb", "venv") if n == 0 or big else ("deb",):
            add(f"{tag} reap imports {n}", pythons[tag])
            add(f"{tag} reap {n}", pythons[tag], ["reap"], state, prime=True)
        if big:
            for tag in ("deb", "venv"):
                add(f"{tag} status imports {n}", pythons[tag])
                add(f"{tag} status {n}", pythons[tag], ["status", "--json"], state, prime=True)
            stale = synthetic_state(n, processes.pids, boot, now, stale_every=20)
            add(f"deb reap {n} stale", SYSTEM_PYTHON, ["reap"], stale)
            with empty_netns():
                spawners[True] = Spawner()
                stop_sessions, session_leases = real_sessions(k, work)
            with_sessions = synthetic_state(n, processes.pids, boot, now)
            for lease in session_leases:  # each real session's lease, somewhere among the others
                with_sessions["leases"].insert(rng.randrange(len(with_sessions["leases"]) + 1), lease)
            add(f"deb reap {n} sessions", SYSTEM_PYTHON, ["reap"], with_sessions, prime=True, sessions=True)
        _measure(cases, spawners, rounds, warmup, rng, work)
        results.update((case.label, case) for case in cases)
    finally:
        if stop_sessions:
            stop_sessions()
        if True in spawners:
            spawners.pop(True).close()
        processes.close()


def _measure(cases, spawners, rounds, warmup, rng, work):
    out_path = os.path.join(work, "stdout")
    err_path = os.path.join(work, "stderr")

    def once(case):
        if case.state is not None:
            put_state(state_dir_of(case.argv), case.state)
        spawner = spawners[case.with_sessions]
        done = spawner.run(case.argv, env=ENV, cwd="/", stdout=out_path, stderr=err_path)
        case.codes.append(done.returncode)
        if done.returncode != 0 and case.error is None:
            with open(err_path, errors="replace") as f:
                case.error = f"{case.label} exited {done.returncode}: {f.read()[-300:].strip()}"
        if case.json_out and case.sessions is None and done.returncode == 0:
            with open(out_path) as f:
                case.sessions = len(json.load(f)["sessions"])
        return done

    for case in cases:
        if case.prime:  # one untimed tick learns the decision; later runs start from what it left
            once(case)
            with open(os.path.join(state_dir_of(case.argv), "state.json"), "rb") as f:
                case.state = f.read()
    for i in range(rounds + warmup):
        order = list(cases)
        rng.shuffle(order)
        for case in order:
            done = once(case)
            if i >= warmup:
                case.times.append(done.seconds)
                case.rss.append(done.maxrss_kb)


def rows(by, acted, k, sizes):
    """Given the measured Cases by label, return the Rows of 4 and 5."""
    big = sizes[-1]

    def fig(label):
        return f"{stats.spread(by[label].times)} ms"

    def rss(label):
        return stats.median(by[label].rss) / 1024

    def med(label):
        return stats.median(by[label].times)

    problems = [c.error for c in by.values() if c.error]
    if acted:
        problems.append("the marker action ran: a tick acted, which it must not with a far deadline")
    reap_target = f"<= {TARGET_REAP_S * 1000:.0f} ms, <= {TARGET_REAP_RSS_MB} MB"
    out = []

    def verdict(ok, judge, *labels):
        if any(by[label].error for label in labels):  # a figure of a command that failed means nothing
            return ERROR
        return met(ok and not problems) if judge else "-"

    def reap_row(key, label, base, what, target="show the growth", judge=False, notes=()):
        work = med(label) - med(base)
        ok = med(label) <= TARGET_REAP_S and rss(label) <= TARGET_REAP_RSS_MB
        out.append(
            Row(
                key,
                what,
                f"interpreter start + imports: {fig(base)}",
                f"{fig(label)}, peak RSS {rss(label):.1f} MB; work {stats.ms(work, 1)} ms",
                stats.fmt_ratio(stats.ratio(med(label), med(base))),
                target,
                verdict(ok, judge, label, base),
                notes,
            )
        )

    for i, n in enumerate(sizes):
        last = n == big
        reap_row(
            f"4{'abcd'[i]}",
            f"deb reap {n}",
            f"deb reap imports {n}",
            f"`idle-reaper reap`, one tick, {n:,} leases (deb)",
            reap_target if last else "show the growth",
            judge=last,
            notes=tuple(problems) if i == 0 else (),
        )
    reap_row(
        "4e",
        f"deb reap {big} stale",
        f"deb reap imports {big}",
        f"`idle-reaper reap`, {big:,} leases, 1 in 20 stale: ended and written each run (deb)",
        reap_target,
        True,
    )
    reap_row("4f", f"deb reap {big} sessions", f"deb reap imports {big}",
             f"`idle-reaper reap`, {big:,} leases + {k} real SSH session(s), each with its lease (deb)", reap_target,
             True)  # fmt: skip
    for key, n in (("4g", 0), ("4h", big)):
        reap_row(key, f"venv reap {n}", f"venv reap imports {n}",
                 f"`idle-reaper reap`, {n:,} leases (venv: PyPI filelock 4.x)", "comparison only")  # fmt: skip
    label, base = f"deb status {big}", f"deb status imports {big}"
    out.append(
        Row(
            "5",
            f"`idle-reaper status --json`, {big:,} leases (deb)",
            f"interpreter start + imports: {fig(base)}",
            f"{fig(label)}, peak RSS {rss(label):.1f} MB; work {stats.ms(med(label) - med(base), 1)} ms",
            stats.fmt_ratio(stats.ratio(med(label), med(base))),
            f"<= {TARGET_STATUS_S * 1000:.0f} ms",
            verdict(med(label) <= TARGET_STATUS_S, True, label, base),
            (
                f"it listed {by[label].sessions} sessions; venv: {fig(f'venv status {big}')}"
                f" (imports {fig(f'venv status imports {big}')})",
            ),
        )
    )
    return out
