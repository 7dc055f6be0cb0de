"""Inhibitors (`idle-reaper inhibit`) as evidence: each file of the inhibitors directory that holds.

An inhibitor holds the machine up (the state is "inhibited") from its `since` until the first of: its own
end (`ended`, which `inhibit -- CMD` writes when the command exits and `--release` writes at once), its
time limit (`until`, from `--for`), the end of the process it follows (pid and start time, so a reused pid
can't extend it; noticed when a tick or status next looks), and max_inhibit after it began. Its end counts
as activity, as a session's close does.

The owner is the file's, from fstat; a file of a user whom may_inhibit leaves out, one that begins or ends in
the future, or that follows another user's process, is refused. A user's own file can say anything else:
that only ever shortens their own hold, which max_inhibit bounds anyway.
"""

import os
import time

from reaper import clock
from reaper.escape import escape
from reaper.evidence import activity, monitor
from reaper.state import inhibitors as files

KIND = "inhibitor"
# A time in a file this far ahead of now is a clock's rounding, not the future.
SLACK = 2.0
# Reasons for refusals named in one note; the rest are counted.
NAMED = 8


def user_name(uid, cache):
    if uid not in cache:
        import pwd

        try:
            cache[uid] = pwd.getpwuid(uid).pw_name
        except KeyError:
            cache[uid] = str(uid)
    return cache[uid]


def may_inhibit(cfg, uid):
    """Return None if `uid` may hold an inhibitor under cfg.may_inhibit, else why not."""
    who = cfg.may_inhibit
    if uid == 0 or who == "everyone":
        return None
    if who == "root":
        return "may_inhibit is root"
    import grp
    import pwd

    try:
        pw = pwd.getpwuid(uid)
        member = set(os.getgrouplist(pw.pw_name, pw.pw_gid))
    except (KeyError, OSError):
        return f"uid {uid} has no account"
    for group in who:
        try:
            if grp.getgrnam(group).gr_gid in member:
                return None
        except KeyError:
            continue
    return f"not in a group may_inhibit lists ({', '.join(who)})"


def process_uid(pid, proc):
    """Return the real uid of a process, or None if it is gone."""
    try:
        with open(f"{proc}/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError, ValueError):
        return None
    return None


def runs(pid, proc):
    """Return the start time (clock ticks) of a process that runs, or None if it is gone or a zombie (it has
    exited: only its parent has yet to reap it, which an orphan's may never do)."""
    fields = monitor.stat_fields(pid, proc)
    if fields is None or fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def follows(record, proc):
    """True if the process the record follows still runs: the same pid with the same start time."""
    return runs(record["pid"], proc) == record["pid_start"]


def to_activity(entry, user, cfg, now, proc):
    """Given an Entry, return its Activity, or a string saying why it is refused."""
    r = entry.record
    since = r["since"]
    if since > now + SLACK:
        return "begins in the future"
    cap = None if cfg.max_inhibit is None else since + cfg.max_inhibit
    until, capped = r["until"], False
    if cap is not None and (until is None or cap < until):
        until, capped = cap, True
    ended = r["ended"]
    if ended is not None:
        if ended > now + SLACK:
            return "ends in the future"
        ended = max(since, ended if until is None else min(ended, until))
    elif r["pid"] is not None:
        owner = process_uid(r["pid"], proc)
        if entry.uid != 0 and owner is not None and owner != entry.uid:
            return f"follows pid {r['pid']}, a process of another user"
        if owner is None or not follows(r, proc):
            ended = now if until is None else min(now, until)  # first seen gone: now, as a stale lease
    return activity.Activity(KIND, entry.id, activity.INHIBIT, user, r["why"], since, until, r["pid"], ended, capped)


def _note(refused, names):
    """One line for every refused file: grouped by why, each group with a count and the first file's name."""
    groups = {}
    for r in refused:
        groups.setdefault(r.why, []).append(r)
    shown = []
    for why, group in list(groups.items())[:NAMED]:
        first = group[0]
        who = f"{escape(first.name, 40)} of {escape(names.get(first.uid, first.uid), 32)}"
        shown.append(f"{len(group)} {escape(why, 120)} ({who}{', ...' if len(group) > 1 else ''})")
    rest = sum(len(g) for g in list(groups.values())[NAMED:])
    more = f"; and {rest} more" if rest else ""
    return f"inhibitors: refused {len(refused)} file(s): {'; '.join(shown)}{more}"


def gather(paths, cfg, now):
    """Return (activities, notes): one Activity per inhibitor file that is not refused. Only reads."""
    proc = getattr(paths, "proc", "/proc")
    try:
        entries, refusals, _ = files.scan(paths.state_dir, clock.boot_key(proc))
    except files.InhibitorError as e:
        return [], [f"inhibitors: {e}"]
    names, found = {}, []
    for entry in entries:
        user = user_name(entry.uid, names)
        why_not = may_inhibit(cfg, entry.uid)
        got = why_not or to_activity(entry, user, cfg, now, proc)
        if isinstance(got, str):
            refusals.append(files.Refusal(entry.name, entry.uid, got, delete=False))
        else:
            found.append(got)
    for refusal in refusals:
        user_name(refusal.uid, names)
    return found, [_note(refusals, names)] if refusals else []


def tidy(paths, activities, now):
    """Under the state lock, after the tick remembered what ended: make the directory if it is missing, and
    delete the files of inhibitors that ended, of files refused for what they are, and stale temp files."""
    from reaper.log import logger

    ended = {a.id for a in activities if a.end(now) is not None}
    proc = getattr(paths, "proc", "/proc")
    try:
        files.ensure_dir(paths.state_dir)
        entries, refusals, stale = files.scan(paths.state_dir, clock.boot_key(proc), time.time())
    except (OSError, files.InhibitorError) as e:
        logger.warning(f"inhibitors: {e}")
        return
    doomed = [e.name for e in entries if e.id in ended] + [r.name for r in refusals if r.delete] + stale
    if doomed:
        files.remove(paths.state_dir, doomed)
