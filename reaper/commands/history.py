"""`idle-reaper history [--since 24h] [--json]`: what kept this machine up, and for how long it sat idle.

It reads the log the tick keeps (reaper.actions.history; world-readable, so any user may run it) and rebuilds
a timeline of the period asked for: when the machine was active and because of whom, inhibited, idle, each
action with its reason, and each boot. The summary says what kept it up longest, how long it sat idle, and
how much of that a shorter inactivity_duration would have saved. Times are wall clock, for display.
"""

import json
import sys
import time
from datetime import UTC, datetime

from reaper import __version__
from reaper.actions import history
from reaper.config.durations import format_seconds
from reaper.errors import EXIT_OK, ReaperError
from reaper.escape import escape

DEFAULT_SINCE = 24 * 3600
ACTIVE, INHIBITED, IDLE = "active", "inhibited", "idle"
# One character an hour in the chart.
CHART = {"full": "#", "part": "+", INHIBITED: "=", IDLE: ".", "off": " ", "action": "!"}


def _session_label(event):
    return f"{escape(event.get('user'))} from {escape(event.get('from'))}"


class _Boot:
    def __init__(self, key, start):
        self.key = key
        self.start = start
        self.last = start
        self.sessions = {}  # sid -> [label, open, close, counted]
        self.holds = {}  # "kind id" -> [label, start, end, holds]
        self.actions = []  # (t, event)


def _boots(events):
    """Group the log's events by boot, in order. Repeated boot events (a state rebuilt) are merged."""
    boots = {}
    for e in events:
        key = e.get("boot")
        boot = boots.get(key)
        if boot is None:
            boot = boots[key] = _Boot(key, e["t"])
        boot.last = max(boot.last, e["t"])
        ev = e["ev"]
        if ev == "boot":
            boot.start = min(boot.start, e["t"])
        elif ev == "open":
            s = boot.sessions.setdefault(e.get("sid"), [_session_label(e), None, None, None])
            s[1] = e["t"] if s[1] is None else min(s[1], e["t"])
        elif ev == "close":
            s = boot.sessions.setdefault(e.get("sid"), [_session_label(e), None, None, None])
            if s[1] is None and isinstance(e.get("opened"), (int, float)):
                s[1] = e["opened"]
            s[2], s[3] = e["t"], bool(e.get("counted", True))
        elif ev == "start":
            who = f"{escape(e.get('kind'))} {escape(e.get('id'))} of {escape(e.get('user') or '?')}"
            if e.get("why"):
                who += f" ({escape(e.get('why'), 80)})"
            h = boot.holds.setdefault(f"{e.get('kind')} {e.get('id')}", [who, None, None, e.get("holds")])
            h[1] = e["t"] if h[1] is None else min(h[1], e["t"])
        elif ev == "end":
            h = boot.holds.setdefault(f"{e.get('kind')} {e.get('id')}", [escape(e.get("what")), None, None, None])
            h[2] = e["t"]
        elif ev in ("action", "action_failed"):
            boot.actions.append((e["t"], e))
    return list(boots.values())


def _union(intervals):
    out = []
    for a, b in sorted(i for i in intervals if i[1] > i[0]):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def _minus(intervals, holes):
    """Parts of `intervals` (a union) outside `holes` (a union)."""
    out = []
    for a, b in intervals:
        cur = a
        for h0, h1 in holes:
            if h1 <= cur or h0 >= b:
                continue
            if h0 > cur:
                out.append([cur, h0])
            cur = max(cur, h1)
        if cur < b:
            out.append([cur, b])
    return out


def _overlap(a0, a1, b0, b1):
    return max(0.0, min(a1, b1) - max(a0, b0))


def timeline(events, start, end, current_boot=None, shorter=None):
    """Given the log's events, the period [start, end] (wall clock), the key of the running boot (whose
    sessions last until `end`) and a shorter inactivity_duration to weigh (seconds, or None), return the
    history as a JSON-ready dict: the stretches (active, inhibited, idle), the boots and actions, the
    summary and the hours."""
    stretches, points, credit = [], [], {}
    hours = _hour_buckets(start, end)
    for boot in _boots(events):
        # Until when the machine was up: now for the running boot, else its last event (a poweroff's action
        # is that; a machine that went down otherwise left no record of when).
        b_end = end if boot.key == current_boot else boot.last
        up0, up1 = max(start, boot.start), min(end, b_end)
        if boot.start >= start and boot.start <= end:
            points.append({"at": boot.start, "kind": "boot", "boot": boot.key})
        for t, e in boot.actions:
            if start <= t <= end:
                if e["ev"] == "action":
                    points.append({"at": t, "kind": "action", "action": e.get("action"), "reason": e.get("reason")})
                else:
                    points.append({"at": t, "kind": "action_failed", "reason": e.get("error")})
        if up1 <= up0:
            continue
        active, inhibit, labelled = [], [], []
        for label, s0, s1, counted in boot.sessions.values():
            s0 = boot.start if s0 is None else s0
            s1 = b_end if s1 is None else s1
            if counted is False:
                continue
            active.append((s0, s1))
            labelled.append((label, s0, s1, ACTIVE))
        for label, h0, h1, holds in boot.holds.values():
            h0 = boot.start if h0 is None else h0
            h1 = b_end if h1 is None else h1
            (inhibit if holds == "inhibit" else active).append((h0, h1))
            labelled.append((label, h0, h1, INHIBITED if holds == "inhibit" else ACTIVE))
        for label, a, b, _ in labelled:
            credit[label] = credit.get(label, 0.0) + _overlap(a, b, up0, up1)
        span = [[up0, up1]]
        active_u = [[max(a, up0), min(b, up1)] for a, b in _union(active) if min(b, up1) > max(a, up0)]
        inhibit_u = _minus(_union([(max(a, up0), min(b, up1)) for a, b in inhibit]), active_u)
        busy = _union(active_u + inhibit_u)
        idle_u = _minus(span, busy)
        acted = [t for t, e in boot.actions if e["ev"] == "action"]
        for kind, parts in ((ACTIVE, active_u), (INHIBITED, inhibit_u), (IDLE, idle_u)):
            for a, b in parts:
                item = {"start": a, "end": b, "seconds": round(b - a, 1), "kind": kind}
                if kind != IDLE:
                    item["who"] = sorted({lab for lab, s0, s1, k in labelled if k == kind and _overlap(a, b, s0, s1)})
                elif any(a <= t <= b + 5 for t in acted):
                    item["ended_by"] = "action"
                elif b >= up1 and boot.key == current_boot:
                    item["ended_by"] = "now"
                elif b >= up1:
                    item["ended_by"] = "down"
                else:
                    item["ended_by"] = "activity"
                stretches.append(item)
                _fill_hours(hours, kind, a, b)
        for t in acted:
            _mark_action(hours, t)
        for bucket in hours:
            bucket["up_seconds"] += _overlap(up0, up1, bucket["start"], bucket["start"] + 3600)
    stretches.sort(key=lambda s: s["start"])
    points.sort(key=lambda p: p["at"])
    return {"stretches": stretches, "points": points, "hours": hours,
            "summary": summary(stretches, points, credit, shorter)}  # fmt: skip


def summary(stretches, points, credit, shorter):
    """The summary line's figures: time up, active, inhibited and idle; who kept it up longest; and the idle
    time a shorter inactivity_duration would have saved: an idle stretch of length L runs min(L, shorter)
    before the action under it, so it saves L - shorter when longer. A stretch that ended with someone
    coming back would have found the machine off then (`returns_found_off`)."""
    total = {ACTIVE: 0.0, INHIBITED: 0.0, IDLE: 0.0}
    for s in stretches:
        total[s["kind"]] += s["seconds"]
    saved, found_off = 0.0, 0
    if shorter is not None:
        for s in stretches:
            if s["kind"] == IDLE and s["seconds"] > shorter:
                saved += s["seconds"] - shorter
                found_off += s["ended_by"] == "activity"
    longest = max(credit.items(), key=lambda kv: (kv[1], kv[0]), default=None)
    return {
        "up_seconds": sum(total.values()),
        "active_seconds": total[ACTIVE],
        "inhibited_seconds": total[INHIBITED],
        "idle_seconds": total[IDLE],
        "longest": None if longest is None or longest[1] <= 0 else {"who": longest[0], "seconds": longest[1]},
        "shorter_inactivity_duration": shorter,
        "saved_seconds": saved if shorter is not None else None,
        "returns_found_off": found_off if shorter is not None else None,
        "actions": sum(1 for p in points if p["kind"] == "action"),
    }


def _hour_buckets(start, end):
    first = int(start // 3600) * 3600
    return [
        {"start": float(h), "active_seconds": 0.0, "inhibited_seconds": 0.0, "idle_seconds": 0.0,
         "up_seconds": 0.0, "actions": 0}
        for h in range(first, int(end) + 1, 3600)
    ]  # fmt: skip


def _fill_hours(hours, kind, a, b):
    for bucket in hours:
        bucket[f"{kind}_seconds"] += _overlap(a, b, bucket["start"], bucket["start"] + 3600)


def _mark_action(hours, t):
    for bucket in hours:
        if bucket["start"] <= t < bucket["start"] + 3600:
            bucket["actions"] += 1


# --- output ------------------------------------------------------------------------------------------------


def _local(t):
    """Given Unix seconds or an ISO time, return an aware local datetime."""
    if isinstance(t, str):
        return datetime.fromisoformat(t)
    return datetime.fromtimestamp(t, tz=UTC).astimezone()


def _iso(t):
    return _local(t).isoformat(timespec="seconds")


def _hours_text(seconds):
    return format_seconds(round(seconds)) if seconds < 3600 else f"{seconds / 3600:.1f} h"


def chart(hours):
    """Return the chart: a row a day, a character an hour (see CHART), or [] for a period under 3 hours."""
    if len(hours) < 3:
        return []
    rows = {}
    for bucket in hours:
        when = _local(bucket["start"])
        if bucket["actions"]:
            mark = CHART["action"]
        elif bucket["active_seconds"] >= 1800:
            mark = CHART["full"]
        elif bucket["active_seconds"] > 0:
            mark = CHART["part"]
        elif bucket["inhibited_seconds"] > 0:
            mark = CHART[INHIBITED]
        elif bucket["up_seconds"] > 0:
            mark = CHART[IDLE]
        else:
            mark = CHART["off"]
        row = rows.setdefault(when.strftime("%Y-%m-%d"), [" "] * 24)
        row[when.hour] = mark
    lines = [
        "Per hour: # active most of the hour, + partly, = inhibited, . idle, ! the action ran, blank: off",
        " " * 13 + "".join(f"{h:<6d}" for h in range(0, 24, 6)),
    ]
    lines += [f"  {day}|{''.join(row)}|" for day, row in rows.items()]
    return lines


def render(view):
    """Return the history as text for a person."""
    lines = [f"History from {_clockline(view['since'])} to {_clockline(view['until'])}:"]
    items = [(p["at"], 0, p) for p in view["points"]] + [(s["start"], 1, s) for s in view["stretches"]]
    for _, _, item in sorted(items, key=lambda x: (x[0], x[1])):
        if "kind" in item and "at" in item:
            when = _local(item["at"]).strftime("%Y-%m-%d %H:%M:%S")
            if item["kind"] == "boot":
                lines.append(f"  {when}           booted")
            elif item["kind"] == "action":
                lines.append(f"  {when}           the action ran {item['action']}: {escape(item['reason'], 300)}")
            else:
                lines.append(f"  {when}           the action failed: {escape(item['reason'], 300)}")
            continue
        a, b = _local(item["start"]), _local(item["end"])
        span = f"{a.strftime('%Y-%m-%d %H:%M:%S')}-{b.strftime('%H:%M:%S')}"
        text = f"{item['kind']} {format_seconds(round(item['seconds']))}"
        if item.get("who"):
            text += ": " + ", ".join(item["who"])
        if item.get("ended_by") == "action":
            text += ", until the action"
        elif item.get("ended_by") == "now":
            text += ", and still"
        elif item.get("ended_by") == "down":
            text += ", until the machine went down (its last record)"
        lines.append(f"  {span}  {text}")
    if len(lines) == 1:
        lines.append("  nothing recorded in this period")
    lines += chart(view["hours"])
    lines.append("Summary: " + _summary_line(view["summary"], view.get("inactivity_duration")))
    return "\n".join(lines) + "\n"


def _summary_line(s, duration):
    parts = []
    if s["longest"]:
        parts.append(f"kept up longest by {s['longest']['who']} ({format_seconds(round(s['longest']['seconds']))})")
    else:
        parts.append("nothing kept it up")
    parts.append(f"idle {_hours_text(s['idle_seconds'])} of {_hours_text(s['up_seconds'])} up")
    if s["shorter_inactivity_duration"] is not None:
        now_text = f" instead of {format_seconds(duration)}" if duration else ""
        found = s["returns_found_off"]
        parts.append(
            f"with inactivity_duration {format_seconds(s['shorter_inactivity_duration'])}{now_text},"
            f" {_hours_text(s['saved_seconds'])} of those would have been saved"
            + (f" ({found} return(s) would have found it off)" if found else "")
        )
    parts.append(f"{s['actions']} action(s)")
    return "; ".join(parts) + "."


def _clockline(iso):
    return datetime.fromisoformat(iso).strftime("%H:%M %Z (%Y-%m-%d)")


def _current_boot(paths):
    from reaper import clock

    try:
        return clock.boot_key(paths.proc)
    except OSError:
        return None


def _duration(paths):
    """The configured inactivity_duration, or None if off or the config can't be read."""
    from reaper import config

    try:
        return config.load(paths.config, cache_dir=paths.state_dir).inactivity_duration
    except (config.ConfigError, OSError):
        return None


def build(paths, since, shorter=None, history_dir=None, now_wall=None):
    """Return the history of the last `since` seconds as a JSON-ready dict."""
    end = time.time() if now_wall is None else now_wall
    start = end - since
    duration = _duration(paths)
    if shorter is None and duration:
        shorter = max(1, duration // 2)
    where = history_dir or history.directory(paths.state_dir)
    try:
        events = history.read(where)
    except OSError as e:
        raise ReaperError(f"cannot read the history in {where}: {e.strerror}") from None
    view = timeline(events, start, end, _current_boot(paths), shorter)
    for s in view["stretches"]:
        s["start"], s["end"] = _iso(s["start"]), _iso(s["end"])
    for p in view["points"]:
        p["at"] = _iso(p["at"])
    for h in view["hours"]:
        h["start"] = _iso(h["start"])
    return {"version": __version__, "since": _iso(start), "until": _iso(end), "inactivity_duration": duration,
            "history_dir": where, **view}  # fmt: skip


def _since(text):
    from reaper.config import durations

    try:
        seconds = durations.parse(text)
    except durations.DurationError as e:
        raise ReaperError(f"--since {text!r}: {e}", 2) from None
    if seconds is None:
        raise ReaperError("--since: give a duration such as 24h or 7d", 2)
    return seconds


def handle(args, paths):
    since = _since(args.since) if args.since else DEFAULT_SINCE
    shorter = _since(args.shorter) if args.shorter else None
    view = build(paths, since, shorter, args.history_dir)
    if args.json:
        sys.stdout.write(json.dumps(view, indent=2 if sys.stdout.isatty() else None) + "\n")
    else:
        sys.stdout.write(render(view))
    return EXIT_OK
