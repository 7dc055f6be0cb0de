"""The history log: what the reaper saw happen, kept across boots in /var/lib/idle-reaper/history.jsonl.

Only the tick writes it (never the hook: the login path stays as it is). Each tick compares what it decided
with a small cursor it keeps in the state's reaper memory, and appends one JSON line per event:

    boot       this boot began (the first tick of a boot says so; repeats are harmless, readers merge them)
    open       a session that may count opened (user, client, service, pid)
    close      such a session closed (its open time too, and whether it counted: min_session)
    start/end  another kind of activity (an inhibitor, ...) began or ended
    decision   the state changed (active, idle, inhibited, unknown, disabled), with the reason
    action     the action ran, with its reason, and whether it worked

Every event has "t" (wall clock, Unix seconds, for display: decisions use CLOCK_BOOTTIME) and "boot" (the
boot's key, clock.boot_key). Sessions carry "sid", the same for a session's open and close.

Bounded and crash-safe: a tick appends its events with one write(2) and fsyncs. A file that would grow past
MAX_BYTES is first renamed to history.1.jsonl (rename(2) is atomic, and replaces the generation before), so
the log holds at most two files. A reader reads both, line by line, and skips a line that doesn't parse (the
torn tail of a write a crash cut short), so a damaged tail costs nothing before it; a writer that finds the
file not ending in a newline starts on a new line.
"""

import os

from reaper import defaults, policy
from reaper.state import statejson

FILE = "history.jsonl"
OLD_FILE = "history.1.jsonl"
# Per file; the log is at most two files. An event is about 200 bytes: some 5,000 events a file.
MAX_BYTES = 1 << 20
MODE = 0o644  # `idle-reaper history` works for any user, as `status` does
# Sessions the reaper recorded from the live system (their open time is the sshd's start, older than the
# cursor): the cursor keeps the ids of those it logged, at most this many.
MAX_LIVE_IDS = 200


def directory(state_dir, environ=os.environ):
    """Return the history directory: $IDLE_REAPER_HISTORY_DIR, else /var/lib/idle-reaper, except that a state
    dir other than the default (a test, a checkout) keeps its history beside it, in STATE_DIR/history."""
    chosen = environ.get(defaults.HISTORY_DIR_ENV)
    if chosen:
        return chosen
    if os.path.abspath(state_dir) == defaults.STATE_DIR:
        return defaults.HISTORY_DIR
    return os.path.join(state_dir, "history")


def session_id(record):
    opened = record.get("opened")
    return f"{record.get('pid')}:{'-' if opened is None else round(opened, 2)}"


def _session_fields(record):
    return {
        "sid": session_id(record),
        "user": record.get("user"),
        "from": record.get("client") or record.get("rhost"),
        "service": record.get("service"),
        "pid": record.get("pid"),
        "source": record.get("source") or "hook",
    }


def observe(memory, cfg, state, result, now, boot, booted):
    """Given the reaper's memory (its cursor is memory["history"], updated here), the config, this boot's
    state after the tick, the Decision and the clock, return (the events the log lacks, whether the cursor
    changed). Each event's "b" is its CLOCK_BOOTTIME; append() turns it into wall time. Pure but for the
    cursor."""
    old = memory.get("history")
    cursor = dict(old) if isinstance(old, dict) else None
    events = []
    if cursor is None or cursor.get("boot") != boot:
        cursor = {"boot": boot, "opened": None, "closed": None, "live": [], "acts": {}, "state": None}
        events.append({"ev": "boot", "b": booted})
    opened_mark, closed_mark = cursor["opened"], cursor["closed"]
    live_ids = cursor["live"]
    for lease in state["leases"]:
        opened = lease.get("opened")
        if opened is None:
            continue
        fresh = opened_mark is None or opened > opened_mark
        if not fresh and lease.get("source") == "live":
            fresh = session_id(lease) not in live_ids
        if not fresh or policy.ignore_reason(cfg, lease) is not None:
            continue
        events.append({"ev": "open", "b": opened, **_session_fields(lease)})
        if lease.get("source") == "live":
            live_ids = (live_ids + [session_id(lease)])[-MAX_LIVE_IDS:]
        if cursor["opened"] is None or opened > cursor["opened"]:
            cursor["opened"] = opened
    for record in state["closed"]:
        closed = record["closed"]
        if closed_mark is not None and closed <= closed_mark:
            continue
        if policy.ignore_reason(cfg, record) is None:
            events.append(
                {
                    "ev": "close",
                    "b": closed,
                    "opened_b": record.get("opened"),
                    **_session_fields(record),
                    "counted": policy.counts_closed(cfg, record),
                    "end": record.get("end") or "hook",
                }
            )
        if cursor["closed"] is None or closed > cursor["closed"]:
            cursor["closed"] = closed
    cursor["live"] = live_ids
    events.extend(_activity_events(cursor, result.activities, now))
    key = result.state if not result.blocked_kind else f"{result.state}/{result.blocked_kind}"
    if key != cursor["state"]:
        from reaper import decision

        events.append(
            {"ev": "decision", "b": now, "state": result.state, "blocked": result.blocked,
             "reason": decision.summary(result)}
        )  # fmt: skip
        cursor["state"] = key
    memory["history"] = cursor
    return events, cursor != old


def _activity_events(cursor, activities, now):
    events = []
    lasting = {}
    for a in activities:
        if a.end(now) is None:
            lasting[f"{a.kind} {a.id}"] = a
    known = cursor["acts"]
    for key, a in lasting.items():
        if key not in known:
            events.append(
                {"ev": "start", "b": a.since if a.since is not None else now, "kind": a.kind, "id": a.id,
                 "holds": a.holds, "user": a.user, "why": a.why}
            )  # fmt: skip
    for key, what in known.items():
        if key not in lasting:
            ended = [a.end(now) for a in activities if f"{a.kind} {a.id}" == key]
            kind, _, ident = key.partition(" ")
            events.append({"ev": "end", "b": ended[0] if ended else now, "kind": kind, "id": ident, "what": what})
    if set(lasting) != set(known):
        cursor["acts"] = {key: a.describe() for key, a in lasting.items()}
    return events


def action_event(now, argv, reason, error=None):
    """Return the event of an action run at CLOCK_BOOTTIME `now`, with why, and its error if it failed."""
    return {"ev": "action", "b": now, "action": list(argv), "reason": reason, "ok": error is None, "error": error}


def append(history_dir, events, boot, now, wall_now, max_bytes=MAX_BYTES):
    """Append events (with CLOCK_BOOTTIME "b") to the log as wall-clock "t", rotating it first if it would
    pass max_bytes. Raise OSError if the log can't be written."""
    if not events:
        return
    lines = []
    for event in events:
        out = {"t": round(wall_now - (now - event.pop("b")), 3), "boot": boot}
        if event.get("opened_b") is not None:
            out["opened"] = round(wall_now - (now - event["opened_b"]), 3)
        event.pop("opened_b", None)
        out.update(event)
        lines.append(statejson.dumps(out))
    data = ("\n".join(lines) + "\n").encode("ascii")
    os.makedirs(history_dir, mode=0o755, exist_ok=True)
    path = os.path.join(history_dir, FILE)
    fd = _open(path)
    try:
        size = os.fstat(fd).st_size
        if size and size + len(data) > max_bytes:
            os.close(fd)
            fd = -1
            os.rename(path, os.path.join(history_dir, OLD_FILE))
            fd = _open(path)
            size = 0
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data  # a torn last line stays a line of its own, which readers skip
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        if fd >= 0:
            os.close(fd)


def _open(path):
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, MODE)
    os.fchmod(fd, MODE)
    return fd


def read(history_dir):
    """Return every event the log holds, oldest first, skipping lines that don't parse (a torn tail)."""
    events = []
    for name in (OLD_FILE, FILE):
        try:
            fd = os.open(os.path.join(history_dir, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
        finally:
            os.close(fd)
        for line in b"".join(chunks).split(b"\n"):
            if not line.strip():
                continue
            try:
                event = statejson.loads(line.decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                continue
            if isinstance(event, dict) and type(event.get("t")) in (int, float) and type(event.get("ev")) is str:
                events.append(event)
    events.sort(key=lambda e: e["t"])
    return events
