"""`idle-reaper status`: where things stand and why, as text for a person or JSON for a control plane.

It only reads (the state file is world-readable), so it works for any user. The JSON fields `state`,
`inactivity_duration`, `idle_seconds`, `seconds_until_action` and `sessions` are a stable interface.
"""

import json
import math
import sys
import time
from datetime import UTC, datetime

from reaper import __version__, clock, config, decision
from reaper.config.durations import format_seconds
from reaper.errors import EXIT_OK
from reaper.escape import escape
from reaper.evidence import activity
from reaper.observe import observe
from reaper.state import leases


def _wall(boottime, now_boot, now_wall):
    """Given a CLOCK_BOOTTIME instant, return it as an aware local datetime (for display only)."""
    if boottime is None:
        return None
    return datetime.fromtimestamp(now_wall - (now_boot - boottime), tz=UTC).astimezone()


def _iso(dt):
    return None if dt is None else dt.isoformat(timespec="seconds")


def _activity_session_json(a, now_boot):
    """Another kind of session (mosh, say) in the shape of an SSH session's, with its kind."""
    return {
        "kind": a.kind, "user": a.user, "service": None, "rhost": None, "tty": None, "pid": a.pid,
        "opened_seconds_ago": None if a.since is None else int(max(0.0, now_boot - a.since)), "counted": True,
        "reason": None, "client": None, "client_port": None, "key": None, "recorded": True, "source": a.kind,
        "container": False, "pending": False,
    }  # fmt: skip


def _session_json(view):
    return {
        "kind": "ssh",
        "user": view.user,
        "service": view.service,
        "rhost": view.rhost,
        "tty": view.tty,
        "pid": view.pid,
        "opened_seconds_ago": None if view.opened_seconds_ago is None else int(view.opened_seconds_ago),
        "counted": view.counted,
        "reason": view.reason,
        "client": view.client,
        "client_port": view.client_port,
        "key": view.key,
        "recorded": view.recorded,
        "source": view.source,
        "container": view.container,
        "pending": view.pending,
    }


def build(paths, cfg):
    """Return the status as a JSON-ready dict."""
    seen = observe(paths, cfg)
    d = seen.decision
    now_boot, now_wall = clock.now(), time.time()
    until = d.seconds_until_action
    memory = (seen.state or {}).get("reaper", {})
    unclear_since = memory.get("unclear_since") if decision.unclear(d) else None
    lasting = [a for a in d.activities if a.end(now_boot) is None]
    if seen.problem:
        file_status = "unusable"
    elif seen.file_missing:
        file_status = "missing"
    else:
        file_status = "ok"
    return {
        "version": __version__,
        "state": d.state,
        "reason": d.reason,
        "inactivity_duration": cfg.inactivity_duration,
        "idle_seconds": int(d.idle_seconds),
        "seconds_until_action": None if until is None else int(math.ceil(until)),
        "action_at": _iso(_wall(now_boot + until, now_boot, now_wall)) if until is not None else None,
        "idle_since": _iso(_wall(d.idle_since, now_boot, now_wall)) if d.state == decision.IDLE else None,
        "last_activity": d.last_activity,
        "blocked": d.blocked,
        "unclear_seconds": None if unclear_since is None else int(now_boot - unclear_since),
        "deadline_provisional": d.provisional and until is not None,
        "sessions": [_session_json(v) for v in d.sessions]
        + [_activity_session_json(a, now_boot) for a in lasting if a.holds == activity.ACTIVE],
        "inhibitors": [
            a.as_json(lambda t: _iso(_wall(t, now_boot, now_wall))) for a in lasting if a.holds == activity.INHIBIT
        ],
        "evidence_notes": list(seen.evidence.notes),
        "action_cause": d.cause,
        "max_duration": cfg.max_duration,
        "max_duration_grace": cfg.max_duration_grace if cfg.max_duration is not None else None,
        "max_duration_seconds_left": None if d.cap_seconds_left is None else int(math.ceil(d.cap_seconds_left)),
        "max_duration_at": _iso(_wall(d.cap_seconds_left + now_boot, now_boot, now_wall))
        if d.cap_seconds_left
        else None,
        "grace_seconds_left": None if d.grace_seconds_left is None else int(math.ceil(d.grace_seconds_left)),
        "policy": {
            "inactivity_duration": cfg.inactivity_duration,
            "min_session": cfg.min_session,
            "services": list(cfg.services),
            "ignore": {
                "users": sorted(cfg.ignore_users),
                "networks": [str(n) for n in cfg.ignore_networks],
                "keys": sorted(cfg.ignore_keys),
            },
            "action": cfg.action_name or list(cfg.action),
            "max_duration": cfg.max_duration,
            "max_duration_grace": cfg.max_duration_grace,
            "notice": cfg.notice,
            "config": cfg.path,
            "dstack": cfg.dstack,
        },
        "state_file": {
            "path": leases.state_path(paths.state_dir),
            "status": file_status,
            "problem": seen.problem,
            "lost_at": _iso(_wall((seen.state or {}).get("lost"), now_boot, now_wall)),
        },
        "live_check": {"complete": seen.evidence.checked, "note": seen.evidence.why_unchecked},
        "last_tick": _iso(_wall(memory.get("tick"), now_boot, now_wall)),
        "action_ran_at": _iso(_wall(memory.get("acted_at"), now_boot, now_wall)),
        "booted": _iso(_wall(clock.boot_started(paths.proc), now_boot, now_wall)),
        "boot": clock.boot_key(paths.proc),
        "now": _iso(_wall(now_boot, now_boot, now_wall)),
    }


def _clock(iso):
    return datetime.fromisoformat(iso).strftime("%H:%M:%S %Z (%Y-%m-%d)") if iso else "-"


def render(status):
    """Given the status dict, return the text view: the state first, then why, then the sessions."""
    s = status
    state = s["state"]
    lines = []
    if state == decision.IDLE and s["seconds_until_action"] and s["deadline_provisional"]:
        headline = (
            f"idle: acts in about {format_seconds(s['seconds_until_action'])}, at {_clock(s['action_at'])} or up to"
            " a minute later (a session's end is recorded at the next tick)"
        )
    elif state == decision.IDLE and s["seconds_until_action"]:
        headline = f"idle: acts in {format_seconds(s['seconds_until_action'])}, at {_clock(s['action_at'])}"
    elif state == decision.IDLE and s["blocked"]:
        headline = f"idle, deadline passed, not acting: {s['blocked']}"
    elif state == decision.IDLE:
        headline = "idle: acting now"
    else:
        headline = f"{state}: {s['reason']}"
    lines.append(f"State:     {headline}")
    if s["unclear_seconds"] is not None:
        lines.append(f"Unclear:   for {format_seconds(s['unclear_seconds'])}: nothing acts until the evidence is clear")
    if state == decision.IDLE:
        since = f"since {s['last_activity']} at {_clock(s['idle_since'])}"
        lines.append(f"Idle for:  {format_seconds(s['idle_seconds'])}, {since}")
    p = s["policy"]
    action = p["action"] if isinstance(p["action"], str) else " ".join(escape(a) for a in p["action"])
    min_session = format_seconds(p["min_session"]) if p["min_session"] else "off"
    lines.append(
        f"Policy:    inactivity_duration {format_seconds(p['inactivity_duration'])}, min_session {min_session},"
        f" services {', '.join(map(escape, p['services']))}, action {action}"
    )
    if p["max_duration"] is not None:
        grace = format_seconds(p["max_duration_grace"]) if p["max_duration_grace"] else "off (never cuts a user off)"
        if s["max_duration_seconds_left"]:
            left = f"reached in {format_seconds(s['max_duration_seconds_left'])}, at {_clock(s['max_duration_at'])}"
        else:
            left = "reached"
        if s["grace_seconds_left"] is not None:
            left += f"; connected users have {format_seconds(s['grace_seconds_left'])} of grace left"
        elif s["blocked"] and s["action_cause"] == decision.MAX_DURATION and "grace" in s["blocked"]:
            left += "; waiting for the connected users to leave"
        lines.append(f"Max:       max_duration {format_seconds(p['max_duration'])} from boot, {left}; grace {grace}")
    ignore = p["ignore"]
    lines.append("Ignoring:  " + "; ".join(f"{k} {', '.join(map(escape, v)) if v else '-'}" for k, v in ignore.items()))
    lines.append(f"Config:    {escape(p['config'])}{' (dstack dev-environment)' if p['dstack'] else ''}")
    sf = s["state_file"]
    note = f" ({escape(sf['problem'])})" if sf["problem"] else ""
    lost = f"; history lost and rebuilt at {_clock(sf['lost_at'])}" if sf["lost_at"] else ""
    lines.append(f"State file: {escape(sf['path'])}: {sf['status']}{note}{lost}")
    if not s["live_check"]["complete"]:
        lines.append(f"Live check: partial: {s['live_check']['note']}")
    ran = f"; action ran at {_clock(s['action_ran_at'])}" if s["action_ran_at"] else ""
    lines.append(f"Last tick: {_clock(s['last_tick'])}{ran}")
    sessions = s["sessions"]
    lines.append(f"Sessions:  {len(sessions)} open" + (":" if sessions else ""))
    for v in sessions:
        mark = "counted" if v["counted"] else "pending" if v["pending"] else "ignored"
        if v["kind"] != "ssh":
            mark += f" ({escape(v['kind'], 16)})"
        if v["container"]:
            mark += " (in a container)"
        elif not v["recorded"]:
            mark += " (not recorded by the hook)"
        elif v["source"] == "live":
            mark += " (found by the live check)"
        opened = "-" if v["opened_seconds_ago"] is None else format_seconds(v["opened_seconds_ago"])
        where = v["client"] or v["rhost"]
        lines.append(
            f"  {mark:8} {escape(v['user'], 32):12} {escape(v['service'], 16):8} {escape(where, 46):15}"
            f" {escape(v['tty'], 16):5} pid {v['pid']}  open {opened}" + (f"  - {v['reason']}" if v["reason"] else "")
        )
    inhibitors = s["inhibitors"]
    lines.append(f"Inhibitors: {len(inhibitors) or 'none'}" + (":" if inhibitors else ""))
    for i in inhibitors:
        ends = f"until {_clock(i['until'])}" + (" (max_inhibit)" if i["capped"] else "") if i["until"] else ""
        follows = f"while pid {i['pid']} runs" if i["pid"] else ""
        what = "; ".join(x for x in (ends, follows) if x) or "until released"
        lines.append(
            f"  {escape(i['kind'], 16)} {escape(i['id'], 40)} {escape(i['user'], 32)} since {_clock(i['since'])},"
            f" {what}" + (f"  - {escape(i['why'], 200)}" if i["why"] else "")
        )
    for note in s["evidence_notes"]:
        lines.append(f"Note:      {escape(note, 300)}")
    return "\n".join(lines)


def handle(args, paths):
    cfg = config.load(paths.config, cache_dir=paths.state_dir)
    view = build(paths, cfg)
    if args.json:
        # Indented for a person at a terminal; compact for a program. json.dumps, not json.dump: only dumps
        # without indent uses the C encoder (dump streams through the pure-Python one, 10x slower).
        sys.stdout.write(json.dumps(view, indent=2 if sys.stdout.isatty() else None) + "\n")
    else:
        print(render(view))
    return EXIT_OK
