"""mosh sessions from utmp: entries built with struct as glibc lays them out, checked against a fake /proc."""

import ipaddress
import os
import struct

import pytest

from reaper.config.schema import Config
from reaper.evidence import activity, mosh
from reaper.observe import Paths

# glibc's struct utmp on Linux, 384 bytes, written out field by field (independently of mosh.RECORD).
UTMP = struct.Struct("<hhi32s4s32s256shhiii16s20s")
LOGIN_PROCESS, USER_PROCESS, DEAD_PROCESS = 6, 7, 8
CFG = Config(path="test.yaml", inactivity_duration=3600)
ME = os.getuid()
CLK_TCK = os.sysconf("SC_CLK_TCK")


def record(host, pid=4242, user="dev", line="pts/3", ut_type=USER_PROCESS):
    return UTMP.pack(
        ut_type, 0, pid, line.encode(), line[-4:].encode(), user.encode(), host.encode(), 0, 0, 0, 1_764_590_000, 0,
        b"", b"",
    )  # fmt: skip


def test_the_record_layout_is_glibcs_384_bytes():
    assert UTMP.size == mosh.RECORD.size == 384


def test_parse_reads_an_attached_and_a_detached_entry_and_leaves_out_the_rest():
    data = b"".join(
        [
            record("", pid=1, user="LOGIN", line="console", ut_type=LOGIN_PROCESS),
            record("192.0.2.7", pid=300, user="alice", line="pts/0"),  # an SSH login's entry
            record("192.0.2.4 via mosh [4242]", pid=4242, user="dev", line="pts/3"),
            record("mosh [4343]", pid=4343, user="dev2", line="pts/4"),
            record("192.0.2.4 via mosh [4444]", pid=4444, ut_type=DEAD_PROCESS),
            record("mosh [not a pid]"),
        ]
    )
    assert mosh.parse(data) == [
        {"user": "dev", "line": "pts/3", "pid": 4242, "addr": "192.0.2.4", "attached": True, "entry_pid": 4242},
        {"user": "dev2", "line": "pts/4", "pid": 4343, "addr": None, "attached": False, "entry_pid": 4343},
    ]


def test_parse_reads_an_ipv6_client_and_ignores_a_trailing_partial_record():
    data = record("2001:db8::5 via mosh [77]", pid=77) + b"\0" * 100
    (entry,) = mosh.parse(data)
    assert entry["addr"] == "2001:db8::5" and entry["pid"] == 77


def test_parse_of_an_empty_file_is_empty():
    assert mosh.parse(b"") == []


@pytest.fixture
def proc(tmp_path):
    """A fake /proc with a running mosh-server (pid 4242, started at tick 123456, ours) and a bash (pid 50)."""

    def add(pid, comm, start):
        d = tmp_path / str(pid)
        d.mkdir()
        (d / "comm").write_text(comm + "\n")
        (d / "stat").write_text(f"{pid} ({comm}) S " + " ".join(["1"] * 18 + [str(start)] + ["0"] * 10) + "\n")

    add(4242, "mosh-server", 123456)
    add(50, "bash", 100)
    return tmp_path


def attached(pid=4242, user="dev", addr="192.0.2.4", entry_pid=None):
    entry_pid = pid if entry_pid is None else entry_pid
    return {"user": user, "line": "pts/3", "pid": pid, "addr": addr, "attached": True, "entry_pid": entry_pid}


def mine(user):
    return ME if user == "dev" else ME + 1


def test_an_attached_session_of_a_live_mosh_server_is_active_since_its_start(proc):
    (a,), notes = mosh.activities([attached()], CFG, str(proc), mine)
    assert notes == []
    assert (a.kind, a.id, a.holds, a.user, a.pid) == ("mosh", "4242", activity.ACTIVE, "dev", 4242)
    assert a.since == 123456 / CLK_TCK
    assert a.why == "from 192.0.2.4 on pts/3"
    assert a.until is None and a.end(1e9) is None


def test_a_detached_session_is_no_activity_and_status_says_why(proc):
    entry = dict(attached(), addr=None, attached=False)
    found, (note,) = mosh.activities([entry], CFG, str(proc), mine)
    assert found == [] and "no client attached" in note


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        (attached(pid=50), "not a running mosh-server"),
        (attached(pid=9999), "not a running mosh-server"),
        (attached(user="dev2"), "does not belong to user dev2"),
        (attached(entry_pid=50), "was made by pid 50"),
    ],
)
def test_an_entry_the_system_contradicts_is_not_taken(proc, entry, says):
    found, (note,) = mosh.activities([entry], CFG, str(proc), mine)
    assert found == [] and says in note


@pytest.mark.parametrize(
    ("cfg", "says"),
    [
        (CFG._replace(ignore_users=frozenset({"dev"})), "user dev is in ignore.users"),
        (CFG._replace(ignore_networks=(ipaddress.ip_network("192.0.2.0/24"),)), "192.0.2.4 is in ignore.networks"),
    ],
)
def test_a_session_of_an_ignored_user_or_network_does_not_count_and_the_note_says_why(proc, cfg, says):
    found, (note,) = mosh.activities([attached()], cfg, str(proc), mine)
    assert found == [] and says in note


def test_gather_reads_utmp_and_the_proc_of_paths(proc, tmp_path, monkeypatch):
    monkeypatch.setattr(mosh, "_uid_named", mine)
    utmp = tmp_path / "utmp"
    utmp.write_bytes(record("192.0.2.7", pid=300) + record("192.0.2.4 via mosh [4242]"))
    found, notes = mosh.gather(Paths("c.yaml", "/nonexistent", str(proc)), CFG, 0.0, utmp=str(utmp))
    assert [a.pid for a in found] == [4242] and notes == []


def test_gather_without_utmp_or_without_mosh_in_it_is_empty(tmp_path):
    paths = Paths("c.yaml", "/nonexistent", str(tmp_path))
    assert mosh.gather(paths, CFG, 0.0, utmp=str(tmp_path / "missing")) == ([], [])
    (tmp_path / "utmp").write_bytes(record("192.0.2.7", pid=300))
    assert mosh.gather(paths, CFG, 0.0, utmp=str(tmp_path / "utmp")) == ([], [])
