"""Inhibitors: the config keys, reading the directory (what is refused and why), the hold's end and cap, the tick's
tidying and wake-up. The files here are the test user's own; owners and real users are tests/integration's."""

import os
import subprocess
import sys
import time

import pytest

from reaper import clock, decision
from reaper.commands import reap
from reaper.config import parse, schema
from reaper.errors import ConfigError
from reaper.evidence import activity
from reaper.evidence import inhibitors as evidence
from reaper.evidence.ssh import Evidence
from reaper.observe import Paths
from reaper.state import inhibitors as files

BOOT = clock.boot_key()


def cfg(**kw):
    return schema.Config(path="c.yaml", inactivity_duration=60, **kw)


@pytest.fixture
def paths(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    files.ensure_dir(str(state))
    return Paths(config=str(tmp_path / "c.yaml"), state_dir=str(state))


def record(**kw):
    now = clock.now()
    base = {"format": 1, "boot": BOOT, "how": "for", "why": "because", "since": now - 1, "until": now + 100,
            "pid": None, "pid_start": None, "ended": None}  # fmt: skip
    return {**base, **kw}


def put(paths, rec=None, ident=None):
    ident = ident or files.new_id()
    files.write(paths.state_dir, ident, rec or record())
    return ident


def inhibitor_dir(paths):
    return files.dir_path(paths.state_dir)


# --- config ---------------------------------------------------------------------------------------------------


def test_max_inhibit_defaults_to_a_day_and_may_be_off_or_a_duration():
    assert parse.parse("c", "inactivity_duration: 1h\n").max_inhibit == 86400
    assert parse.parse("c", "inactivity_duration: 1h\nmax_inhibit: off\n").max_inhibit is None
    assert parse.parse("c", "inactivity_duration: 1h\nmax_inhibit: 90m\n").max_inhibit == 5400
    with pytest.raises(ConfigError, match=r"c:2: max_inhibit: .*allowed: off \(no limit\)"):
        parse.parse("c", "inactivity_duration: 1h\nmax_inhibit: 0\n")


def test_may_inhibit_is_everyone_root_or_a_list_of_groups():
    assert parse.parse("c", "inactivity_duration: 1h\n").may_inhibit == "everyone"
    assert parse.parse("c", "inactivity_duration: 1h\nmay_inhibit: root\n").may_inhibit == "root"
    assert parse.parse("c", "inactivity_duration: 1h\nmay_inhibit: [dev, ops]\n").may_inhibit == ("dev", "ops")
    for bad in ("nobody", "[]", "{a: 1}", "[1]"):
        with pytest.raises(ConfigError, match="may_inhibit"):
            parse.parse("c", f"inactivity_duration: 1h\nmay_inhibit: {bad}\n")


def test_the_kept_parse_keeps_both_keys(tmp_path):
    from reaper import config

    path = tmp_path / "c.yaml"
    path.write_text("inactivity_duration: 1h\nmax_inhibit: off\nmay_inhibit: [dev]\n")
    state = tmp_path / "s"
    state.mkdir()
    first = config.load(str(path), cache_dir=str(state), keep=True)
    again = config.load(str(path), cache_dir=str(state))
    assert first == again and again.max_inhibit is None and again.may_inhibit == ("dev",)


def test_may_inhibit_root_refuses_everyone_but_root_and_groups_admit_their_members():
    assert evidence.may_inhibit(cfg(may_inhibit="root"), 0) is None
    assert "root" in evidence.may_inhibit(cfg(may_inhibit="root"), 65534)
    assert evidence.may_inhibit(cfg(may_inhibit=("nogroup",)), 65534) is None  # nobody's primary group
    assert "may_inhibit lists" in evidence.may_inhibit(cfg(may_inhibit=("no-such-group-x",)), 65534)


# --- reading the directory ------------------------------------------------------------------------------------


def test_a_written_inhibitor_holds_and_the_state_is_inhibited(paths):
    ident = put(paths, record(why="train\x1b[31m"))
    found, notes = evidence.gather(paths, cfg(), clock.now())
    assert notes == []
    (a,) = found
    assert (a.kind, a.id, a.holds, a.why, a.capped) == ("inhibitor", ident, activity.INHIBIT, "train\x1b[31m", False)
    now = clock.now()
    d = decision.decide(cfg(), now, 0.0, None, Evidence([], [], checked=True), activities=found)
    assert d.state == decision.INHIBITED and "\x1b" not in d.reason and "\\x1b" in d.reason
    assert 90 < d.next_check <= 100


def test_the_cap_ends_an_inhibitor_max_inhibit_after_it_began(paths):
    now = clock.now()
    put(paths, record(since=now - 50, until=now + 1000))
    (a,) = evidence.gather(paths, cfg(max_inhibit=60), now)[0]
    assert a.capped and a.until == pytest.approx(now + 10)
    (a,) = evidence.gather(paths, cfg(max_inhibit=None), now)[0]
    assert not a.capped and a.until == pytest.approx(now + 1000)
    (a,) = evidence.gather(paths, cfg(max_inhibit=40), now)[0]
    assert a.end(now) == pytest.approx(now - 10), "past its cap it has ended, at the cap"


def test_an_end_or_a_start_in_the_future_is_refused_not_believed(paths):
    now = clock.now()
    put(paths, record(ended=now + 3600))
    put(paths, record(since=now + 3600))
    found, notes = evidence.gather(paths, cfg(), now)
    assert found == []
    assert "ends in the future" in notes[0] and "begins in the future" in notes[0]


def test_an_end_written_by_the_holder_is_when_it_ended_and_counts_as_activity(paths):
    now = clock.now()
    put(paths, record(since=now - 30, until=None, ended=now - 5))
    found, _ = evidence.gather(paths, cfg(), now)
    d = decision.decide(cfg(), now, 0.0, None, Evidence([], [], checked=True), activities=found)
    assert d.state == decision.IDLE and d.idle_since == pytest.approx(now - 5)
    assert "ended" in d.last_activity


def test_a_zombie_has_ended_whoever_is_to_reap_it(paths):
    child = subprocess.Popen(["true"])
    try:
        start = evidence.monitor.stat_fields(child.pid)[19]
        put(paths, record(how="pid", until=None, pid=child.pid, pid_start=int(start)))
        give_up = time.monotonic() + 5
        while evidence.monitor.stat_fields(child.pid)[0] != b"Z" and time.monotonic() < give_up:
            time.sleep(0.01)
        now = clock.now()
        (a,) = evidence.gather(paths, cfg(), now)[0]
        assert a.end(now) == now, "exited, not yet reaped: it has ended"
    finally:
        child.wait()


def test_an_inhibitor_following_a_process_lasts_while_it_runs_and_a_reused_pid_does_not_extend_it(paths):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        start = clock.process_start_ticks(child.pid)
        put(paths, record(how="pid", until=None, pid=child.pid, pid_start=start))
        put(paths, record(how="pid", until=None, pid=child.pid, pid_start=start - 1))  # an earlier process's
        now = clock.now()
        found, _ = evidence.gather(paths, cfg(), now)
        lasting = [a for a in found if a.end(now) is None]
        assert len(found) == 2 and len(lasting) == 1 and lasting[0].pid == child.pid and lasting[0].capped
        assert [a.end(now) for a in found if a not in lasting] == [now], "seen gone: it ended when first seen gone"
    finally:
        child.kill()
        child.wait()
    now = clock.now()
    assert all(a.end(now) == now for a in evidence.gather(paths, cfg(), now)[0])


@pytest.mark.parametrize(
    "make, why",
    [
        (lambda d: os.symlink("/etc/shadow", os.path.join(d, "aaaaaaaaaaaa.json")), "symbolic link"),
        (lambda d: os.mkfifo(os.path.join(d, "bbbbbbbbbbbb.json")), "FIFO"),
        (lambda d: open(os.path.join(d, "cccccccccccc.json"), "wb").write(b" " * 10**6), "too large"),
        (lambda d: open(os.path.join(d, "dddddddddddd.json"), "w").write("{nope"), "not valid JSON"),
        (lambda d: open(os.path.join(d, "eeeeeeeeeeee.json"), "w").write('{"format": 1}'), "missing"),
        (lambda d: open(os.path.join(d, "hello"), "w").close(), "named"),
        (lambda d: os.mkdir(os.path.join(d, "ffffffffffff.json")), "a directory"),
    ],
)
def test_hostile_files_are_refused_with_a_reason_and_crash_nothing(paths, make, why):
    good = put(paths)
    make(inhibitor_dir(paths))
    found, notes = evidence.gather(paths, cfg(), clock.now())
    assert [a.id for a in found] == [good]
    assert len(notes) == 1 and why in notes[0], notes


def test_a_hard_link_a_file_others_may_write_and_one_of_another_boot_are_refused(paths):
    d = inhibitor_dir(paths)
    one = put(paths)
    os.link(os.path.join(d, f"{one}.json"), os.path.join(d, "aaaaaaaaaaaa.json"))
    two = put(paths)
    os.chmod(os.path.join(d, f"{two}.json"), 0o666)
    put(paths, record(boot="another/1"))
    found, notes = evidence.gather(paths, cfg(), clock.now())
    assert found == []
    for why in ("hard links", "others may write it", "another boot"):
        assert why in notes[0], notes


def test_a_flood_is_refused_past_the_per_user_limit_and_the_tick_removes_it(paths):
    for _ in range(files.MAX_PER_USER + 40):
        put(paths)
    found, notes = evidence.gather(paths, cfg(), clock.now())
    assert len(found) == files.MAX_PER_USER
    assert "refused 40 file(s): 40 more than 16 inhibitors of one user (" in notes[0]
    evidence.tidy(paths, found, clock.now())
    assert len(os.listdir(inhibitor_dir(paths))) == files.MAX_PER_USER


def test_hostile_why_text_is_escaped_in_status_and_the_reason(paths, monkeypatch):
    from reaper.commands import status

    put(paths, record(why="\x1b]0;pwned\x07\nState: idle"))
    (paths_file := open(paths.config, "w")).write("inactivity_duration: 1h\n")
    paths_file.close()
    view = status.build(paths, cfg())
    text = status.render(view)
    assert "\x1b" not in text and "\x07" not in text and "\nState: idle" not in text
    assert view["inhibitors"][0]["why"] == "\x1b]0;pwned\x07\nState: idle", "JSON carries it as it is, encoded"


# --- the tick -------------------------------------------------------------------------------------------------


def test_tidy_removes_ended_and_refused_files_and_stale_temps_and_keeps_what_holds(paths, monkeypatch):
    now = clock.now()
    holds = put(paths)
    ended = put(paths, record(ended=now - 1))
    d = inhibitor_dir(paths)
    os.symlink("/etc/passwd", os.path.join(d, "aaaaaaaaaaaa.json"))
    temp = os.path.join(d, ".x.1.tmp")
    open(temp, "w").close()
    os.utime(temp, (2**40, 2**40))  # its owner can set mtime, not ctime: the ctime says how old it is
    fresh = os.path.join(d, ".y.1.tmp")
    open(fresh, "w").close()
    found, _ = evidence.gather(paths, cfg(), now)
    evidence.tidy(paths, found, now)
    assert sorted(os.listdir(d)) == sorted([f"{holds}.json", ".x.1.tmp", ".y.1.tmp"]), "writes under way"
    real_time = time.time
    monkeypatch.setattr(evidence.time, "time", lambda: real_time() + files.STALE_TEMP + 1)
    evidence.tidy(paths, found, now)
    assert sorted(os.listdir(d)) == [f"{holds}.json"], "a minute later they are stale"
    assert ended not in os.listdir(d)


def test_tidy_makes_the_directory_sticky_and_world_writable(paths):
    os.rmdir(inhibitor_dir(paths))
    old = os.umask(0o077)
    try:
        evidence.tidy(paths, [], clock.now())
    finally:
        os.umask(old)
    assert os.stat(inhibitor_dir(paths)).st_mode & 0o7777 == 0o1777


def test_a_world_writable_directory_that_is_not_sticky_is_refused(paths):
    os.chmod(inhibitor_dir(paths), 0o777)
    put_fails = pytest.raises(files.InhibitorError, match="unsafe")
    with put_fails:
        put(paths)
    found, notes = evidence.gather(paths, cfg(), clock.now())
    assert found == [] and "unsafe" in notes[0]


def test_a_waiting_tick_wakes_when_an_inhibitor_begins_or_ends(paths):
    from reaper.state import leases

    leases.write_state(paths.state_dir, leases.empty_state(BOOT))
    before = reap._stamp(paths.state_dir)
    ident = put(paths)
    after = reap._stamp(paths.state_dir)
    assert after != before
    files.write(paths.state_dir, ident, record(ended=clock.now()), replace_ino=True)
    assert reap._stamp(paths.state_dir) != after


def test_a_why_too_long_for_the_file_is_refused_when_written(paths):
    with pytest.raises(files.InhibitorError, match="more than 4096"):
        put(paths, record(why="\U0001f600" * files.MAX_WHY))


def test_a_rewrite_never_brings_back_a_released_inhibitor(paths):
    ident = put(paths)
    files.remove(paths.state_dir, [f"{ident}.json"])
    assert files.write(paths.state_dir, ident, record(ended=clock.now()), replace_ino=True) is None
    assert os.listdir(inhibitor_dir(paths)) == []
