"""A booted machine with the package powers itself off once nobody has used it over SSH for inactivity_duration."""

import pytest

from tests.system.scenarios import DURATION, MIN_SESSION, assert_powered_off_on_time, session_of

pytestmark = pytest.mark.system


@pytest.mark.scenario("nobody_connects")
def test_nobody_connects_so_it_powers_off_inactivity_duration_after_boot(scenario):
    r = scenario
    assert r.status["state"] == "idle", r.status
    assert r.status["inactivity_duration"] == DURATION
    # status counted from boot: what it said matches the deadline the harness measures against. It read the
    # clock somewhere between the ask and the answer (a loaded machine's status call takes a while), and
    # rounds the seconds left up.
    left = r.status["seconds_until_action"]
    deadline = r.booted + DURATION
    assert r.status_asked + left - 1.5 <= deadline <= r.status_at + left + 0.5, (r.status, r.booted, r.status_at)
    assert_powered_off_on_time("nobody connects", r)


def _assert_kept_up_then_powered_off(name, r, sessions=1):
    assert r.status_counted["state"] == "active", f"{r.status_counted}\n{r.journal}"
    dev = session_of(r.status_counted, "dev")
    assert len(dev) == sessions and all(s["counted"] for s in dev), r.status_counted["sessions"]
    assert r.status_late["state"] == "active", f"{r.status_late}\n{r.journal}"
    assert r.up_before_close and r.up_after_close, f"it powered off under a connected user: {r.timing.describe()}"
    assert r.closed > r.boot_deadline + 5, "the session was not held past the boot deadline"
    assert r.session_end - r.booted > DURATION + MIN_SESSION
    assert_powered_off_on_time(name, r)


@pytest.mark.scenario("shell_session_held")
def test_a_shell_session_longer_than_the_duration_keeps_it_up_then_it_powers_off_after_the_close(scenario):
    _assert_kept_up_then_powered_off("shell session held", scenario)


@pytest.mark.scenario("forward_only_held")
def test_a_forward_only_ssh_N_L_connection_keeps_it_up_the_same_way(scenario):
    _assert_kept_up_then_powered_off("ssh -N -L held", scenario)


@pytest.mark.scenario("control_master_held")
def test_a_control_master_connection_with_three_channels_is_one_session_and_keeps_it_up(scenario):
    _assert_kept_up_then_powered_off("ControlMaster, 3 channels, held", scenario, sessions=1)
