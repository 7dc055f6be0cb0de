"""Prometheus metrics: with `metrics: PATH`, each tick writes a textfile for node_exporter's textfile collector.

The exposition text is written here by hand rather than with prometheus_client: importing that library
(python3-prometheus-client 0.16 on bookworm) takes 90-210 ms on this kind of machine (it imports http.server,
ssl, wsgiref, inspect), several times a whole quiet tick (34-40 ms, BENCHMARKS.md). The tests parse the file
with prometheus_client and scrape it through a real node_exporter.

Naming follows Prometheus' rules: base units, `_seconds`, `_total` for counters, points in time as
`_timestamp_seconds` (Unix wall-clock seconds: the reaper decides on CLOCK_BOOTTIME and converts only here),
and no per-session labels. A metric that has no value now (no deadline while active) is left out, not zero.
The file is replaced atomically (a temp file in the same directory, renamed), mode 0644 so node_exporter's
user can read it, and only when its text changed; since it carries the last tick's time, that is each tick.
"""

from reaper import decision, policy
from reaper.evidence import activity

STATES = (decision.ACTIVE, decision.IDLE, decision.INHIBITED, decision.DISABLED, decision.UNKNOWN)
MODE = 0o644


def session_counts(cfg, leases, now):
    """Given the config and this boot's live leases (after the tick ended the stale ones), return how many
    are counted, pending (younger than min_session) and ignored, as policy.ignore_reason and
    policy.too_short judge them (a test holds the two in step). Inlined: at 10,000 leases the calls cost
    20 ms a tick, and the decision does not keep these counts."""
    services, users, keys = frozenset(cfg.services), cfg.ignore_users, cfg.ignore_keys
    networks = {}  # client address -> ignored by ignore.networks
    min_session = cfg.min_session
    counted = pending = ignored = 0
    for lease in leases:
        get = lease.get
        service, key = get("service"), get("key")
        if (
            (service is not None and service not in services)
            or get("user") in users
            or (key is not None and key in keys)
        ):
            ignored += 1
            continue
        if cfg.ignore_networks:
            client = get("client") or get("rhost")
            hit = networks.get(client)
            if hit is None:
                hit = networks[client] = policy.ignore_reason(cfg, {"client": client}) is not None
            if hit:
                ignored += 1
                continue
        opened = get("opened")
        if opened is not None and now - opened < min_session:
            pending += 1
        else:
            counted += 1
    return {"counted": counted, "pending": pending, "ignored": ignored}


def _number(value):
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(round(float(value), 3))


def render(cfg, result, memory, counts, now, wall_now, booted):
    """Return the exposition text for this tick: the config, the Decision, the reaper's memory (actions,
    last tick, unclear since), the session counts and the clock (CLOCK_BOOTTIME now and wall now)."""

    def wall(boottime):
        return wall_now - (now - boottime)

    out = []

    def metric(name, kind, help_text, samples):
        samples = [(labels, value) for labels, value in samples if value is not None]
        if not samples:
            return
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            shown = ",".join(f'{k}="{v}"' for k, v in labels)
            out.append(f"{name}{{{shown}}} {_number(value)}" if shown else f"{name} {_number(value)}")

    metric(
        "idle_reaper_state",
        "gauge",
        "The reaper's decision: 1 for the state it is in, 0 for the others.",
        [((("state", s),), int(result.state == s)) for s in STATES],
    )
    metric(
        "idle_reaper_inactivity_duration_seconds",
        "gauge",
        "The configured inactivity_duration (absent while it is off).",
        [((), cfg.inactivity_duration)],
    )
    idle = result.state == decision.IDLE
    metric(
        "idle_reaper_idle_since_timestamp_seconds",
        "gauge",
        "When the machine became idle (the end of the last activity, or boot); only while idle.",
        [((), wall(result.idle_since) if idle and result.idle_since is not None else None)],
    )
    due = result.seconds_until_action
    metric(
        "idle_reaper_action_due_timestamp_seconds",
        "gauge",
        "When the action is due; only while idle.",
        [((), wall(result.idle_since) + cfg.inactivity_duration if idle and due is not None else None)],
    )
    metric(
        "idle_reaper_action_blocked",
        "gauge",
        "1 if the action is due but held back (already ran, a young session, the live check), else 0.",
        [((), int(bool(result.blocked)))],
    )
    metric(
        "idle_reaper_sessions",
        "gauge",
        "Open SSH sessions by how the policy judges them (counted, pending: younger than min_session, ignored).",
        [((("status", k),), counts[k]) for k in ("counted", "pending", "ignored")],
    )
    lasting = [a for a in result.activities if a.end(now) is None]
    metric(
        "idle_reaper_inhibitors",
        "gauge",
        "Inhibitors holding the machine up now.",
        [((), sum(1 for a in lasting if a.holds == activity.INHIBIT))],
    )
    metric(
        "idle_reaper_other_activities",
        "gauge",
        "Other kinds of activity (not SSH sessions, not inhibitors) keeping the machine active now.",
        [((), sum(1 for a in lasting if a.holds == activity.ACTIVE))],
    )
    metric(
        "idle_reaper_actions_total",
        "counter",
        "Actions run since this boot, by result.",
        [((("result", r),), memory.get(f"actions_{r}", 0)) for r in ("ok", "failed")],
    )
    acted = memory.get("acted_at") or memory.get("action_failed_at")
    metric(
        "idle_reaper_last_action_timestamp_seconds",
        "gauge",
        "When the action last ran in this boot (absent if it has not).",
        [((), None if acted is None else wall(acted))],
    )
    unclear = memory.get("unclear_since") if decision.unclear(result) else None
    metric(
        "idle_reaper_unclear_since_timestamp_seconds",
        "gauge",
        "Since when the evidence has been unclear (state unknown, live check impossible); only while it is.",
        [((), None if unclear is None else wall(unclear))],
    )
    metric("idle_reaper_boot_timestamp_seconds", "gauge", "When this system booted.", [((), wall(booted))])
    metric(
        "idle_reaper_last_tick_timestamp_seconds",
        "gauge",
        "When the reaper last ran a tick: a stale value means a stuck or stopped reaper.",
        [((), wall_now)],
    )
    return "\n".join(out) + "\n"


def write(path, text):
    """Replace the textfile at `path` with `text` atomically, unless it already holds exactly that. Return True
    if it wrote. Raise OSError if it can't. No fsync: a reader sees the old or the new file whole, and a file
    lost to a crash is rewritten by the next tick."""
    data = text.encode("utf-8")
    try:
        with open(path, "rb") as f:
            if f.read(len(data) + 1) == data:
                return False
    except FileNotFoundError:
        pass
    from reaper.state.leases import replace_file

    replace_file(path, data, MODE, sync=False)  # a .tmp beside it: node_exporter reads only *.prom
    return True
