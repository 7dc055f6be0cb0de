"""max_duration: a hard cap counted from boot, and max_duration_grace for the users connected when it is reached."""

from reaper import decision
from tests.unit.test_decision import HOUR, cfg, decide, evidence, lease, state

CAP = 12 * HOUR
GRACE = 1800
BOOT_AT = 100.0  # when this system's PID 1 started


def capped(**kw):
    kw.setdefault("max_duration", CAP)
    kw.setdefault("max_duration_grace", GRACE)
    return cfg(**kw)


def at(config, now, st, ev=None):
    return decide(config, now, st, ev, boot_started=BOOT_AT)


def held(opened=BOOT_AT + 10):
    """A state with one counted session, open since `opened`, still live."""
    return state(open_=[lease(opened=opened)])


def test_off_by_default():
    assert cfg().max_duration is None
    d = at(cfg(inactivity_duration=None), BOOT_AT + 100 * CAP, state())
    assert (d.state, d.act, d.cap_seconds_left) == ("disabled", False, None)


def test_one_second_before_the_cap_nobody_connected_does_not_act_and_counts_down():
    d = at(capped(inactivity_duration=None), BOOT_AT + CAP - 1, state())
    assert (d.state, d.act, d.cap_seconds_left, d.seconds_until_action, d.next_check) == ("disabled", False, 1, 1, 1)


def test_at_the_cap_nobody_connected_acts_even_with_inactivity_off():
    d = at(capped(inactivity_duration=None), BOOT_AT + CAP, state())
    assert (d.act, d.cause, d.cap_seconds_left) == (True, decision.MAX_DURATION, 0)
    assert "max_duration 12h reached" in d.reason


def test_the_cap_is_counted_from_boot_not_from_the_last_activity():
    st = state(closed_=[dict(lease(opened=BOOT_AT + CAP - 600), closed=BOOT_AT + CAP - 10, end="hook")])
    d = at(capped(), BOOT_AT + CAP, st)
    assert d.act and d.cause == decision.MAX_DURATION


def test_idle_deadline_before_the_cap_is_the_one_shown():
    d = at(capped(), BOOT_AT + 600, state())
    assert (d.state, d.seconds_until_action, d.cap_seconds_left) == ("idle", HOUR - 600, CAP - 600)


def test_cap_before_the_idle_deadline_is_the_one_shown():
    d = at(capped(max_duration=1200), BOOT_AT + 600, state())
    assert (d.seconds_until_action, d.next_check) == (600, 600)


def test_inactivity_acting_before_the_cap_keeps_its_own_cause():
    d = at(capped(), BOOT_AT + HOUR, state())
    assert (d.act, d.cause) == (True, decision.INACTIVITY)


def test_a_connected_user_at_the_cap_holds_the_action_for_the_grace():
    d = at(capped(), BOOT_AT + CAP, held())
    assert (d.state, d.act, d.blocked_kind, d.grace_seconds_left, d.next_check) == (
        "active",
        False,
        "grace",
        GRACE,
        GRACE,
    )
    assert "at most 30m" in d.blocked


def test_one_second_before_the_grace_ends_still_waits():
    d = at(capped(), BOOT_AT + CAP + GRACE - 1, held())
    assert (d.act, d.grace_seconds_left, d.next_check) == (False, 1, 1)


def test_when_the_grace_ends_the_action_runs_under_the_connected_user():
    d = at(capped(), BOOT_AT + CAP + GRACE, held())
    assert (d.act, d.cause, d.grace_seconds_left) == (True, decision.MAX_DURATION, 0)
    assert "max_duration_grace 30m is over" in d.reason


def test_when_the_user_leaves_within_the_grace_the_action_runs_at_once():
    st = state(closed_=[dict(lease(opened=BOOT_AT + 10), closed=BOOT_AT + CAP + 60, end="hook")])
    d = at(capped(), BOOT_AT + CAP + 61, st)
    assert (d.state, d.act, d.cause) == ("idle", True, decision.MAX_DURATION)


def test_grace_off_never_cuts_a_user_off():
    d = at(capped(max_duration_grace=None), BOOT_AT + CAP + 100 * HOUR, held())
    assert (d.act, d.blocked_kind, d.grace_seconds_left, d.next_check) == (False, "grace", None, None)
    assert "max_duration_grace is off" in d.blocked


def test_the_grace_is_counted_from_the_cap_not_from_the_login():
    d = at(capped(), BOOT_AT + CAP + GRACE, held(opened=BOOT_AT + CAP + GRACE - 20))
    assert d.act


def test_an_inhibitor_does_not_hold_the_cap_off():
    from reaper.evidence.activity import INHIBIT, Activity

    inhibitor = Activity("inhibitor", "x", INHIBIT, "alice", "build", BOOT_AT)
    config = capped()
    d = decision.decide(config, BOOT_AT + CAP, BOOT_AT, state(), evidence(), None, True, [inhibitor])
    assert (d.act, d.cause) == (True, decision.MAX_DURATION)


def test_a_session_younger_than_min_session_holds_the_cap_for_at_most_min_session():
    st = held(opened=BOOT_AT + CAP - 5)
    d = at(capped(), BOOT_AT + CAP, st)
    assert (d.act, d.blocked_kind, d.next_check) == (False, "pending", 10)
    assert at(capped(), BOOT_AT + CAP + 10, st).act is False  # now it counts: the grace applies


def test_unclear_evidence_never_acts_on_the_cap():
    ev = evidence(checked=False)
    d = at(capped(), BOOT_AT + CAP, state(), ev)
    assert (d.act, d.blocked_kind) == (False, "unchecked")
    d = decide(capped(), BOOT_AT + CAP, None, evidence(), boot_started=BOOT_AT, problem="state file unusable")
    assert (d.state, d.act) == ("unknown", False)


def test_the_cap_acts_once():
    st = state(reaper={"acted_cap": True})
    d = at(capped(), BOOT_AT + CAP + 60, st)
    assert (d.act, d.blocked_kind) == (False, "acted")


def test_waiting_in_the_grace_is_one_change_of_decision_not_one_per_second():
    a = at(capped(), BOOT_AT + CAP + 1, held())
    b = at(capped(), BOOT_AT + CAP + 2, held())
    assert decision.change_key(a) == decision.change_key(b)
    assert decision.change_key(a) != decision.change_key(at(capped(), BOOT_AT + CAP - 1, held()))


# --- the keys ----------------------------------------------------------------------------------------------


def test_the_keys_parse_with_their_defaults():
    from reaper.config import parse

    c = parse.parse("c.yaml", "inactivity_duration: 2h\n")
    assert (c.max_duration, c.max_duration_grace, c.notice) == (None, 1800, True)
    c = parse.parse("c.yaml", "inactivity_duration: off\nmax_duration: 12h\nmax_duration_grace: off\nnotice: off\n")
    assert (c.max_duration, c.max_duration_grace, c.notice) == (12 * HOUR, None, False)


def test_bad_values_name_the_line_and_the_key():
    import pytest

    from reaper.config import parse
    from reaper.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        parse.parse("c.yaml", "inactivity_duration: 2h\nmax_duration: 0\nnotice: maybe\n")
    lines = str(e.value).splitlines()
    assert lines[0].startswith("c.yaml:2: max_duration:") and "use off to disable" in lines[0]
    assert lines[1].startswith("c.yaml:3: notice: str 'maybe' is not on or off")
