"""logind's idle inhibitors: `systemd-inhibit --what=idle CMD` holds the machine as `idle-reaper inhibit` does.

Where systemd-logind runs, a process may take an inhibitor lock (org.freedesktop.login1.Manager.Inhibit); it
lasts until the process closes the file descriptor logind gave it, which for systemd-inhibit is when CMD ends.
An idle lock in block mode is a hold on the machine: the state is "inhibited" while it lasts, but never longer
than max_inhibit from its process's start (capped), so a forgotten one can't keep the machine up forever.

logind's ListInhibitors, over the system bus, is the authority. busctl makes the call (Debian's
`systemd-inhibit --list` has no JSON and ignores --what); the tick's unit allows AF_UNIX, which is all the bus
needs. logind also keeps one file per inhibitor in INHIBIT_DIR: while that holds none, there is no inhibitor
of any kind and the tick skips the call, so a machine without inhibitors costs a directory listing a minute.
"""

import json
import os
import pwd

from reaper import clock
from reaper.evidence import activity

KIND = "logind"
# logind makes this when it starts; systemd's own logind_running() tests for it the same way.
SEATS_DIR = "/run/systemd/seats"
# One file per inhibitor (and its .ref FIFO); logind makes it empty at start (seen on systemd 252).
INHIBIT_DIR = "/run/systemd/inhibit"
BUSCTL = "/usr/bin/busctl"
CALL = (
    "--system", "--json=short", "--timeout=5", "call",
    "org.freedesktop.login1", "/org/freedesktop/login1", "org.freedesktop.login1.Manager", "ListInhibitors",
)  # fmt: skip
TIMEOUT = 10
NOT_HERE = "logind: not running here, so there are no logind idle inhibitors"


def parse(text):
    """Given busctl's JSON answer to ListInhibitors, return its inhibitors as (what, who, why, mode, uid, pid)
    tuples. Raise ValueError if it is not that answer."""
    reply = json.loads(text)
    if reply.get("type") != "a(ssssuu)" or not isinstance(reply.get("data"), list) or len(reply["data"]) != 1:
        raise ValueError(f"not a ListInhibitors answer: {text[:200]!r}")
    out = []
    for entry in reply["data"][0]:
        what, who, why, mode, uid, pid = entry
        if not all(isinstance(x, str) for x in (what, who, why, mode)) or not all(
            isinstance(x, int) for x in (uid, pid)
        ):
            raise ValueError(f"not an inhibitor: {entry!r}")
        out.append((what, who, why, mode, uid, pid))
    return out


def holds_idle(what, mode):
    """True if an inhibitor of these `what` (colon-separated) and `mode` blocks idleness."""
    return mode == "block" and "idle" in what.split(":")


def _user(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def activities(inhibitors, cfg, start_of, boot):
    """Given parsed inhibitors, return the Activity of each idle one. start_of(pid) is the process's start in
    CLOCK_BOOTTIME seconds, or None if it is gone (the descriptor handed on): then it counts from `boot`, the
    earliest it can have begun, so max_inhibit still ends it."""
    cap = cfg.max_inhibit  # seconds, None when off
    found, per_pid = [], {}
    for what, who, why, mode, uid, pid in sorted(inhibitors, key=lambda i: (i[5], i[1], i[2], i[0])):
        if not holds_idle(what, mode):
            continue
        n = per_pid[pid] = per_pid.get(pid, 0) + 1
        since = start_of(pid)
        if since is None:
            since = boot
        until = None if cap is None else since + cap
        reason = f"{who}: {why}" if who and why else who or why or None
        ident = str(pid) if n == 1 else f"{pid}-{n}"
        found.append(activity.Activity(KIND, ident, activity.INHIBIT, _user(uid), reason, since, until, pid,
                                       capped=until is not None))  # fmt: skip
    return found


def _listed(inhibit_dir):
    """Return the names of logind's inhibitor files (none before the first inhibitor)."""
    try:
        return [n for n in os.listdir(inhibit_dir) if not n.endswith(".ref") and not n.startswith(".")]
    except FileNotFoundError:
        return []


def list_inhibitors(busctl=BUSCTL):
    """Ask logind for its inhibitors over the system bus. Return the parsed list. Raise OSError or ValueError
    (with busctl's message) if it can't."""
    import subprocess  # only when logind has an inhibitor: a tick imports it otherwise only to act (7 ms)

    done = subprocess.run([busctl, *CALL], capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise ValueError(f"busctl exited {done.returncode}: {done.stderr.strip()[:200]}")
    return parse(done.stdout)


def gather(paths, cfg, now, seats_dir=None, inhibit_dir=None, busctl=BUSCTL):
    """Return (activities, notes): logind's idle inhibitors, or a note saying logind is not here or could not
    be asked. Only reads."""
    if not os.path.isdir(seats_dir or SEATS_DIR):
        return [], [NOT_HERE]
    if not _listed(inhibit_dir or INHIBIT_DIR):
        return [], []
    try:
        found = list_inhibitors(busctl)
    except Exception as e:  # noqa: BLE001 - OSError, ValueError, TimeoutExpired: any of them is a note
        return [], [f"logind: could not list its inhibitors: {e}"]

    def start_of(pid):
        ticks = clock.process_start_ticks(pid, paths.proc)
        return None if ticks is None else ticks / clock.CLK_TCK

    return activities(found, cfg, start_of, clock.boot_started(paths.proc)), []
