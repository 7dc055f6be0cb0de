"""mosh sessions whose client is attached: activity, as an SSH session is.

A mosh session outlives the SSH login that started it: mosh-server detaches from it and talks to its client
over UDP, and it may live on for days after the client is gone (killed, the laptop closed, the network lost).
So a mosh-server process is no evidence of a user. Debian builds mosh-server with libutempter, and it keeps a
utmp entry for its terminal whose host says whether a client is there:

    "<client address> via mosh [PID]"   a client has been heard from in the last 30 s
    "mosh [PID]"                        no contact for 30 s: mosh-server rewrites the entry

That entry is the signal: attached counts (ACTIVE, since mosh-server's start), detached doesn't. When it flips
(or the entry goes, with mosh-server), the session is no longer reported, and the tick ends it when it first
sees it gone. So a vanished client stops counting at most about 30 s after its last contact plus one tick
period (the timer's minute), and idleness runs from then. idle-reaper(8), MOSH, has the figures measured.

An entry is taken only if the system bears it out: its pid is alive, runs mosh-server, and belongs to the user
the entry names (a user can write utmp entries of their own through utempter, but not for another user).
"""

import os
import pwd
import re
import struct

from reaper import clock, policy
from reaper.escape import escape
from reaper.evidence import activity

KIND = "mosh"
UTMP = "/run/utmp"
# glibc's struct utmp on Linux (every architecture Debian builds for: ut_tv is two int32 there): ut_type,
# ut_pid, ut_line, ut_id, ut_user, ut_host, ut_exit, ut_session, ut_tv, ut_addr_v6.
RECORD = struct.Struct("<h2xi32s4s32s256shhiii16s20x")
USER_PROCESS = 7
ATTACHED = re.compile(r"(?P<addr>.+) via mosh \[(?P<pid>\d+)\]")
DETACHED = re.compile(r"mosh \[(?P<pid>\d+)\]")
SERVER = "mosh-server"


def _text(raw):
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def parse(data):
    """Given the bytes of a utmp file, return its mosh entries as dicts with `user`, `line`, `pid`, `addr`
    (None when detached), `attached` and `entry_pid` (ut_pid). Entries of other kinds are left out."""
    out = []
    for offset in range(0, len(data) - RECORD.size + 1, RECORD.size):
        fields = RECORD.unpack_from(data, offset)
        ut_type, ut_pid, line, host = fields[0], fields[1], _text(fields[2]), _text(fields[5])
        if ut_type != USER_PROCESS or "mosh [" not in host:
            continue
        match = ATTACHED.fullmatch(host)
        detached = None if match else DETACHED.fullmatch(host)
        if match is None and detached is None:
            continue
        found = match or detached
        out.append(
            {
                "user": _text(fields[4]),
                "line": line,
                "pid": int(found["pid"]),
                "addr": match["addr"] if match else None,
                "attached": match is not None,
                "entry_pid": ut_pid,
            }
        )
    return out


def _comm(pid, proc):
    try:
        with open(f"{proc}/{pid}/comm") as f:
            return f.read().rstrip("\n")
    except OSError:
        return None


def _uid_of(pid, proc):
    try:
        return os.stat(f"{proc}/{pid}").st_uid
    except OSError:
        return None


def _uid_named(user):
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def confirm(entry, proc, uid_named=None):
    """Return why the system contradicts a utmp entry of mosh, or None if it bears it out."""
    uid_named = uid_named or _uid_named
    pid = entry["pid"]
    if entry["entry_pid"] != pid:
        return f"its entry names pid {pid} but was made by pid {entry['entry_pid']}"
    if _comm(pid, proc) != SERVER:
        return f"pid {pid} is not a running {SERVER}"
    owner, named = _uid_of(pid, proc), uid_named(entry["user"])
    if owner is None or owner != named:
        return f"pid {pid} does not belong to user {escape(entry['user'])}"
    return None


def activities(entries, cfg, proc, uid_named=None):
    """Given parsed utmp entries, return (activities, notes): each attached, confirmed, not ignored session."""
    found, notes, seen = [], [], set()
    for entry in entries:
        pid, who = entry["pid"], f"session of {escape(entry['user'])} (pid {entry['pid']})"
        if pid in seen:
            continue
        seen.add(pid)
        if not entry["attached"]:
            if confirm(entry, proc, uid_named) is None:
                notes.append(f"mosh: {who} has no client attached (none heard from for 30 s): not counted")
            continue
        contradiction = confirm(entry, proc, uid_named)
        if contradiction is not None:
            notes.append(f"mosh: a utmp entry of a {who} is not taken: {contradiction}")
            continue
        ignored = policy.ignore_reason(cfg, {"user": entry["user"], "client": entry["addr"]})
        if ignored is not None:
            notes.append(f"mosh: {who} from {escape(entry['addr'])} does not count: {ignored}")
            continue
        ticks = clock.process_start_ticks(pid, proc)
        if ticks is None:
            continue  # gone since
        why = f"from {entry['addr']} on {entry['line']}"
        found.append(activity.Activity(KIND, str(pid), activity.ACTIVE, entry["user"], why, ticks / clock.CLK_TCK,
                                       pid=pid))  # fmt: skip
    return found, notes


def gather(paths, cfg, now, utmp=None):
    """Return (activities, notes): the mosh sessions whose client is attached. Only reads."""
    try:
        with open(utmp or UTMP, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return [], []
    if b"mosh [" not in data:
        return [], []
    return activities(parse(data), cfg, paths.proc)
