"""Inhibitors on a booted machine: a job left running after logout keeps it up, and `--for` holds with nobody
connected; either way the machine powers off inactivity_duration after the hold ends, on time."""

import pytest

from tests.system.scenarios import DURATION, HOLD_FOR, INHIBIT_LATE_OK, JOB, assert_powered_off_on_time, session_of

pytestmark = pytest.mark.system


def _the_inhibitor(status):
    (i,) = status["inhibitors"]
    return i


@pytest.mark.scenario("job_inhibits_after_logout")
def test_a_job_left_running_after_logout_keeps_it_up_while_it_runs(scenario):
    r = scenario
    assert "started" in r.started_out, r.started_out
    assert r.status_connected["state"] == "active", r.status_connected
    assert any(s["counted"] for s in session_of(r.status_connected, "dev"))
    assert _the_inhibitor(r.status_connected)["why"] == "nightly build", "listed while the session counts, too"
    s = r.status_after_logout
    assert s["state"] == "inhibited", f"{s}\n{r.journal}"
    i = _the_inhibitor(s)
    assert (i["user"], i["why"], i["capped"]) == ("dev", "nightly build", True) and i["pid"], i
    assert "inhibited: held by 1 inhibitor(s)" in r.text_after_logout and "nightly build" in r.text_after_logout
    assert r.status_later["state"] == "inhibited", r.status_later
    assert r.up_past_logout_deadline and r.up_before_job_end, f"it powered off under a running job\n{r.journal}"


@pytest.mark.scenario("job_inhibits_after_logout")
def test_after_the_job_ends_it_powers_off_inactivity_duration_later(scenario):
    r = scenario
    (said,) = r.job_err.splitlines()  # what inhibit said on stderr: that it holds, and nothing went wrong
    assert "holds the machine up while sleep 60 runs" in said, r.job_err
    assert abs(r.job_end - (r.job_started + JOB)) <= 2, (r.job_end, r.job_started, "the end is the job's own")
    assert "inhibitor" in r.job_end_what and "ended" in r.job_end_what
    assert r.status_after_end["state"] == "idle" and r.status_after_end["inhibitors"] == [], r.status_after_end
    assert r.timing.deadline - r.booted > DURATION + JOB
    assert_powered_off_on_time("inhibit -- sleep 60, left running after logout", r, late_ok=INHIBIT_LATE_OK)


@pytest.mark.scenario("inhibit_for_nobody_connected")
def test_inhibit_for_holds_with_nobody_connected_then_it_powers_off_after_it_expires(scenario):
    r = scenario
    assert len(r.ident) == 12, (r.ident, r.stderr)
    assert r.owner != 0 and r.record["until"] - r.record["since"] == HOLD_FOR
    assert r.status["state"] == "inhibited", r.status
    i = _the_inhibitor(r.status)
    assert (i["id"], i["user"], i["why"], i["capped"], i["pid"]) == (r.ident, "dev", "deploy", False, None)
    assert r.up_past_boot_deadline and r.status_later["state"] == "inhibited", r.status_later
    assert_powered_off_on_time("inhibit --for 40s, nobody connected", r, late_ok=INHIBIT_LATE_OK)
