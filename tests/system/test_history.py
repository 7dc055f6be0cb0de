"""The history survives a poweroff (issue 13): the next boot of the same machine shows the previous boot's
session and the action with its reason, to a user who is not root."""

import pytest

from tests.system.scenarios import assert_powered_off_on_time

pytestmark = pytest.mark.system


@pytest.mark.scenario("history_across_boots")
def test_after_a_poweroff_and_the_next_boot_history_shows_the_previous_boots_session_and_action(scenario):
    r = scenario
    assert_powered_off_on_time("history across boots", r)
    view, text = r.history, r.history_text
    why = f"{text}\n{r.files}\n{r.journal}"
    assert [p["kind"] for p in view["points"]][:2] == ["boot", "action"], why
    boot, action = view["points"][:2]
    assert action["action"] == ["systemctl", "poweroff"], why
    assert "time to act" in action["reason"] and "session of dev from 127.0.0.1 ended" in action["reason"], why
    active = [s for s in view["stretches"] if s["kind"] == "active"]
    assert len(active) == 1 and active[0]["who"] == ["dev from 127.0.0.1"], why
    assert active[0]["seconds"] >= 5, why  # held past min_session
    (last_idle,) = [s for s in view["stretches"] if s["kind"] == "idle" and s["start"] >= active[0]["end"]]
    assert last_idle["ended_by"] == "action" and 18 <= last_idle["seconds"] <= 25, why  # inactivity_duration 20s
    assert view["summary"]["actions"] == 1 and view["summary"]["longest"]["who"] == "dev from 127.0.0.1", why
    assert "the action ran ['systemctl', 'poweroff']" in text and "active " in text, why
    assert "history.jsonl" in r.files, why
