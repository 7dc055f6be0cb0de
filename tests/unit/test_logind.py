"""logind's idle inhibitors: busctl's ListInhibitors answer parsed, turned into held activities, capped."""

import os
from types import SimpleNamespace

import pytest

from reaper.config.schema import Config
from reaper.evidence import activity, logind
from reaper.observe import Paths

# busctl --json=short call org.freedesktop.login1 /org/freedesktop/login1 org.freedesktop.login1.Manager
# ListInhibitors, as systemd 252 (bookworm) printed it in a booted test machine with two inhibitors.
ANSWER = (
    '{"type":"a(ssssuu)","data":[[["idle","build","running make world","block",0,245],'
    '["shutdown:sleep","NetworkManager","NetworkManager needs to turn off networks","delay",0,77]]]}'
)
EMPTY = '{"type":"a(ssssuu)","data":[[]]}'
CFG = Config(path="test.yaml", inactivity_duration=3600, max_inhibit=None)
CAPPED = CFG._replace(max_inhibit=7200)
BOOT = 10.0


def starts(**by_pid):
    return lambda pid: by_pid.get(f"p{pid}")


def test_parse_reads_each_inhibitor_of_the_answer():
    assert logind.parse(ANSWER) == [
        ("idle", "build", "running make world", "block", 0, 245),
        ("shutdown:sleep", "NetworkManager", "NetworkManager needs to turn off networks", "delay", 0, 77),
    ]


def test_parse_reads_an_empty_list():
    assert logind.parse(EMPTY) == []


@pytest.mark.parametrize(
    "text",
    [
        '{"type":"as","data":[["a"]]}',
        '{"type":"a(ssssuu)","data":[[["idle","who","why","block","0",245]]]}',
        '{"type":"a(ssssuu)","data":[[["idle","who","why","block",0]]]}',
        '{"type":"a(ssssuu)"}',
        "not json",
    ],
)
def test_parse_refuses_what_is_not_a_list_inhibitors_answer(text):
    with pytest.raises(ValueError):
        logind.parse(text)


@pytest.mark.parametrize(
    ("what", "mode", "holds"),
    [
        ("idle", "block", True),
        ("sleep:idle:shutdown", "block", True),
        ("idle", "delay", False),
        ("sleep:shutdown", "block", False),
        ("handle-lid-switch", "block", False),
        ("idleness", "block", False),
    ],
)
def test_only_a_block_inhibitor_of_idle_holds_the_machine(what, mode, holds):
    assert logind.holds_idle(what, mode) is holds


def test_an_idle_inhibitor_is_an_inhibit_activity_with_its_who_why_user_and_pid_since_its_process_started():
    (a,) = logind.activities(logind.parse(ANSWER), CFG, starts(p245=500.0), BOOT)
    assert a.kind == "logind" and a.holds == activity.INHIBIT
    assert (a.id, a.user, a.pid, a.since) == ("245", "root", 245, 500.0)
    assert a.why == "build: running make world"
    assert a.end(10_000.0) is None, "it lasts while logind lists it"


def test_with_max_inhibit_off_it_is_not_capped():
    (a,) = logind.activities(logind.parse(ANSWER), CFG, starts(p245=500.0), BOOT)
    assert a.until is None and not a.capped


def test_the_default_max_inhibit_caps_it_a_day_after_its_process_start():
    (a,) = logind.activities(logind.parse(ANSWER), Config("t.yaml", 3600), starts(p245=500.0), BOOT)
    assert a.until == 500.0 + 86400 and a.capped


def test_max_inhibit_caps_it_from_its_process_start():
    (a,) = logind.activities(logind.parse(ANSWER), CAPPED, starts(p245=500.0), BOOT)
    assert a.until == 500.0 + 7200 and a.capped
    assert a.end(500.0 + 7199) is None
    assert a.end(500.0 + 7201) == 500.0 + 7200, "past its cap it has ended, although logind still lists it"


def test_one_whose_process_is_gone_counts_from_the_boot_so_the_cap_still_ends_it():
    (a,) = logind.activities(logind.parse(ANSWER), CAPPED, starts(), BOOT)
    assert a.since == BOOT and a.until == BOOT + 7200


def test_two_idle_inhibitors_of_one_process_are_two_activities():
    two = [("idle", "a", "x", "block", 1000, 9), ("idle", "b", "y", "block", 1000, 9)]
    found = logind.activities(two, CFG, starts(p9=1.0), BOOT)
    assert [a.id for a in found] == ["9", "9-2"]


def test_a_uid_without_a_name_is_shown_as_its_number():
    (a,) = logind.activities([("idle", "w", "", "block", 4_000_000_123, 9)], CFG, starts(p9=1.0), BOOT)
    assert a.user == "4000000123" and a.why == "w"


@pytest.fixture
def run(tmp_path):
    """A fake /run/systemd: seats (logind runs), inhibit (its files), and a busctl that answers from a file."""
    seats, inhibit = tmp_path / "seats", tmp_path / "inhibit"
    seats.mkdir()
    busctl = tmp_path / "busctl"
    answer = tmp_path / "answer"
    busctl.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\ncat {answer}\n')
    busctl.chmod(0o755)
    answer.write_text(ANSWER)
    return SimpleNamespace(seats=seats, inhibit=inhibit, busctl=busctl, answer=answer, calls=tmp_path / "calls")


def _gather(run, cfg=CFG):
    paths = Paths("c.yaml", "/nonexistent")
    return logind.gather(paths, cfg, 0.0, seats_dir=run.seats, inhibit_dir=run.inhibit, busctl=str(run.busctl))


def test_without_logind_it_says_so_and_reports_nothing(run):
    os.rmdir(run.seats)
    assert _gather(run) == ([], [logind.NOT_HERE])


def test_with_logind_but_no_inhibitor_file_it_asks_nobody(run):
    assert _gather(run) == ([], [])
    run.inhibit.mkdir()
    (run.inhibit / "1.ref").touch()  # a FIFO name alone: not an inhibitor's state file
    assert _gather(run) == ([], [])
    assert not run.calls.exists(), "busctl was run although logind had no inhibitor"


def test_with_an_inhibitor_file_it_asks_logind_over_the_bus(run):
    run.inhibit.mkdir()
    (run.inhibit / "1").write_text("WHAT=idle\n")
    found, notes = _gather(run)
    assert [a.pid for a in found] == [245] and notes == []
    assert "ListInhibitors" in run.calls.read_text() and "--json=short" in run.calls.read_text()


def test_a_failed_call_is_a_note_not_a_crash(run):
    run.inhibit.mkdir()
    (run.inhibit / "1").write_text("WHAT=idle\n")
    run.busctl.write_text("#!/bin/sh\necho 'Failed to connect to bus: No such file or directory' >&2\nexit 1\n")
    found, (note,) = _gather(run)
    assert found == [] and "could not list" in note and "Failed to connect to bus" in note
