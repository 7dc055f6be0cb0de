"""Row 1: real `ssh ... true` logins to real sshds on 127.0.0.1, interleaved across three PAM stacks.

Three sshd instances run side by side (tests/integration/sshd.py), identical but for one line in their PAM
session stack: none; pam_exec of the hook's interpreter and flags doing nothing (`-c pass`: the floor for any
Python hook); our hook as the package's PAM profile runs it. Each round
logs in once to each, in a random order. After each login the next waits until that sshd has no
per-connection process left (the close hook has ended), then pauses a little more.
"""

import os
import random
import time

from bench import HOOK_ARGV, NOOP_ARGV, NOOP_SHOWN, stats
from bench.proc import remove, run_timed, tmpfs_dir
from bench.table import Row, met
from tests.integration.sshd import Sshd, Users

# Unique per run: two runs at once (make test runs the smoke test) must not share, or delete, a test user.
USER = f"irb-login-{os.getpid()}"
PASS_LINE = f"session optional pam_exec.so quiet {' '.join(NOOP_ARGV)}"
TARGET = 1.03
PAUSE = 0.1  # after the close hook has ended, before the next login
LABELS = ("none", "pass", "ours")


def children(pid):
    """Return the pids whose parent is pid (sshd's per-connection processes)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat[stat.rindex(b")") + 2 :].split()[1]) == pid:
                out.append(int(entry))
    return out


def settle(server, timeout=10):
    """Wait until the sshd has no per-connection process left: the session, and its close hook, have ended."""
    give_up = time.monotonic() + timeout
    while children(server.proc.pid) and time.monotonic() < give_up:
        time.sleep(0.01)
    time.sleep(PAUSE)


def run(quick=False, seed=1):
    """Return the Rows of the SSH login benchmark."""
    rounds = 2 if quick else 100
    rng = random.Random(seed)  # noqa: S311 - reproducible orders, not secrets
    work = tmpfs_dir("irb-login-")
    users = Users([USER])
    servers = {}
    times = {label: [] for label in LABELS}
    paired = []  # per round: ours / python-pass, two logins taken a second apart
    failures = []  # of the benchmark itself (our hook's state)
    failed = {label: [] for label in LABELS}  # logins that failed, by PAM stack
    err_path = os.path.join(work, "ssh.stderr")
    try:
        state_dir = os.path.join(work, "state")
        servers["none"] = Sshd(users, state_dir, hook_line=False)
        servers["pass"] = Sshd(users, state_dir, hook_line=PASS_LINE)
        ours = f"session optional pam_exec.so quiet {' '.join(HOOK_ARGV)} --state-dir {state_dir}"
        servers["ours"] = Sshd(users, state_dir, hook_line=ours)
        warmup = 0 if quick else 2
        for i in range(rounds + warmup):
            order = list(LABELS)
            rng.shuffle(order)
            this_round = {}
            for label in order:
                server = servers[label]
                done = run_timed(server.ssh_argv(USER, "true"), stderr=err_path)
                if done.returncode != 0:
                    with open(err_path, errors="replace") as f:
                        why = f.read().strip().splitlines()[-1:] or ["no message"]
                    failed[label].append(f"exit {done.returncode}: {why[0][:160]}")
                elif i >= warmup:
                    times[label].append(done.seconds)
                    this_round[label] = done.seconds
                settle(server)
            if "ours" in this_round and "pass" in this_round:
                paired.append(this_round["ours"] / this_round["pass"])
        state = _read_state(state_dir)
        leftover = len(state["leases"]) if state else None
        recorded = sum(1 for r in (state or {}).get("closed", []) if r.get("end") == "hook")
        if not state or leftover or not recorded:
            failures.append(f"our hook's state is not as expected: {leftover} leases left, {recorded} closed kept")
    finally:
        for server in servers.values():
            server.stop()
        users.remove()
        remove(work)
    med = {label: stats.median(times[label]) for label in LABELS}
    vs_pass = stats.ratio(med["ours"], med["pass"])
    vs_none = stats.ratio(med["ours"], med["none"])
    notes = []
    if len(times["ours"]) > 2 and len(times["pass"]) > 2:
        lo, hi = stats.bootstrap_ratio(times["ours"], times["pass"])
        notes.append(
            f"ours - python-pass hook = {stats.ms(med['ours'] - med['pass'], 1)} ms of the median login;"
            f" 95% bootstrap interval of the ratio {lo:.3f}-{hi:.3f}; median of the per-round ratios (each round's"
            f" two logins a second apart, so a load that drifts cancels out) {stats.median(paired):.3f}"
        )
    for label in LABELS:
        if failed[label]:
            notes.append(f"{len(failed[label])} {label} login(s) failed and are left out, e.g. {failed[label][0]}")
    if failed["ours"] and not (failed["none"] or failed["pass"]):
        failures.append("only logins through our hook failed")
    notes.extend(failures[:5])
    ours = f"{stats.spread(times['ours'])} ms"
    return [
        Row(
            "1a",
            "SSH login (`ssh ... true`), our hook",
            f"pam_exec {NOOP_SHOWN}: {stats.spread(times['pass'])} ms",
            ours,
            stats.fmt_ratio(vs_pass),
            f"<= {TARGET}x",
            met(vs_pass <= TARGET and not failures),
            tuple(notes),
        ),
        Row(
            "1b",
            "SSH login (`ssh ... true`), our hook",
            f"no hook: {stats.spread(times['none'])} ms",
            ours,
            stats.fmt_ratio(vs_none),
            "report (a yaml+humanfriendly+filelock hook: 1.38x)",
        ),
    ]


def _read_state(state_dir):
    import json

    try:
        with open(os.path.join(state_dir, "state.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
