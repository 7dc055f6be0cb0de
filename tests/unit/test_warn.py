"""Warnings to connected users: the lead times at their boundaries, the text, and finding a session's pty."""

import os
import subprocess
import sys
import time

from reaper.actions import warn
from reaper.config.schema import Config

LEADS = (1800, 300, 60)


def test_default_lead_times_are_30_5_and_1_minute_and_a_test_may_override_them():
    assert warn.leads({}) == LEADS
    assert warn.leads({warn.LEADS_ENV: "5,30,15"}) == (30, 15, 5)
    assert warn.leads({warn.LEADS_ENV: "x,0"}) == LEADS  # nonsense is ignored


def test_a_lead_is_due_exactly_when_it_is_reached():
    assert warn.due(LEADS, 1800.01, []) == ()
    assert warn.due(LEADS, 1800, []) == (1800,)
    assert warn.due(LEADS, 1799, [1800]) == ()
    assert warn.due(LEADS, 300.5, [1800]) == ()
    assert warn.due(LEADS, 300, [1800]) == (1800, 300)
    assert warn.due(LEADS, 60, [1800, 300]) == (1800, 300, 60)
    assert warn.due(LEADS, 1, [1800, 300, 60]) == ()


def test_a_session_that_logs_in_late_gets_one_message_for_the_leads_it_missed():
    assert warn.due(LEADS, 200, []) == (1800, 300)  # one message, both marked as sent


def test_the_tick_wakes_at_the_next_lead():
    assert warn.next_wake(LEADS, 1800) == 1500
    assert warn.next_wake(LEADS, 400) == 100
    assert warn.next_wake(LEADS, 60) is None


def test_the_message_says_what_when_and_what_to_do():
    cfg = Config(path="c", inactivity_duration=None, max_duration=12 * 3600)
    text = warn.message(cfg, 299.96, "14:05 UTC")
    assert "this machine powers off in 5m (at 14:05 UTC), even with you logged in" in text
    assert "max_duration 12h has passed" in text and "Save your work and log out:" in text
    assert "\r\n" in text and all(len(line) <= 100 for line in text.split("\r\n"))


def test_the_pty_of_a_session_is_found_from_its_processes_and_written():
    master, slave = os.openpty()
    # A stand-in for the session's sshd: a parent whose child has the pty as its stdin, as a shell does.
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess,sys; subprocess.run(['sleep', '30'], stdin=sys.stdin)"],
        stdin=slave,
        stdout=subprocess.DEVNULL,
    )
    os.close(slave)
    try:
        for _ in range(100):
            if warn.terminals([parent.pid]):
                break
            time.sleep(0.05)
        (found,) = warn.terminals([parent.pid])
        written, errors = warn.write_terminals([parent.pid], "hello\r\n")
        assert written and not errors and written[0].startswith("pts/")
        assert os.read(master, 100).startswith(b"hello\r")  # the tty's own onlcr may add a CR
        assert os.major(found[2]) in warn.PTY_MAJORS
    finally:
        parent.kill()
        parent.wait()
        os.close(master)


def test_a_session_without_a_terminal_gets_nothing():
    child = subprocess.Popen(["sleep", "30"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        assert warn.terminals([child.pid]) == []
        assert warn.write_terminals([child.pid], "x") == ([], [])
    finally:
        child.kill()
        child.wait()


def test_the_tick_marks_each_sessions_warnings_once_and_forgets_sessions_that_ended(monkeypatch):
    from reaper.commands import reap
    from tests.unit.test_decision import lease, state
    from tests.unit.test_max_duration import BOOT_AT, CAP, at, capped

    monkeypatch.delenv(warn.LEADS_ENV, raising=False)
    c = capped()
    st = state(open_=[lease(opened=BOOT_AT + 10, pid=100)])
    memory, outbox = {}, []
    d = at(c, BOOT_AT + CAP, st)  # 1800 s of grace left: the 30-minute warning
    assert reap._due_warnings(c, st, d, memory, outbox) is True
    assert outbox == [(1800, [100])] and memory["warned"] == {f"100/{BOOT_AT + 10}": [1800]}
    outbox.clear()
    assert reap._due_warnings(c, st, at(c, BOOT_AT + CAP + 60, st), memory, outbox) is False and outbox == []
    assert reap._due_warnings(c, st, at(c, BOOT_AT + CAP + 1500, st), memory, outbox) is True
    assert outbox == [(300, [100])]
    assert reap._next_warning(c, at(c, BOOT_AT + CAP + 1500, st)) == 240
    gone = state()
    assert reap._due_warnings(c, gone, at(c, BOOT_AT + CAP + 1500, st), memory, []) is True
    assert memory["warned"] == {}
