"""The decision: is the machine active, idle or unknown, and is it time to act? A pure function.

Inputs are the config, the boot-relative clock, the state (leases and closed sessions of this boot), and the
evidence from the live system. Nothing here reads a file or the clock.
"""

import os
from typing import NamedTuple

from reaper import policy
from reaper.config.durations import format_seconds
from reaper.escape import escape
from reaper.evidence import activity as kinds
from reaper.evidence import ssh

CLK_TCK = os.sysconf("SC_CLK_TCK")
# A session the live check finds logged in but the state doesn't hold is taken as one whose hook has not run
# yet while its sshd process is younger than this (the hook runs just after pam_loginuid); after that, the
# hook failed or the state was lost, and nothing acts.
LOGIN_GRACE = 10.0

# A reason names at most this many sessions; `status` lists them all.
NAMED = 3

ACTIVE = "active"
IDLE = "idle"
DISABLED = "disabled"
UNKNOWN = "unknown"
INHIBITED = "inhibited"
# blocked_kind of an unknown state that is only a login between pam_loginuid and the hook: not logged as news.
LOGGING_IN = "logging-in"

INACTIVITY = "inactivity_duration"
MAX_DURATION = "max_duration"


class SessionView(NamedTuple):
    user: str | None
    service: str | None
    rhost: str | None
    tty: str | None
    pid: int | None
    opened_seconds_ago: float | None
    counted: bool
    reason: str | None
    client: str | None = None
    client_port: int | None = None
    key: str | None = None
    recorded: bool = True  # False: seen in the live system, missing from the state file
    source: str | None = None  # "hook", or "live" when the reaper recorded it from the live system
    pending: bool = False  # not counted yet: it counts once it has been open for min_session
    container: bool = False  # seen in the live system, served by an sshd in a container on this machine


class Decision(NamedTuple):
    state: str
    reason: str
    idle_seconds: float
    seconds_until_action: float | None
    act: bool  # run the action now
    idle_since: float | None = None  # CLOCK_BOOTTIME of the last counted activity (or boot)
    last_activity: str | None = None  # what idle_since is
    blocked: str | None = None  # why the action is not run although the time has come
    blocked_kind: str | None = None  # "acted", "pending" (a young session) or "unchecked" (evidence unclear)
    sessions: tuple = ()
    next_check: float | None = None  # seconds until the decision may change by itself
    new_sessions: int = 0  # live sessions that count once open for min_session
    provisional: bool = False  # a session's end is taken as now, but only the next tick records it
    activities: tuple = ()  # the other evidence (evidence.activity.Activity) the decision weighed
    connected: int = 0  # counted sessions and other activities that keep the machine active
    cause: str | None = None  # what the action is for: INACTIVITY, or MAX_DURATION once the cap is reached
    cap_seconds_left: float | None = None  # until max_duration is reached (0 once it is); None when off
    grace_seconds_left: float | None = None  # once the cap is reached with users connected; None if unbounded


def _view(now, record, counted, reason, recorded=True, pending=False, container=False):
    opened = record.get("opened")
    get = record.get
    return SessionView(  # positional, in field order: keywords make a NamedTuple several times slower to build
        get("user"),
        get("service"),
        get("rhost"),
        get("tty"),
        get("pid"),
        None if opened is None else max(0.0, now - opened),
        counted,
        reason,
        get("client"),
        get("client_port"),
        get("key"),
        recorded,
        get("source"),
        pending,
        container,
    )


def _who(record):
    where = record.get("client") or record.get("rhost")
    return f"{escape(record.get('user'))} from {escape(where)} (pid {record.get('pid')})"


def _memoized_ignore_reason(config):
    """policy.ignore_reason, computed once per (service, user, client, key): sessions share these."""
    cache = {}

    def ignore_reason(record):
        key = (
            record.get("service"),
            record.get("user"),
            record.get("client") or record.get("rhost"),
            record.get("key"),
        )
        if key not in cache:
            cache[key] = policy.ignore_reason(config, record)
        return cache[key]

    return ignore_reason


def _named(records):
    who = ", ".join(_who(r) for r in records[:NAMED])
    return who + (f" and {len(records) - NAMED} more" if len(records) > NAMED else "")


def _named_activities(items):
    who = ", ".join(f"{escape(a.describe())}" + (f" ({escape(a.why, 80)})" if a.why else "") for a in items[:NAMED])
    return who + (f" and {len(items) - NAMED} more" if len(items) > NAMED else "")


def vanished(activities, lasting, now):
    """Activities the last tick saw lasting (`lasting`: {"kind id": description}) that no source reports any
    more: they ended when first seen gone, which is now, as a stale lease does."""
    seen = {f"{a.kind} {a.id}" for a in activities}
    gone = []
    for key, what in (lasting or {}).items():
        if key not in seen:
            kind, _, ident = key.partition(" ")
            gone.append(kinds.Activity(kind, ident, kinds.ACTIVE, None, what, None, ended=now))
    return gone


def last_end(activities, now, remembered=None):
    """Return (when, what) of the latest end among activities that ended and the remembered one, or None."""
    best = None
    if remembered:
        best = (remembered["at"], remembered["what"])
    for a in activities:
        end = a.end(now)
        if end is not None and (best is None or end > best[0]):
            best = (end, f"{escape(a.describe())} ended")
    return best


def decide(config, now, boot_started, state, evidence, state_problem=None, views=True, activities=()):
    """Given config, clock, this boot's state and live evidence, return the Decision: inactivity_duration's
    (see _idle_decision), then max_duration's cap over it (see _cap)."""
    result = _idle_decision(config, now, boot_started, state, evidence, state_problem, views, activities)
    if result.act:
        result = result._replace(cause=INACTIVITY)
    if config.max_duration is None:
        return result
    return _cap(config, now, boot_started, state, evidence, result)


def _cap(config, now, boot_started, state, evidence, result):
    """Given the decision inactivity_duration makes, return it with max_duration applied.

    The cap is counted from boot. Once reached, the action runs if nobody is connected; while counted sessions
    (or other activities that keep the machine active) last, it waits for them to end, but no longer than
    max_duration_grace past the cap. Inhibitors do not hold it off: it is a hard cap. Unclear evidence still
    stops it, and a session younger than min_session holds it for at most min_session, as at the idle deadline.
    """
    cap_at = boot_started + config.max_duration
    left = cap_at - now
    grace = config.max_duration_grace
    if left > 0:
        next_check = left if result.next_check is None else min(result.next_check, left)
        until = result.seconds_until_action
        if result.state in (DISABLED, INHIBITED) or (result.state == IDLE and until is not None and left < until):
            until = left
        return result._replace(cap_seconds_left=left, seconds_until_action=until, next_check=next_check)
    common = {"cap_seconds_left": 0.0, "cause": MAX_DURATION}
    reached = f"max_duration {format_seconds(config.max_duration)} reached"
    if result.state == UNKNOWN:
        return result._replace(cap_seconds_left=0.0)
    if not evidence.checked:
        blocked = f"{reached}, but cannot check the live system for SSH sessions: {evidence.why_unchecked}"
        return result._replace(act=False, blocked=blocked, blocked_kind="unchecked", cap_seconds_left=0.0)
    if (state or {}).get("reaper", {}).get("acted_cap"):
        blocked = f"{reached}; the action already ran for it"
        return result._replace(act=False, blocked=blocked, blocked_kind="acted", cause=None, cap_seconds_left=0.0)
    if result.connected:
        if grace is None:
            blocked = f"{reached}; waiting for the connected users to leave (max_duration_grace is off)"
            return result._replace(act=False, blocked=blocked, blocked_kind="grace", seconds_until_action=None,
                                   next_check=None, **common)  # fmt: skip
        grace_left = cap_at + grace - now
        if grace_left > 0:
            blocked = (
                f"{reached}; waiting for the connected users to leave, at most {format_seconds(grace_left)} more"
                f" (max_duration_grace {format_seconds(grace)})"
            )
            return result._replace(act=False, blocked=blocked, blocked_kind="grace", grace_seconds_left=grace_left,
                                   next_check=grace_left, **common)  # fmt: skip
        blocked = None
        reason = f"{reached} and max_duration_grace {format_seconds(grace)} is over: cutting the connected users off"
        return result._replace(act=True, reason=reason, blocked=None, blocked_kind=None, seconds_until_action=0.0,
                               grace_seconds_left=0.0, next_check=None, **common)  # fmt: skip
    if result.new_sessions and now < cap_at + config.min_session:
        blocked = f"{reached}; holding the action for sessions younger than min_session"
        return result._replace(act=False, blocked=blocked, blocked_kind="pending", seconds_until_action=0.0,
                               next_check=max(0.0, cap_at + config.min_session - now), **common)  # fmt: skip
    reason = f"{reached} and nobody is connected"
    return result._replace(act=True, reason=reason, blocked=None, blocked_kind=None, seconds_until_action=0.0,
                           next_check=None, **common)  # fmt: skip


def _idle_decision(config, now, boot_started, state, evidence, state_problem=None, views=True, activities=()):
    """Given config, clock, this boot's state (or None if unusable) and live evidence, return the Decision.

    `activities` are the other kinds of evidence (inhibitors, mosh, ...): one that lasts keeps the machine
    active or inhibited, and one's end counts as activity, as a session's close does. `state_problem` says
    why the state is unusable; then the decision is unknown and nothing runs. With `views=False` (the
    reaper's tick) the decision holds no view of each session, which only `status` shows.
    """
    leases = state["leases"] if state else []
    ignore_reason = _memoized_ignore_reason(config)
    shown = []  # what a view of each session needs: (record, counted, reason, recorded, pending, container)
    counted_live = []
    pending = []  # live sessions that will count once they reach min_session
    ended = list(state["closed"]) if state else []
    provisional = False
    for lease, is_live in zip(leases, evidence.live, strict=True):
        if not is_live:
            ended.append(dict(lease, closed=now))  # stale: it ends when first seen dead, which is now
            provisional = True
            continue
        ignored = ignore_reason(lease)
        age = None if lease.get("opened") is None else now - lease["opened"]
        short = policy.too_short(config, age)
        counted = not (ignored or short)
        shown.append((lease, counted, ignored or short, True, bool(short and not ignored), False))
        if counted:
            counted_live.append(lease)
        elif not ignored:
            pending.append((lease, config.min_session - age))

    unexplained = []
    logging_in = []  # seconds until each unrecorded young session would be taken as the hook's failure
    index = (evidence.index or ssh.LeaseIndex(leases)) if evidence.sessions else None
    for session in evidence.sessions:
        if index.explaining(session) is not None:
            continue
        record = {
            "user": session.user,
            "uid": session.uid,
            "client": session.client,
            "rhost": session.client,
            "client_port": session.client_port,
            "pid": session.pid,
            "opened": None,
        }
        ignored = ignore_reason(record)
        age = now - session.pid_start / CLK_TCK
        if ignored is None and not session.container and age < LOGIN_GRACE:
            # Logged in a moment ago: pam_loginuid has run and the hook, later in the stack, not yet. Unknown
            # too (nothing acts), but not news: the journal hears of it only if it lasts (then it is below).
            shown.append((record, False, "logging in: the hook has not recorded it yet", False, False, False))
            logging_in.append((record, LOGIN_GRACE - age))
            continue
        shown.append((record, ignored is None, ignored or None, False, False, session.container))
        if ignored is None:
            unexplained.append((record, session.container))

    idle_since, last_activity = boot_started, "boot"
    for record in ended:
        if ignore_reason(record) is not None:
            continue
        length = None if record.get("opened") is None else record["closed"] - record["opened"]
        if policy.too_short(config, length) is None and record["closed"] > idle_since:
            idle_since = record["closed"]
            where = escape(record.get("client") or record.get("rhost"))
            last_activity = f"session of {escape(record.get('user'))} from {where} ended"
    if state and state.get("lost") is not None and state["lost"] > idle_since:
        idle_since, last_activity = state["lost"], "state was lost and rebuilt"
    memory = (state or {}).get("reaper", {})
    activities = list(activities) + vanished(activities, memory.get("lasting"), now)
    ended = last_end(activities, now, memory.get("activity_end"))
    if ended and ended[0] > idle_since:
        idle_since, last_activity = ended
    lasting = [a for a in activities if a.end(now) is None]
    active_holds = [a for a in lasting if a.holds == kinds.ACTIVE]
    inhibits = [a for a in lasting if a.holds == kinds.INHIBIT]

    common = {
        "sessions": tuple(_view(now, *entry) for entry in shown) if views else (),
        "idle_since": idle_since,
        "last_activity": last_activity,
        "new_sessions": len(pending),
        "provisional": provisional,
        "activities": tuple(activities),
        "connected": len(counted_live) + len(active_holds),
    }
    if config.inactivity_duration is None:
        return Decision(DISABLED, "inactivity_duration is off", 0.0, None, False, **common)
    if state_problem:
        return Decision(UNKNOWN, state_problem, 0.0, None, False, **common)
    if unexplained:
        missed = _named([r for r, container in unexplained if not container])
        inside = _named([r for r, container in unexplained if container])
        parts = []
        if missed:
            parts.append(f"SSH session not recorded by the hook (the hook failed or the state was lost): {missed}")
        if inside:
            parts.append(f"SSH session served by an sshd in a container on this machine: {inside}")
        return Decision(
            UNKNOWN,
            "; ".join(parts),
            0.0,
            None,
            False,
            **common,
        )
    if counted_live or active_holds:
        parts = [f"{len(counted_live)} counted session(s): {_named(counted_live)}"] if counted_live else []
        parts += [f"{len(active_holds)} other: {_named_activities(active_holds)}"] if active_holds else []
        return Decision(ACTIVE, "; ".join(parts), 0.0, None, False, **common)
    if inhibits:
        ends = [a.until - now for a in inhibits if a.until is not None]
        reason = f"held by {len(inhibits)} inhibitor(s): {_named_activities(inhibits)}"
        return Decision(INHIBITED, reason, 0.0, None, False, next_check=min(ends) if ends else None, **common)
    if logging_in:
        wait = max(0.0, min(w for _, w in logging_in))
        reason = f"SSH login not recorded by the hook yet: {_named([r for r, _ in logging_in])}"
        return Decision(UNKNOWN, reason, 0.0, None, False, blocked_kind=LOGGING_IN, next_check=wait, **common)

    idle = max(0.0, now - idle_since)
    until = max(0.0, config.inactivity_duration - idle)
    reason = f"idle since {last_activity}"
    if until > 0:
        return Decision(IDLE, reason, idle, until, False, next_check=until, **common)
    blocked = kind = next_check = None
    acted_for = (state or {}).get("reaper", {}).get("acted_for")
    if acted_for is not None and acted_for == idle_since:
        blocked, kind = "the action already ran for this idle period", "acted"
    elif pending and now < (hold_end := idle_since + config.inactivity_duration + config.min_session):
        # A session opened before the deadline has reached min_session by hold_end, and counts: the user who
        # logged in just in time is not cut off. One opened later may be cut off: a stream of short probes
        # must not keep the machine up. The text names no session, so a hold is logged once, not per probe.
        blocked = (
            f"holding the action for sessions younger than min_session, at most"
            f" {format_seconds(config.min_session)} past the deadline"
        )
        kind = "pending"
        next_check = max(0.0, min(min(wait for _, wait in pending), hold_end - now))
    elif not evidence.checked:
        blocked, kind = f"cannot check the live system for SSH sessions: {evidence.why_unchecked}", "unchecked"
    return Decision(
        IDLE, reason, idle, 0.0, blocked is None, blocked=blocked, blocked_kind=kind, next_check=next_check, **common
    )


def summary(decision):
    """Return one line for the log describing the decision."""
    if decision.cause == MAX_DURATION:
        return f"{decision.reason}: time to act" if decision.act else f"not acting: {decision.blocked}"
    if decision.state == IDLE:
        if decision.act:
            return f"idle for {format_seconds(decision.idle_seconds)} ({decision.reason}): time to act"
        if decision.blocked:
            return f"idle for {format_seconds(decision.idle_seconds)}, not acting: {decision.blocked}"
        new = decision.new_sessions
        waiting = f"; {new} new session(s) count once open for min_session" if new else ""
        return (
            f"idle for {format_seconds(decision.idle_seconds)} ({decision.reason});"
            f" acting in {format_seconds(decision.seconds_until_action)}{waiting}"
        )
    return f"{decision.state}: {decision.reason}"


def unclear(decision):
    """True if the evidence was too unclear to act on: the state is unknown, or the live check couldn't run."""
    return decision.state == UNKNOWN or decision.blocked_kind == "unchecked"


def change_key(decision):
    """Return what identifies a change of decision worth logging (not the ticking seconds)."""
    reason = decision.reason if decision.state != IDLE else ""
    # The grace's text counts down: waiting in the grace is one decision, logged once.
    blocked = "grace" if decision.blocked_kind == "grace" else decision.blocked
    return f"{decision.state}|{decision.act}|{blocked}|{decision.idle_since}|{reason}|{decision.cause}"
