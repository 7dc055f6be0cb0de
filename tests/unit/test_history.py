"""The history log (issue 13): what the tick records, bounds and rotation, a torn tail, and the summary."""

import json
import os

from reaper import decision
from reaper.actions import history
from reaper.commands import history as command
from reaper.config.schema import Config
from reaper.evidence import activity

CFG = Config(path="c", inactivity_duration=3600, min_session=10, ignore_users=frozenset({"ci"}))
BOOT = "b1/1"
IDLE = decision.Decision(decision.IDLE, "idle since boot", 5.0, 10.0, False, idle_since=100.0)
ACTIVE = decision.Decision(decision.ACTIVE, "1 counted session(s)", 0.0, None, False)


def _state(leases=(), closed=()):
    return {"leases": list(leases), "closed": list(closed), "reaper": {}}


def _lease(user, opened, pid=10, **kw):
    return {"user": user, "service": "sshd", "client": "192.0.2.4", "pid": pid, "opened": opened, **kw}


# --- what the tick records ---------------------------------------------------------------------------------


def test_the_first_tick_of_a_boot_records_the_boot_and_the_decision_then_nothing_until_something_changes():
    memory = {}
    events, changed = history.observe(memory, CFG, _state(), IDLE, 200.0, BOOT, 3.0)
    assert [e["ev"] for e in events] == ["boot", "decision"] and changed
    assert events[0]["b"] == 3.0
    assert history.observe(memory, CFG, _state(), IDLE, 260.0, BOOT, 3.0) == ([], False)


def test_sessions_are_recorded_once_at_open_and_once_at_close_and_ignored_users_never():
    memory = {}
    history.observe(memory, CFG, _state(), IDLE, 200.0, BOOT, 3.0)
    open_state = _state([_lease("dev", 210.0), _lease("ci", 211.0, pid=11)])
    events, _ = history.observe(memory, CFG, open_state, ACTIVE, 220.0, BOOT, 3.0)
    opens = [e for e in events if e["ev"] == "open"]
    assert [e["user"] for e in opens] == ["dev"] and opens[0]["from"] == "192.0.2.4" and opens[0]["b"] == 210.0
    assert [e for e in history.observe(memory, CFG, open_state, ACTIVE, 230.0, BOOT, 3.0)[0]] == []
    closed = _state(closed=[dict(_lease("dev", 210.0), closed=300.0), dict(_lease("ci", 211.0, pid=11), closed=301.0)])
    events, _ = history.observe(memory, CFG, closed, IDLE, 310.0, BOOT, 3.0)
    closes = [e for e in events if e["ev"] == "close"]
    assert len(closes) == 1 and closes[0]["counted"] and closes[0]["sid"] == opens[0]["sid"]
    assert closes[0]["b"] == 300.0 and closes[0]["opened_b"] == 210.0
    assert not [e for e in history.observe(memory, CFG, closed, IDLE, 320.0, BOOT, 3.0)[0] if e["ev"] == "close"]


def test_a_session_shorter_than_min_session_is_recorded_as_not_counted():
    memory = {}
    history.observe(memory, CFG, _state(), IDLE, 200.0, BOOT, 3.0)
    events, _ = history.observe(memory, CFG, _state(closed=[dict(_lease("dev", 210.0), closed=212.0)]), IDLE,
                                220.0, BOOT, 3.0)  # fmt: skip
    assert [e["counted"] for e in events if e["ev"] == "close"] == [False]


def test_inhibitors_are_recorded_when_they_start_and_end():
    memory = {}
    held = activity.Activity("inhibitor", "7", activity.INHIBIT, "dev", "a build", 150.0)
    inhibited = decision.Decision(decision.INHIBITED, "held", 0.0, None, False, activities=(held,))
    history.observe(memory, CFG, _state(), IDLE, 140.0, BOOT, 3.0)
    events, _ = history.observe(memory, CFG, _state(), inhibited, 160.0, BOOT, 3.0)
    assert [(e["ev"], e.get("state")) for e in events] == [("start", None), ("decision", "inhibited")]
    assert events[0]["why"] == "a build" and events[0]["b"] == 150.0
    events, _ = history.observe(memory, CFG, _state(), IDLE, 400.0, BOOT, 3.0)
    assert [e["ev"] for e in events] == ["end", "decision"] and events[0]["b"] == 400.0


def test_a_new_boot_starts_a_new_cursor():
    memory = {}
    history.observe(memory, CFG, _state(), IDLE, 200.0, BOOT, 3.0)
    events, _ = history.observe(memory, CFG, _state(), IDLE, 20.0, "b2/1", 1.0)
    assert events[0] == {"ev": "boot", "b": 1.0}


# --- the file ----------------------------------------------------------------------------------------------


def _event(i):
    return {"ev": "decision", "b": float(i), "state": "idle", "reason": "x" * 50}


def test_append_writes_wall_clock_lines_readable_by_all(tmp_path):
    d = str(tmp_path / "h")
    history.append(d, [_event(10)], BOOT, now=20.0, wall_now=1_000_000.0)
    assert os.stat(os.path.join(d, history.FILE)).st_mode & 0o777 == 0o644
    (line,) = open(os.path.join(d, history.FILE)).read().splitlines()
    assert json.loads(line) == {"t": 999_990.0, "boot": BOOT, "ev": "decision", "state": "idle", "reason": "x" * 50}


def test_the_log_is_bounded_by_rotating_into_one_older_file(tmp_path):
    d = str(tmp_path)
    for i in range(200):
        history.append(d, [_event(i)], BOOT, now=1000.0, wall_now=1_000_000.0, max_bytes=2000)
    names = os.listdir(d)
    assert sorted(names) == sorted([history.FILE, history.OLD_FILE])
    assert all(os.path.getsize(os.path.join(d, n)) <= 2000 for n in names)
    times = [e["t"] for e in history.read(d)]
    assert times == sorted(times) and len(times) >= 2000 // 120
    assert times[-1] == 1_000_000.0 - (1000.0 - 199)  # the newest is never lost to rotation
    assert times == [1_000_000.0 - (1000.0 - i) for i in range(200 - len(times), 200)]  # nothing missing between


def test_a_torn_last_line_loses_nothing_before_it_and_the_next_write_starts_a_new_line(tmp_path):
    d = str(tmp_path)
    history.append(d, [_event(1), _event(2)], BOOT, now=10.0, wall_now=100.0)
    with open(os.path.join(d, history.FILE), "ab") as f:
        f.write(b'{"t": 95.0, "boot": "b1/1", "ev": "deci')  # a crash mid-write
    assert [e["t"] for e in history.read(d)] == [91.0, 92.0]
    history.append(d, [_event(3)], BOOT, now=10.0, wall_now=100.0)
    assert [e["t"] for e in history.read(d)] == [91.0, 92.0, 93.0]


def test_garbage_lines_are_skipped(tmp_path):
    d = str(tmp_path)
    with open(os.path.join(d, history.FILE), "wb") as f:
        f.write(b'\xff\xfe\n[1, 2]\n{"t": "x", "ev": "boot"}\n{"t": 5, "ev": "boot", "boot": "b"}\n')
    assert history.read(d) == [{"t": 5, "ev": "boot", "boot": "b"}]


def test_the_directory_follows_the_state_dir_unless_it_is_the_default(tmp_path):
    assert history.directory("/run/idle-reaper", {}) == "/var/lib/idle-reaper"
    assert history.directory(str(tmp_path), {}) == str(tmp_path / "history")
    assert history.directory(str(tmp_path), {"IDLE_REAPER_HISTORY_DIR": "/x"}) == "/x"


# --- the timeline and its summary --------------------------------------------------------------------------

H = 3600.0


def _ev(t, ev, boot="A", **kw):
    return {"t": t, "ev": ev, "boot": boot, **kw}


def _day():
    """Boot A at 0; dev 1h-3h; idle 3h-4h (deadline 1h) then the action; boot B at 10h; alice 11h-11.5h;
    idle since: B is the running boot, and the period ends at 14h."""
    return [
        _ev(0, "boot"),
        _ev(1 * H, "open", sid="1", user="dev", **{"from": "192.0.2.4"}),
        _ev(3 * H, "close", sid="1", user="dev", counted=True, opened=1 * H, **{"from": "192.0.2.4"}),
        _ev(4 * H, "action", action=["systemctl", "poweroff"], reason="idle for 1h: time to act"),
        _ev(10 * H, "boot", boot="B"),
        _ev(11 * H, "open", boot="B", sid="2", user="alice", **{"from": "198.51.100.7"}),
        _ev(11.5 * H, "close", boot="B", sid="2", user="alice", counted=True, **{"from": "198.51.100.7"}),
    ]


def test_the_timeline_shows_active_idle_and_off_stretches_across_boots():
    view = command.timeline(_day(), 0, 14 * H, current_boot="B", shorter=0.5 * H)
    got = [(s["kind"], s["start"] / H, s["end"] / H, s.get("ended_by")) for s in view["stretches"]]
    assert got == [
        ("idle", 0, 1, "activity"),
        ("active", 1, 3, None),
        ("idle", 3, 4, "action"),
        ("idle", 10, 11, "activity"),
        ("active", 11, 11.5, None),
        ("idle", 11.5, 14, "now"),
    ]
    assert [p["kind"] for p in view["points"]] == ["boot", "action", "boot"]
    assert view["points"][1]["reason"] == "idle for 1h: time to act"


def test_the_summary_arithmetic():
    s = command.timeline(_day(), 0, 14 * H, current_boot="B", shorter=0.5 * H)["summary"]
    assert s["up_seconds"] == 8 * H  # 0-4h and 10-14h
    assert s["active_seconds"] == 2.5 * H
    assert s["idle_seconds"] == 5.5 * H  # 1 + 1 + 1 + 2.5
    assert s["longest"] == {"who": "dev from 192.0.2.4", "seconds": 2 * H}
    # Idle stretches of 1, 1, 1 and 2.5 h under a 30 min duration: each runs 30 min, saving 0.5+0.5+0.5+2 h;
    # two of them ended with someone coming back, who would have found the machine off.
    assert s["saved_seconds"] == 3.5 * H
    assert s["returns_found_off"] == 2
    assert s["actions"] == 1


def test_the_period_clips_stretches_and_hours_add_up():
    view = command.timeline(_day(), 2 * H, 12 * H, current_boot="B", shorter=None)
    assert view["stretches"][0]["start"] == 2 * H and view["stretches"][-1]["end"] == 12 * H
    assert view["summary"]["saved_seconds"] is None
    hours = view["hours"]
    assert len(hours) == 11
    assert sum(h["active_seconds"] + h["idle_seconds"] for h in hours) == view["summary"]["up_seconds"]
    assert [h["actions"] for h in hours].count(1) == 1


def test_a_short_session_keeps_nothing_up_and_an_open_one_lasts_until_now():
    events = [
        _ev(0, "boot"),
        _ev(1 * H, "close", sid="1", user="dev", counted=False, opened=1 * H - 5, **{"from": "x"}),
        _ev(2 * H, "open", sid="2", user="dev", **{"from": "x"}),
    ]
    view = command.timeline(events, 0, 3 * H, current_boot="A")
    assert [(s["kind"], s["start"] / H, s["end"] / H) for s in view["stretches"]] == [
        ("idle", 0, 2), ("active", 2, 3)
    ]  # fmt: skip


def test_an_inhibitor_shows_as_inhibited_with_who():
    events = [
        _ev(0, "boot"),
        _ev(1 * H, "start", kind="inhibitor", id="7", holds="inhibit", user="dev", why="a build"),
        _ev(5 * H, "end", kind="inhibitor", id="7", what="inhibitor 7 of dev"),
    ]
    view = command.timeline(events, 0, 6 * H, current_boot="A")
    inhibited = [s for s in view["stretches"] if s["kind"] == "inhibited"]
    assert inhibited == [{"start": 1 * H, "end": 5 * H, "seconds": 4 * H, "kind": "inhibited",
                          "who": ["inhibitor 7 of dev (a build)"]}]  # fmt: skip
    assert view["summary"]["longest"]["who"] == "inhibitor 7 of dev (a build)"


def test_the_text_has_the_timeline_a_chart_and_the_summary():
    view = command.timeline(_day(), 0, 14 * H, current_boot="B", shorter=0.5 * H)
    view.update(since=command._iso(0), until=command._iso(14 * H), inactivity_duration=3600)
    text = command.render(view)
    assert "active 2h: dev from 192.0.2.4" in text
    assert "the action ran ['systemctl', 'poweroff']: idle for 1h: time to act" in text
    assert "Per hour:" in text and "!" in text
    assert text.rstrip().splitlines()[-1] == (
        "Summary: kept up longest by dev from 192.0.2.4 (2h); idle 5.5 h of 8.0 h up; with inactivity_duration"
        " 30m instead of 1h, 3.5 h of those would have been saved (2 return(s) would have found it off);"
        " 1 action(s)."
    )
