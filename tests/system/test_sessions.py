"""Which sessions count on a booted machine: an ignored account's don't; a session whose monitor died does."""

import pytest

from tests.system.scenarios import DURATION, LATE_OK, MEASURED, TICK_PERIOD, assert_powered_off_on_time, session_of

pytestmark = pytest.mark.system


@pytest.mark.scenario("ignored_user_connected")
def test_a_session_of_an_ignored_user_keeps_nothing_alive(scenario):
    r = scenario
    (probe,) = session_of(r.status, "probe")
    assert not probe["counted"] and "ignore" in probe["reason"], probe
    assert r.status["state"] == "idle", r.status
    assert_powered_off_on_time("ignored user connected", r)
    assert r.probe_gone_at >= r.timing.deadline, "the ignored session was not open when the machine powered off"


@pytest.mark.scenario("monitor_killed")
def test_a_session_whose_sshd_monitor_was_sigkilled_still_counts_while_the_client_is_connected(scenario):
    r = scenario
    assert r.kill.returncode == 0 and r.monitor_gone, (r.monitor, r.kill)
    assert "alive" in r.echo_after_kill and "still alive" in r.echo_late, "the connection did not go on"
    for status in (r.status_after_kill, r.status_late):
        assert status["state"] == "active", status
        assert any(s["counted"] for s in session_of(status, "dev")), status["sessions"]
    assert r.up_before_close, f"it powered off under a connected user: {r.timing.describe()}\n{r.journal}"


@pytest.mark.scenario("monitor_killed")
def test_after_a_sigkilled_monitor_s_client_leaves_it_still_powers_off(scenario):
    r = scenario
    MEASURED.append(("monitor SIGKILLed, then the client left (deadline: the close + duration)", r.timing))
    t = r.timing
    assert t.exited_at is not None, f"never powered off: {t.describe()}\n{r.journal}"
    # The lease ends when a tick first sees it dead (DESIGN.md), and ticks come once a minute.
    assert t.action_at >= r.closed + DURATION, f"acted early: {t.describe()}"
    assert t.late <= TICK_PERIOD + LATE_OK, f"{t.describe()}\n{r.journal}"
