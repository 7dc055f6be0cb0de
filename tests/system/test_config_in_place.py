"""The config on a running machine: `off` keeps it up, and an edit applies on the next decision, no restart."""

import pytest

from tests.system.scenarios import DURATION, assert_powered_off_on_time

pytestmark = pytest.mark.system


@pytest.mark.scenario("turned_off")
def test_inactivity_duration_off_keeps_it_up(scenario):
    r = scenario
    assert r.up, f"it went down with inactivity_duration: off\n{r.journal}"
    assert r.status["state"] == "disabled" and r.status["seconds_until_action"] is None, r.status
    # the timer did run a tick, which decided: else staying up would prove nothing
    assert "disabled: inactivity_duration is off" in r.journal, r.journal
    assert r.stopped_cleanly


@pytest.mark.scenario("shortened_in_place")
def test_shortening_the_duration_in_place_applies_without_a_restart(scenario):
    r = scenario
    assert r.status_before["inactivity_duration"] == 3600, r.status_before
    assert r.status_after["inactivity_duration"] == DURATION, r.status_after
    assert r.status_after["seconds_until_action"] <= DURATION - 1, r.status_after
    assert_powered_off_on_time("config shortened in place", r)


@pytest.mark.scenario("turned_off_in_place")
def test_turning_it_off_in_place_stops_a_tick_already_waiting_for_the_deadline(scenario):
    r = scenario
    assert r.tick_state_at_edit == "activating", "no tick was waiting for the deadline when the config changed"
    assert r.up, f"it powered off after the config said off\n{r.journal}"
    assert r.status["state"] == "disabled", r.status
