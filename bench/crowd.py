"""Row 3: the hook under contention: 50 logins at once, 20 rounds, through a real PAM stack (pam_exec).

A copy of /etc/pam.d with two benchmark services is bind-mounted over /etc/pam.d in a private mount namespace
(as tests/integration/pamstack.py does; /etc is untouched): one runs our hook as the package does, the other the
same interpreter and flags doing nothing (`-c pass`).
Rounds of each alternate, in a random order. bench/crowd_conductor.py runs the sessions and checks the state.
"""

import json
import os
import random
import shutil
import subprocess

from bench import HOOK_ARGV, NOOP_ARGV, NOOP_SHOWN, REPO, VENV_PYTHON, stats
from bench.proc import remove, tmpfs_dir
from bench.table import Row, met

HOOK_SERVICE = "irb-crowd-hook"
NOOP_SERVICE = "irb-crowd-pass"
TARGET_P99 = 0.250


def write_services(pam_d, state_dir):
    hooks = {
        HOOK_SERVICE: f"{' '.join(HOOK_ARGV)} --state-dir {state_dir}",
        NOOP_SERVICE: " ".join(NOOP_ARGV),
    }
    for service, hook in hooks.items():
        with open(os.path.join(pam_d, service), "w") as f:
            f.write(
                "auth sufficient pam_permit.so\naccount sufficient pam_permit.so\n"
                f"session optional pam_exec.so quiet {hook}\n"
            )


def run(quick=False, seed=3):
    """Return the Row of the contention benchmark."""
    sessions, pairs = (5, 1) if quick else (50, 20)
    rng = random.Random(seed)  # noqa: S311 - reproducible orders, not secrets
    order = []
    for _ in range(pairs):
        pair = [HOOK_SERVICE, NOOP_SERVICE]
        rng.shuffle(pair)
        order.extend(pair)
    work = tmpfs_dir("irb-crowd-")
    try:
        pam_d = os.path.join(work, "pam.d")
        shutil.copytree("/etc/pam.d", pam_d, symlinks=True)
        state_dir = os.path.join(work, "state")
        write_services(pam_d, state_dir)
        spec = {"sessions": sessions, "rounds": order, "state_dir": state_dir, "hook_service": HOOK_SERVICE}
        script = 'mount --bind "$1" /etc/pam.d && shift && exec "$@"'
        argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", pam_d,
                VENV_PYTHON, "-m", "bench.crowd_conductor", json.dumps(spec)]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"the crowd conductor failed ({done.returncode}): {done.stderr[-1500:]}")
        results = json.loads(done.stdout)
    finally:
        remove(work)
    opens = {HOOK_SERVICE: [], NOOP_SERVICE: []}
    closes = {HOOK_SERVICE: [], NOOP_SERVICE: []}
    problems = []
    pending = 0
    for r in results:
        pending += r.get("pending", 0)
        opens[r["service"]].extend(r["open"])
        closes[r["service"]].extend(r["close"])
        problems.extend(r["problems"])
    p99 = stats.percentile(opens[HOOK_SERVICE], 99)
    p99_pass = stats.percentile(opens[NOOP_SERVICE], 99)
    nothing_lost = not problems
    close_p99 = stats.percentile(closes[HOOK_SERVICE], 99)
    checked = (
        "every open and close recorded exactly once, nothing left over" if nothing_lost else "; ".join(problems[:5])
    )
    notes = [
        f"p99 of the open: ours {stats.ms(p99)} ms, {NOOP_SHOWN} {stats.ms(p99_pass)} ms;"
        f" close: ours median {stats.spread(closes[HOOK_SERVICE])} ms, p99 {stats.ms(close_p99)} ms",
        f"state checked after every phase of every round: {checked}",
        f"pending files seen at those checks (opens that found the lock busy, folded in later): {pending}",
    ]
    return [
        Row(
            "3",
            f"hook under contention: {sessions} PAM sessions at once, {pairs} rounds; p99 of the open",
            f"pam_exec {NOOP_SHOWN}, same crowd: median {stats.spread(opens[NOOP_SERVICE])} ms",
            f"{stats.spread(opens[HOOK_SERVICE])} ms; p99 {stats.ms(p99)} ms; nothing lost: {met(nothing_lost)}",
            stats.fmt_ratio(stats.ratio(p99, p99_pass)) + " (p99)",
            f"p99 <= {TARGET_P99 * 1000:.0f} ms; nothing lost",
            met(p99 <= TARGET_P99 and nothing_lost),
            tuple(notes),
        )
    ]
