"""`idle-reaper status` inside a booted machine, read by a non-root user, says what is happening."""

import pytest

from tests.system.scenarios import DURATION, assert_powered_off_on_time, session_of

pytestmark = pytest.mark.system


def _public(status):
    return {k: status[k] for k in ("state", "inactivity_duration", "idle_seconds", "seconds_until_action")}


@pytest.mark.scenario("status_as_user")
def test_a_non_root_user_sees_the_session_then_the_countdown_that_the_poweroff_keeps(scenario):
    r = scenario
    # connected: active, with the user's own session counted, as root sees it
    assert r.user_active["state"] == "active", r.user_active
    (mine,) = session_of(r.user_active, "dev")
    assert mine["counted"] and mine["reason"] is None, mine
    assert _public(r.user_active) == _public(r.root_active)
    assert "active" in r.user_text_in_session, r.user_text_in_session
    # after leaving: idle, counting down from the close
    s = r.user_idle
    assert s["state"] == "idle" and session_of(s, "dev") == [], s
    assert abs(s["idle_seconds"] - (r.user_idle_at - r.session_end)) <= 1.5, (s, r.user_idle_at, r.session_end)
    predicted = r.user_idle_at + s["seconds_until_action"]
    assert abs(predicted - (r.session_end + DURATION)) <= 1.5, (s, r.user_idle_at, r.session_end)
    assert "idle: acts in" in r.user_idle_text, r.user_idle_text
    # and the machine did what it said
    assert_powered_off_on_time("status as a non-root user", r)
    assert abs(r.timing.action_at - predicted) <= 1.5, (predicted, r.timing)
