"""Issue 12 on a booted machine: the login notice, and max_duration with its grace."""

import pytest

from tests.system.scenarios import CAP, GRACE, HOOK_TIMEOUT, LEADS, assert_powered_off_on_time

pytestmark = pytest.mark.system

POLICY = "idle-reaper: this machine powers off after 10m with nobody connected over SSH."


@pytest.mark.scenario("login_notice")
def test_an_interactive_login_shows_the_notice_and_it_follows_the_state(scenario):
    r = scenario
    why = f"\njournal:\n{r.journal}"
    assert r.mode == "644 root", r.mode
    assert r.file_idle.splitlines()[0] == POLICY, r.file_idle + why
    assert POLICY in r.login_idle and "Now: idle, set to stop at" in r.login_idle, r.login_idle + why
    assert "idle-reaper inhibit" in r.login_idle
    assert "Now: in use (1 connected)" in r.file_active, r.file_active + why
    assert "Now: in use (1 connected)" in r.login_active, r.login_active + why
    assert "Now: idle" in r.file_after, r.file_after + why


@pytest.mark.scenario("login_notice")
def test_notice_off_removes_it(scenario):
    assert scenario.file_off is None, scenario.file_off
    assert "idle-reaper:" not in scenario.login_off, scenario.login_off


@pytest.mark.scenario("max_duration_nobody")
def test_max_duration_60s_with_nobody_connected_powers_off_on_time(scenario):
    r = scenario
    assert r.status["state"] == "disabled" and r.status["max_duration"] == 60, r.status
    predicted = r.status_at + r.status["max_duration_seconds_left"]
    assert abs(predicted - (r.booted + 60)) <= 1.5, r.status
    assert r.status["seconds_until_action"] == r.status["max_duration_seconds_left"]
    assert_powered_off_on_time("max_duration 60s, nobody connected", r)


def _assert_waited_in_the_grace(r):
    s = r.status_grace
    assert r.up_in_grace, f"it powered off at the cap under a connected user: {r.timing.describe()}\n{r.journal}"
    assert s["state"] == "active" and s["max_duration_seconds_left"] == 0, s
    assert 0 < s["grace_seconds_left"] <= GRACE - 2, s
    assert s["max_duration_grace"] == GRACE


def _assert_warned(r, leads):
    """The user's terminal got one warning per lead time, each on time (first: at the cap, for the whole grace)."""
    why = f"{r.warnings}\n{r.journal}"
    assert len(r.warnings) == len(leads), why
    deadline = r.booted + CAP + GRACE
    for (at, line), lead in zip(r.warnings, leads, strict=True):
        left = min(lead, GRACE)
        assert f"powers off in {left}s" in line, why
        assert deadline - left - 0.1 <= at <= deadline - left + 2.0, (at - r.booted, lead, why)


@pytest.mark.scenario("max_duration_user_leaves")
def test_max_duration_with_a_user_waits_and_acts_when_they_leave(scenario):
    _assert_waited_in_the_grace(scenario)
    _assert_warned(scenario, [lead for lead in LEADS if scenario.booted + CAP + GRACE - lead < scenario.left])
    assert_powered_off_on_time("max_duration: the user leaves in the grace", scenario, late_ok=2.0)


@pytest.mark.scenario("max_duration_grace_ends")
def test_max_duration_with_a_user_who_stays_acts_when_the_grace_ends(scenario):
    _assert_waited_in_the_grace(scenario)
    assert scenario.timing.deadline - scenario.booted == CAP + GRACE
    _assert_warned(scenario, LEADS)
    assert_powered_off_on_time("max_duration: the grace ends", scenario, late_ok=2.0)


def _at(r, needle):
    return next((at for at, _, msg in r.lines if needle in msg), None)


@pytest.mark.scenario("pre_action_hook")
def test_a_pre_action_hook_runs_before_the_action_and_its_output_is_in_the_journal(scenario):
    r = scenario
    why = r.journal
    synced = _at(r, "syncing the workspace: cause=inactivity_duration idle=2")  # 20 s, or 21 when the tick is late
    assert synced is not None, why
    assert r.timing.action_at is not None and synced < r.timing.action_at, why
    assert _at(r, "pre-action hook /etc/idle-reaper/pre-action.d/10-sync finished") is not None, why
    assert r.timing.exited_at is not None, why


@pytest.mark.scenario("pre_action_hook_hangs")
def test_a_hook_that_hangs_is_cut_off_at_its_timeout_and_the_action_still_runs(scenario):
    r = scenario
    why = r.journal
    started = _at(r, "running pre-action hook /etc/idle-reaper/pre-action.d/10-hang")
    cut = _at(r, "10-hang timed out (pre_action_timeout 3s)")
    assert started is not None and cut is not None, why
    assert HOOK_TIMEOUT - 0.5 <= cut - started <= HOOK_TIMEOUT + 3, (cut - started, why)
    after = _at(r, "after the hang")
    assert after is not None and after > cut, why
    assert r.timing.action_at is not None and r.timing.action_at > after, why
    assert r.timing.exited_at is not None, why


@pytest.mark.scenario("pre_action_login")
def test_a_login_during_the_hooks_stops_the_action(scenario):
    r = scenario
    assert r.up, f"it powered off under a user who logged in during the hooks\n{r.journal}"
    assert r.status["state"] == "active", r.status
    # Still young when the hooks end (held until it counts), or already counted: either way, no action.
    assert "not running the action" in r.journal, r.journal
    assert "running the action [" not in r.journal, r.journal
