"""The state file: format, atomic writes, modes, locking, matching closes, pruning without loss."""

import os
import random
import stat
import subprocess
import time

import filelock
import pytest

from reaper.state import leases, statejson
from tests.conftest import REPO

BOOT = "boot-a/10"


@pytest.fixture
def state_dir(tmp_path):
    d = tmp_path / "state"
    leases.ensure_dir(str(d))
    return str(d)


def lease(pid=100, user="alice", opened=10.0, **kw):
    record = {"user": user, "uid": 1000, "service": "sshd", "rhost": "192.0.2.4", "tty": "ssh",
              "conn": f"192.0.2.4 {40000 + pid} 127.0.0.1 22", "client": "192.0.2.4", "client_port": 40000 + pid,
              "server": "127.0.0.1", "server_port": 22, "key": None, "pid": pid, "pid_start": 7,
              "opened": opened, "boot": BOOT, "source": "hook"}  # fmt: skip
    record.update(kw)
    return record


def test_missing_file_reads_as_none(state_dir):
    assert leases.read_state(state_dir) is None


def test_write_then_read_with_the_modes_design_md_gives(state_dir):
    st = leases.empty_state(BOOT)
    leases.add_lease(st, lease())
    with leases.FlockLock(state_dir, 1):
        leases.write_state(state_dir, st)
    assert leases.read_state(state_dir) == st
    assert stat.S_IMODE(os.stat(state_dir).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(leases.state_path(state_dir)).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(leases.lock_path(state_dir)).st_mode) == 0o600
    assert sorted(os.listdir(state_dir)) == ["state.json", "state.lock"]


def test_modes_hold_even_under_a_permissive_umask(state_dir):
    old = os.umask(0)
    try:
        os.unlink(leases.lock_path(state_dir)) if os.path.exists(leases.lock_path(state_dir)) else None
        with leases.FlockLock(state_dir, 1):
            leases.write_state(state_dir, leases.empty_state(BOOT))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(leases.state_path(state_dir)).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(leases.lock_path(state_dir)).st_mode) == 0o600


def test_a_wrong_lock_file_mode_is_repaired(state_dir):
    path = leases.lock_path(state_dir)
    with open(path, "w"):
        pass
    os.chmod(path, 0o666)
    with leases.FlockLock(state_dir, 1):
        pass
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_an_unsafe_state_dir_is_refused(tmp_path):
    d = tmp_path / "open"
    d.mkdir()
    os.chmod(d, 0o777)
    with pytest.raises(leases.StateError, match="unsafe"):
        leases.ensure_dir(str(d))


def test_a_symlinked_state_dir_is_refused(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    with pytest.raises(leases.StateError, match="not a directory"):
        leases.ensure_dir(str(tmp_path / "link"))


CORRUPT = {
    "truncated": b'{"format":1,"boot":"x","leases":[{"us',
    "garbage": b"\x00\x01garbage\xff",
    "empty": b"",
    "future version": b'{"format":2,"boot":"x","leases":[],"closed":[]}',
    "list": b"[]",
    "wrong shape": b'{"format":1,"boot":"x","leases":{},"closed":[]}',
    "bad lease": b'{"format":1,"boot":"x","leases":[{"opened":"yesterday"}],"closed":[]}',
    "closed without time": b'{"format":1,"boot":"x","leases":[],"closed":[{"opened":1}]}',
}


@pytest.mark.parametrize("name", sorted(CORRUPT))
def test_a_corrupt_or_foreign_file_raises_state_error(state_dir, name):
    with open(leases.state_path(state_dir), "wb") as f:
        f.write(CORRUPT[name])
    with pytest.raises(leases.StateError):
        leases.read_state(state_dir)


def test_a_directory_in_place_of_the_file_raises_state_error(state_dir):
    os.mkdir(leases.state_path(state_dir))
    with pytest.raises(leases.StateError, match="not a regular file"):
        leases.read_state(state_dir)


def test_a_fifo_in_place_of_the_file_does_not_hang(state_dir):
    os.mkfifo(leases.state_path(state_dir))
    with pytest.raises(leases.StateError, match="not a regular file"):
        leases.read_state(state_dir)


def test_state_of_another_boot_is_dropped():
    old = leases.empty_state("boot-old/10")
    leases.add_lease(old, lease(boot="boot-old/10"))
    assert leases.current(old, BOOT) == leases.empty_state(BOOT)


def test_a_lease_of_another_boot_is_dropped_from_a_current_file():
    st = leases.empty_state(BOOT)
    st["leases"] = [lease(pid=1), lease(pid=2, boot="boot-old/10")]
    assert [x["pid"] for x in leases.current(st, BOOT)["leases"]] == [1]


def test_close_moves_the_matching_lease_only():
    st = leases.empty_state(BOOT)
    for pid in (1, 2, 3):
        leases.add_lease(st, lease(pid=pid))
    assert leases.close_lease(st, lease(pid=2, opened=999.0), 50.0, "hook")
    assert [x["pid"] for x in st["leases"]] == [1, 3]
    (rec,) = st["closed"]
    assert (rec["pid"], rec["opened"], rec["closed"], rec["end"]) == (2, 10.0, 50.0, "hook")


def test_a_close_with_no_recorded_open_is_still_recorded():
    st = leases.empty_state(BOOT)
    assert not leases.close_lease(st, lease(pid=9), 50.0, "hook")
    assert st["closed"][0]["opened"] is None and st["leases"] == []


def test_the_same_pid_with_another_start_time_is_another_session():
    st = leases.empty_state(BOOT)
    leases.add_lease(st, lease(pid=5, pid_start=100))
    assert not leases.close_lease(st, lease(pid=5, pid_start=200), 50.0, "hook")
    assert len(st["leases"]) == 1


def latest_counted(records, min_session, ignored_users):
    best = None
    for r in records:
        if r["user"] in ignored_users:
            continue
        length = float("inf") if r["opened"] is None else r["closed"] - r["opened"]
        if length >= min_session and (best is None or r["closed"] > best):
            best = r["closed"]
    return best


def test_folding_never_loses_the_latest_counted_activity_under_any_policy():
    rng = random.Random(1234)
    for _ in range(300):
        st = leases.empty_state(BOOT)
        for i in range(rng.randint(1, 40)):
            opened = rng.choice([None] + [float(rng.randint(0, 100)) for _ in range(5)])
            closed = (opened or 0.0) + rng.randint(0, 30)
            user = rng.choice(["alice", "bob", "ci"])
            st["closed"].append(dict(lease(pid=i, user=user, opened=opened), closed=closed, end="hook"))
        before = list(st["closed"])
        leases.fold_closed(st)
        assert len(st["closed"]) <= len(before)
        for min_session in (0, 1, 5, 10, 20, 31):
            for ignored in (set(), {"alice"}, {"alice", "bob"}, {"bob", "ci"}):
                assert latest_counted(st["closed"], min_session, ignored) == latest_counted(
                    before, min_session, ignored
                )


def test_folding_keeps_the_closed_list_short():
    st = leases.empty_state(BOOT)
    for i in range(1000):
        leases.close_lease(st, lease(pid=i, opened=float(i)), float(i) + 5, "hook")
    assert len(st["closed"]) == 1 and st["closed"][0]["closed"] == 1004.0


def closed_from(n, first=0, user="alice", length=30.0):
    """n closed records of distinct clients (so folding keeps every one), ending 1 s apart."""
    out = []
    for pid in range(first, first + n):
        record = lease(pid=pid, user=user, opened=float(pid))
        out.append(dict(record, client=f"10.0.{pid // 250}.{pid % 250}", closed=float(pid) + length, end="hook"))
    return out


def test_the_cap_keeps_the_newest_closed_records():
    st = leases.empty_state(BOOT)
    st["closed"] = closed_from(1500)
    assert leases.cap_closed(st, lambda r: True) == 500
    assert len(st["closed"]) == 1000 and st["closed"][0]["pid"] == 500 and st["closed"][-1]["pid"] == 1499


def test_the_cap_never_loses_the_latest_counted_activity():
    st = leases.empty_state(BOOT)
    st["closed"] = closed_from(1, user="alice") + closed_from(3000, first=1, user="ci")
    leases.cap_closed(st, lambda r: r["user"] != "ci")  # ci is ignored: alice's is the latest counted
    assert len(st["closed"]) == 1000
    assert st["closed"][0]["user"] == "alice" and st["closed"][-1]["pid"] == 3000


def test_without_a_policy_the_cap_keeps_more_but_still_bounds():
    st = leases.empty_state(BOOT)
    st["closed"] = closed_from(6000)
    leases.cap_closed(st, None)
    assert len(st["closed"]) == 5000 and st["closed"][-1]["pid"] == 5999


def test_stale_temp_files_are_removed(state_dir):
    junk = os.path.join(state_dir, "state.json.999.tmp")
    with open(junk, "w") as f:
        f.write("{")
    young_pending = os.path.join(state_dir, "pending.00000000000000000001.5.json.9.tmp")
    old_pending = os.path.join(state_dir, "pending.00000000000000000002.6.json.9.tmp")
    for path in (young_pending, old_pending):
        with open(path, "w") as f:
            f.write("{")
    os.utime(old_pending, (time.time() - 120, time.time() - 120))
    leases.remove_stale_temps(state_dir, time.time())
    assert not os.path.exists(junk) and not os.path.exists(old_pending)
    assert os.path.exists(young_pending), "a lock-free pending writer may still be writing it"


def test_set_aside_keeps_the_bad_file_and_bounds_how_many(state_dir):
    for i in range(leases.KEEP_BAD + 3):
        with open(leases.state_path(state_dir), "w") as f:
            f.write(f"bad {i}")
        bad = leases.set_aside(state_dir, 1000 + i)
        os.utime(bad, (i, i))
    kept = sorted(n for n in os.listdir(state_dir) if ".bad-" in n)
    assert len(kept) == leases.KEEP_BAD
    with open(os.path.join(state_dir, kept[-1])) as f:
        assert f.read() == f"bad {leases.KEEP_BAD + 2}"


# --- locking: the hook's flock and filelock are one lock ------------------------------------------------


def test_filelock_holder_blocks_the_hook_lock_which_gives_up_in_time(state_dir):
    with filelock.FileLock(leases.lock_path(state_dir), timeout=1):
        start = time.monotonic()
        with pytest.raises(leases.LockTimeout), leases.FlockLock(state_dir, 0.3):
            pass
        assert time.monotonic() - start < 1.0


def test_hook_lock_holder_blocks_filelock(state_dir):
    with leases.FlockLock(state_dir, 1), pytest.raises(filelock.Timeout):
        filelock.FileLock(leases.lock_path(state_dir), timeout=0.2).acquire()


def test_debians_filelock_and_the_hook_lock_exclude_each_other(state_dir):
    # The reaper's lock as the reaper makes it, on Debian's filelock (3.9 on bookworm, 3.18 on trixie).
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); import filelock; from reaper.commands import reap\n"
        "l = reap.file_lock(sys.argv[1], 0.2)\n"
        "try:\n l.acquire(); print('acquired', filelock.__version__)\n"
        "except filelock.Timeout: print('timeout', filelock.__version__)\n"
    )
    with leases.FlockLock(state_dir, 1):
        done = subprocess.run(["/usr/bin/python3", "-I", "-c", code, leases.lock_path(state_dir)],
                              capture_output=True, text=True, check=True)  # fmt: skip
        out = done.stdout.split()
        # Waiting, it left the mode alone: 3.18 with its default mode would have made it 0644 here.
        assert stat.S_IMODE(os.stat(leases.lock_path(state_dir)).st_mode) == 0o600
    # Nothing on stderr, which is the journal in the unit: a FileLock whose __init__ failed (3.9 given a mode)
    # complains from its __del__.
    assert done.stderr == ""
    debian = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "python3-filelock"], capture_output=True,
                            text=True, check=True).stdout  # fmt: skip
    assert out[0] == "timeout" and debian.startswith(out[1]), (out, debian)  # 3.9 on bookworm, 3.18 on trixie
    out = subprocess.run(["/usr/bin/python3", "-I", "-c", code, leases.lock_path(state_dir)],
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert out[0] == "acquired"
    assert stat.S_IMODE(os.stat(leases.lock_path(state_dir)).st_mode) == 0o600


def test_what_is_written_is_plain_json(state_dir):
    st = leases.empty_state(BOOT)
    leases.add_lease(st, lease(user="x\n\x1b[31m"))
    with leases.FlockLock(state_dir, 1):
        leases.write_state(state_dir, st)
    import json

    with open(leases.state_path(state_dir)) as f:
        assert json.load(f) == st
    with open(leases.state_path(state_dir), "rb") as f:
        assert statejson.loads(f.read().decode()) == st


@pytest.mark.parametrize(
    "field, value",
    [("user", 5), ("client", [1]), ("client_port", "22"), ("opened", True), ("pid", 1.5), ("key", {}),
     ("pid_start", "7"), ("closed", "late"), ("boot", 3)],
)  # fmt: skip
def test_a_record_field_of_the_wrong_type_makes_the_file_unusable(state_dir, field, value):
    st = leases.empty_state(BOOT)
    record = dict(lease(), closed=20.0, end="hook")
    record[field] = value
    st["closed"].append(record)
    with open(leases.state_path(state_dir), "w") as f:
        f.write(statejson.dumps(st))
    with pytest.raises(leases.StateError, match=rf"closed\[0\]\.{field} is"):
        leases.read_state(state_dir)


# --- pending events: written without the lock, folded in exactly once ---------------------------------------


def test_a_pending_open_is_seen_by_readers_and_folded_in_by_the_next_writer(state_dir):
    name = leases.write_pending(state_dir, "open", lease(pid=1), 10.0)
    assert stat.S_IMODE(os.stat(os.path.join(state_dir, name)).st_mode) == 0o644
    assert [x["pid"] for x in leases.load(state_dir, BOOT)["leases"]] == [1]
    assert os.path.exists(os.path.join(state_dir, name)), "readers change nothing"
    with leases.FlockLock(state_dir, 1):
        state = leases.load(state_dir, BOOT)
        leases.add_lease(state, lease(pid=2))
        leases.commit(state_dir, state)
    assert not os.path.exists(os.path.join(state_dir, name))
    assert [x["pid"] for x in leases.read_state(state_dir)["leases"]] == [1, 2]


def test_pending_events_apply_in_time_order(state_dir):
    leases.write_pending(state_dir, "close", lease(pid=1), 20.0)
    leases.write_pending(state_dir, "open", lease(pid=1), 10.0)
    state = leases.load(state_dir, BOOT)
    assert state["leases"] == [] and state["closed"][0]["opened"] == 10.0 and state["closed"][0]["closed"] == 20.0


def test_a_writer_killed_before_deleting_pending_files_does_not_apply_them_twice(state_dir):
    name = leases.write_pending(state_dir, "open", lease(pid=1), 10.0)
    with leases.FlockLock(state_dir, 1):
        state = leases.load(state_dir, BOOT)
        leases.write_state(state_dir, state)  # as commit() does, but killed before the deletes
    assert os.path.exists(os.path.join(state_dir, name))
    assert len(leases.load(state_dir, BOOT)["leases"]) == 1, "a reader must not count it twice"
    with leases.FlockLock(state_dir, 1):
        state = leases.load(state_dir, BOOT)
        leases.commit(state_dir, state)
    assert len(leases.read_state(state_dir)["leases"]) == 1 and not os.path.exists(os.path.join(state_dir, name))
    with leases.FlockLock(state_dir, 1):
        leases.commit(state_dir, leases.load(state_dir, BOOT))
    assert leases.read_state(state_dir)["merged"] == []


def test_pending_events_of_another_boot_or_unusable_are_dropped(state_dir):
    leases.write_pending(state_dir, "open", lease(pid=1, boot="other/1"), 10.0)
    with open(os.path.join(state_dir, "pending.00000000000000000005.1.json"), "w") as f:
        f.write("{nope")
    with leases.FlockLock(state_dir, 1):
        state = leases.load(state_dir, BOOT)
        assert state["leases"] == [] and len(state["merged"]) == 2
        leases.commit(state_dir, state)
    assert not [n for n in os.listdir(state_dir) if n.startswith("pending.")]


def test_the_hook_records_a_pending_event_when_the_lock_is_busy(state_dir):
    import subprocess

    from tests.conftest import HOOK_ARGV

    env = {"PAM_TYPE": "open_session", "PAM_USER": "root", "PAM_SERVICE": "sshd",
           "SSH_CONNECTION": "127.0.0.1 5 127.0.0.1 22"}  # fmt: skip
    with filelock.FileLock(leases.lock_path(state_dir), timeout=1):
        start = time.monotonic()
        subprocess.run([*HOOK_ARGV, "--state-dir", state_dir], env=env, check=True)
        assert time.monotonic() - start < 2.0
        assert [n for n in os.listdir(state_dir) if n.startswith("pending.")]
    (found,) = leases.load(state_dir, leases.read_state(state_dir)["boot"] if leases.read_state(state_dir) else
                           __import__("reaper.clock").clock.boot_key())["leases"]  # fmt: skip
    assert (found["user"], found["pid"]) == ("root", os.getpid())


def test_the_hook_records_a_pending_event_when_the_state_is_unusable(state_dir):
    import subprocess

    from reaper import clock
    from tests.conftest import HOOK_ARGV

    with open(leases.state_path(state_dir), "w") as f:
        f.write("{corrupt")
    env = {"PAM_TYPE": "open_session", "PAM_USER": "root", "PAM_SERVICE": "sshd"}
    subprocess.run([*HOOK_ARGV, "--state-dir", state_dir], env=env, check=True)
    with open(leases.state_path(state_dir)) as f:
        assert f.read() == "{corrupt", "the hook leaves the unusable file for the reaper to set aside"
    os.rename(leases.state_path(state_dir), leases.state_path(state_dir) + ".bad-1")
    assert len(leases.load(state_dir, clock.boot_key())["leases"]) == 1


def test_ending_many_stale_leases_is_one_pass_with_the_right_times():
    st = leases.empty_state(BOOT)
    for pid in range(2000):
        leases.add_lease(st, lease(pid=pid, opened=float(pid % 7)))
    flags = [pid % 3 != 0 for pid in range(2000)]
    assert leases.end_leases(st, flags, 100.0) == 667
    assert len(st["leases"]) == 1333 and all(x["pid"] % 3 for x in st["leases"])
    assert st["closed"] and all(r["closed"] == 100.0 and r["end"] == "stale" for r in st["closed"])


def test_in_a_container_the_boot_is_named_by_pid_1s_namespace_not_the_boot_id(tmp_path):
    from reaper import clock

    marker = tmp_path / "container"
    metal = clock.boot_key(container_file=str(marker))
    marker.write_text("systemd-nspawn\n")
    inside = clock.boot_key(container_file=str(marker))
    start = clock.process_start_ticks(1)
    assert metal == f"{clock.boot_id()}/{start}"
    assert inside == f"pidns:{os.stat('/proc/self/ns/pid').st_ino}/{start}" and clock.boot_id() not in inside


def test_the_hooks_open_replaces_a_lease_the_reaper_recorded_for_the_same_process():
    st = leases.empty_state(BOOT)
    adopted = dict(lease(pid=7, pid_start=70, service=None, key=None), source="live")
    other = dict(lease(pid=8, pid_start=80), source="live")
    st["leases"] = [adopted, other]
    hooks = dict(lease(pid=7, pid_start=70, key="SHA256:x"), source="hook")
    leases.add_lease(st, hooks)
    assert st["leases"] == [other, hooks]
