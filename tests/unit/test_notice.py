"""The login notice: its text for each state (a pure function of config and decision), and its file."""

import os
import stat

from reaper import decision
from reaper.actions import notice
from reaper.evidence.activity import INHIBIT, Activity
from tests.unit.test_decision import cfg, decide, evidence, lease, state
from tests.unit.test_max_duration import BOOT_AT, CAP, at, capped, held


def clock_at(seconds):
    """A clock for the text: seconds from now, as a readable stand-in for HH:MM."""
    return f"T+{seconds:g}"


def lines(config, d):
    text = notice.text(config, d, clock_at)
    assert text.endswith("\n") and len(text.splitlines()) == 2, text
    return text.splitlines()


def test_idle_says_the_policy_when_it_stops_and_how_to_keep_it_up():
    policy, now = lines(cfg(), decide(cfg(), 600, state()))
    assert policy == "idle-reaper: this machine powers off after 1h with nobody connected over SSH."
    assert now.startswith("Now: idle, set to stop at T+3000 unless someone connects")
    assert "idle-reaper inhibit --for 2h" in now


def test_active_says_how_many_are_connected():
    st = state(open_=[lease(opened=0), lease(opened=0, pid=101, port=40001)])
    _, now = lines(cfg(), decide(cfg(), 600, st))
    assert now.startswith("Now: in use (2 connected); the countdown starts when the last one leaves.")


def test_inhibited():
    inhibitor = Activity("inhibitor", "x", INHIBIT, "alice", "build", 0.0)
    d = decision.decide(cfg(), 600, 0.0, state(), evidence(), None, True, [inhibitor])
    assert d.state == "inhibited"
    assert lines(cfg(), d)[1].startswith("Now: kept up by an inhibitor")


def test_unknown_says_nothing_is_stopped():
    d = decide(cfg(), 600, None, evidence(), problem="state file unusable")
    assert (
        lines(cfg(), d)[1] == "Now: unknown, so nothing is stopped until the reaper can tell (see idle-reaper status)."
    )


def test_a_command_action_is_said_to_stop_the_machine_not_power_it_off():
    c = cfg(action=("/usr/local/bin/stop-me",))
    assert lines(c, decide(c, 600, state()))[0].startswith("idle-reaper: this machine is stopped after 1h")


def test_disabled_without_a_cap_has_no_notice_and_notice_off_has_none():
    c = cfg(inactivity_duration=None)
    assert notice.text(c, decide(c, 600, state()), clock_at) is None
    c = cfg(notice=False)
    assert notice.text(c, decide(c, 600, state()), clock_at) is None


def test_the_cap_is_in_the_policy_with_its_time_and_grace():
    c = capped()
    policy, now = lines(c, at(c, BOOT_AT + 600, state()))
    assert policy == (
        "idle-reaper: this machine powers off after 1h with nobody connected over SSH and 12h after it started"
        f" (at T+{CAP - 600}) in any case (at most 30m later if someone is connected)."
    )
    assert "Keep it up (until max_duration)" in now


def test_cap_only_with_inactivity_off():
    c = capped(inactivity_duration=None, max_duration_grace=None)
    policy, now = lines(c, at(c, BOOT_AT + 600, state()))
    assert policy.startswith("idle-reaper: this machine powers off 12h after it started")
    assert "(once the last one leaves if someone is connected)" in policy
    assert now.startswith("Now: no idle shutdown (inactivity_duration is off).")


def test_cap_reached_with_a_user_connected_says_when_at_the_latest():
    c = capped()
    _, now = lines(c, at(c, BOOT_AT + CAP + 60, held()))
    assert now == f"Now: max_duration reached; it stops at T+{1800 - 60} at the latest: save your work."
    c = capped(max_duration_grace=None)
    _, now = lines(c, at(c, BOOT_AT + CAP + 60, held()))
    assert now == "Now: max_duration reached; it stops once the last user leaves: save your work."


def test_the_text_does_not_tick_with_the_seconds():
    """Written when it changes: two ticks a second apart, with a real clock, give the same text."""
    c = capped()
    a = notice.text(c, at(c, BOOT_AT + 600, state()), notice.clock(1_000_000_000.0))
    b = notice.text(c, at(c, BOOT_AT + 601, state()), notice.clock(1_000_000_001.0))
    assert a == b


def test_write_is_atomic_world_readable_and_only_when_changed(tmp_path):
    old = os.umask(0o077)
    try:
        assert notice.write(str(tmp_path), "one\n") is True
    finally:
        os.umask(old)
    path = tmp_path / "idle-reaper"
    assert path.read_text() == "one\n" and stat.S_IMODE(path.stat().st_mode) == 0o644
    assert notice.write(str(tmp_path), "one\n") is False
    assert notice.write(str(tmp_path), "two\n") is True and path.read_text() == "two\n"
    assert notice.write(str(tmp_path), None) is True and not path.exists()
    assert notice.write(str(tmp_path), None) is False
    assert os.listdir(tmp_path) == []


def test_the_text_names_no_user_so_nothing_from_outside_reaches_a_terminal():
    st = state(open_=[lease(user="\x1b[31mevil", opened=0)])
    text = notice.text(cfg(), decide(cfg(), 600, st), clock_at)
    assert "\x1b" not in text and "evil" not in text  # the text holds nothing a user chose
