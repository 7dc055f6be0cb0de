"""Issue 11 on a booted machine: a logind idle inhibitor holds it, a mosh session counts while its client is
attached, and a client that vanishes without a FIN ends its session in minutes (the shipped sshd drop-in)."""

import pytest

from tests.system.scenarios import (
    ALIVE_EVERY,
    LATE_OK,
    MOSH_DETACH,
    MOSH_DETACH_SLACK,
    SHIPPED_COUNT_MAX,
    SHORT_ALIVE,
    TICK_PERIOD,
    assert_powered_off_on_time,
    session_of,
)

pytestmark = pytest.mark.system

# A tick notices an activity gone at the latest one timer period after it went, plus a tick's own run.
NOTICED_WITHIN = TICK_PERIOD + 10


# --- (a) a logind idle inhibitor ---------------------------------------------------------------------------------


@pytest.mark.scenario("logind_inhibitor_held")
def test_a_logind_idle_inhibitor_keeps_the_machine_up_past_its_deadline_as_inhibited(scenario):
    r = scenario
    assert r.up_past_deadline, f"it powered off under an idle inhibitor: {r.timing.describe()}\n{r.journal}"
    assert r.status["state"] == "inhibited", f"{r.status}\n{r.journal}"


@pytest.mark.scenario("logind_inhibitor_held")
def test_status_shows_the_logind_inhibitor_with_its_who_why_and_pid_to_root_and_to_a_user(scenario):
    r = scenario
    for status in (r.status, r.status_user):
        (i,) = [i for i in status["inhibitors"] if i["kind"] == "logind"]
        assert i["why"] == f"irt-build: {r.why}", i
        assert str(i["pid"]) in r.inhibit_pids, (i, r.inhibit_pids)
        assert i["user"] == "root" and i["since"] is not None, i


@pytest.mark.scenario("logind_inhibitor_held")
def test_the_sandboxed_tick_reads_logind_over_the_bus(scenario):
    # idle-reaper.service's own line: the D-Bus call works inside its sandbox (AF_UNIX, ProtectProc=invisible).
    assert "inhibited: held by 1 inhibitor(s): logind" in scenario.journal, scenario.journal


@pytest.mark.scenario("logind_inhibitor_held")
def test_the_inhibitors_end_is_recorded_within_a_tick_of_its_release(scenario):
    r = scenario
    assert r.inhibit_rc == 0, "systemd-inhibit failed"
    assert r.end is not None, f"no end recorded after the release\n{r.journal}"
    assert r.released - 1 <= r.end <= r.released + NOTICED_WITHIN, (r.released, r.end)


@pytest.mark.scenario("logind_inhibitor_held")
def test_after_the_inhibitor_ends_it_powers_off_on_time(scenario):
    assert_powered_off_on_time("logind idle inhibitor released (deadline: its recorded end + duration)", scenario)


# --- (b) a mosh session ------------------------------------------------------------------------------------------


@pytest.mark.scenario("mosh_typing_then_client_killed")
def test_the_mosh_user_typed_and_saw_every_command_echoed(scenario):
    r = scenario
    assert r.typed >= 8 and r.echoed >= r.typed - 1, (r.typed, r.echoed)


@pytest.mark.scenario("mosh_typing_then_client_killed")
def test_an_attached_mosh_session_is_a_counted_session_of_its_user_and_kind(scenario):
    r = scenario
    for status in (r.status_typing, r.status_late):
        assert status["state"] == "active", f"{status}\n{r.journal}"
        (s,) = [s for s in session_of(status, "dev") if s["kind"] == "mosh"]
        assert s["counted"] and s["pid"] == r.server_pid, s
    assert "counted (mosh) dev" in r.status_text, r.status_text


@pytest.mark.scenario("mosh_typing_then_client_killed")
def test_a_mosh_session_keeps_the_machine_up_while_its_user_types(scenario):
    r = scenario
    assert r.up_while_typing, f"it powered off under a mosh user: {r.timing.describe()}\n{r.journal}"


@pytest.mark.scenario("mosh_typing_then_client_killed")
def test_after_the_client_is_killed_mosh_server_lives_on_and_its_utmp_entry_says_detached_within_30s(scenario):
    r = scenario
    assert [e["attached"] for e in r.entries_before] == [True], r.entries_before
    assert r.detached_after is not None, f"still attached {MOSH_DETACH + MOSH_DETACH_SLACK}s after: {r.entries_after}"
    assert MOSH_DETACH - 5 <= r.detached_after <= MOSH_DETACH + MOSH_DETACH_SLACK, r.detached_after
    assert r.server_alive, "mosh-server did not live on (the test would prove nothing about the client)"
    assert not [s for s in r.status_detached["sessions"] if s["kind"] == "mosh"], r.status_detached


@pytest.mark.scenario("mosh_typing_then_client_killed")
def test_the_killed_clients_session_ends_within_the_documented_bound(scenario):
    r = scenario
    assert r.end is not None, f"no end recorded\n{r.journal}"
    # idle-reaper(8), MOSH: 30 s without contact, then up to a timer period for the tick to see it.
    assert r.killed + MOSH_DETACH - 5 <= r.end <= r.killed + MOSH_DETACH + MOSH_DETACH_SLACK + NOTICED_WITHIN, (
        r.end - r.killed
    )


@pytest.mark.scenario("mosh_typing_then_client_killed")
def test_after_the_mosh_client_is_gone_it_powers_off_on_time(scenario):
    assert_powered_off_on_time("mosh client killed (deadline: its recorded end + duration)", scenario)


# --- (c) a client that vanishes without a FIN ----------------------------------------------------------------------


@pytest.mark.scenario("client_vanishes_without_fin")
def test_sshd_takes_the_first_value_a_drop_in_sorting_first_wins_and_the_shipped_count_applies(scenario):
    r = scenario
    assert f"clientaliveinterval {SHORT_ALIVE}\n" in r.sshd_t, r.sshd_t
    assert f"clientalivecountmax {SHIPPED_COUNT_MAX}\n" in r.sshd_t, r.sshd_t


@pytest.mark.scenario("client_vanishes_without_fin")
def test_the_vanishing_client_s_session_counted_until_its_link_went_down(scenario):
    r = scenario
    assert r.status_counted["state"] == "active", r.status_counted
    assert r.up_at_link_down


@pytest.mark.scenario("client_vanishes_without_fin")
def test_sshd_ends_the_vanished_client_s_session_after_its_client_alive_asks(scenario):
    r = scenario
    bound = ALIVE_EVERY * (SHIPPED_COUNT_MAX + 1) + LATE_OK
    assert r.session_end - r.link_down <= bound, (r.session_end - r.link_down, r.sshd_journal)
    assert "Timeout, client not responding" in r.sshd_journal, r.sshd_journal


@pytest.mark.scenario("client_vanishes_without_fin")
def test_after_the_vanished_client_s_session_ends_it_powers_off_on_time(scenario):
    assert_powered_off_on_time("client vanished without FIN (deadline: the session's end + duration)", scenario)
