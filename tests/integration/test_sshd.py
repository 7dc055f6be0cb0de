"""The hook in a real sshd's PAM stack, the state it writes, and what `status` and `reap` make of it."""

import json
import os
import socket
import time

from tests.integration.sshd import end, free_port, idle_reaper, status, wait_for

READY = "ready"
# Holds the session until the client goes away: `read` ends when the client's stdin pipe closes.
HOLD = f"echo {READY}; read x"


def sessions_of(st, user):
    return [s for s in st["sessions"] if s["user"] == user]


def test_a_session_shows_up_in_status_by_the_time_the_login_is_done(sshd, config, state_dir):
    client = sshd.start("irt-alice", HOLD, ready=READY)
    logged_in = time.monotonic()
    st = status(config.path, state_dir)
    assert time.monotonic() - logged_in < 1.0
    (s,) = sessions_of(st, "irt-alice")
    assert (s["service"], s["rhost"], s["tty"], s["client"]) == ("sshd", "127.0.0.1", "ssh", "127.0.0.1")
    assert s["recorded"] and s["opened_seconds_ago"] <= 1
    end(client)


def test_an_interactive_session_counts(sshd, config, state_dir):
    client = sshd.start("irt-alice", HOLD, ready=READY, options=["-tt"])
    time.sleep(1.1)  # min_session is 1s
    st = status(config.path, state_dir)
    (s,) = sessions_of(st, "irt-alice")
    assert s["counted"] and s["reason"] is None
    assert st["state"] == "active" and st["idle_seconds"] == 0 and st["seconds_until_action"] is None
    end(client)


def test_a_forward_only_session_counts(sshd, config, state_dir):
    client = sshd.start("irt-alice", options=["-N", "-L", f"127.0.0.1:{free_port()}:127.0.0.1:{sshd.port}"])
    (s,) = wait_for(lambda: sessions_of(status(config.path, state_dir), "irt-alice"))
    time.sleep(1.1)
    st = status(config.path, state_dir)
    assert st["state"] == "active" and sessions_of(st, "irt-alice")[0]["counted"]
    end(client)
    wait_for(lambda: status(config.path, state_dir)["state"] == "idle")


def test_a_control_master_with_three_channels_is_one_session(sshd, config, state_dir, workdir):
    sock = os.path.join(workdir, "cm.sock")
    master = sshd.start("irt-alice", options=["-M", "-S", sock, "-N", "-o", "ControlPersist=no"])
    wait_for(lambda: os.path.exists(sock))
    channels = [sshd.start("irt-alice", HOLD, ready=READY, options=["-S", sock]) for _ in range(3)]
    st = status(config.path, state_dir)
    assert len(sessions_of(st, "irt-alice")) == 1
    with open(os.path.join(state_dir, "state.json")) as f:
        assert len(json.load(f)["leases"]) == 1
    for c in channels:
        end(c)
    end(master)
    wait_for(lambda: not sessions_of(status(config.path, state_dir), "irt-alice"))
    with open(os.path.join(state_dir, "state.json")) as f:
        recorded = json.load(f)
    assert recorded["leases"] == [] and len(recorded["closed"]) == 1


def test_a_root_session_is_recorded_and_counts(sshd, config, state_dir):
    client = sshd.start("root", HOLD, ready=READY)
    time.sleep(1.1)
    st = status(config.path, state_dir)
    (s,) = sessions_of(st, "root")
    assert s["counted"] and st["state"] == "active"
    end(client)


def test_ignored_user_network_and_key_are_shown_with_the_reason(sshd, config, state_dir, users):
    config(
        "inactivity_duration: 1h\nmin_session: 1s\n"
        "ignore:\n  users: [irt-ci]\n  networks: ['::1/128']\n"
        f"  keys: ['{users['robot'].fingerprint}']\n"
    )
    clients = [
        sshd.start("irt-ci", HOLD, ready=READY),
        sshd.start("irt-bob", HOLD, ready=READY, host="::1"),
        sshd.start("robot", HOLD, ready=READY),
    ]
    time.sleep(1.1)
    st = status(config.path, state_dir)
    reasons = {s["user"]: s["reason"] for s in st["sessions"]}
    assert reasons == {
        "irt-ci": "user irt-ci is in ignore.users",
        "irt-bob": "client ::1 is in ignore.networks (::1/128)",
        "irt-alice": f"key {users['robot'].fingerprint} is in ignore.keys",
    }
    assert not any(s["counted"] for s in st["sessions"])
    assert st["state"] == "idle"
    alice = sshd.start("irt-alice", HOLD, ready=READY)  # alice's own key counts
    time.sleep(1.1)
    st = status(config.path, state_dir)
    assert st["state"] == "active"
    assert [s["counted"] for s in sessions_of(st, "irt-alice")].count(True) == 1
    for c in [*clients, alice]:
        end(c)


def test_a_session_shorter_than_min_session_never_counts(sshd, config, state_dir):
    config("inactivity_duration: 1h\nmin_session: 5s\n")
    before = status(config.path, state_dir)
    assert sshd.run("irt-alice", "true").returncode == 0
    client = sshd.start("irt-alice", HOLD, ready=READY)
    st = status(config.path, state_dir)
    (s,) = sessions_of(st, "irt-alice")
    assert not s["counted"] and s["pending"] and "shorter than min_session 5s" in s["reason"]
    end(client)
    wait_for(lambda: not status(config.path, state_dir)["sessions"])
    after = status(config.path, state_dir)
    assert after["state"] == "idle" and after["last_activity"] == before["last_activity"] == "boot"


def test_after_the_last_close_it_turns_idle_and_reap_acts_when_due(sshd, config, state_dir, workdir):
    marker = os.path.join(workdir, "acted")
    config(f'inactivity_duration: 3s\nmin_session: 1s\naction: ["/bin/sh", "-c", "date +%s.%N > {marker}"]\n')
    client = sshd.start("irt-alice", HOLD, ready=READY)
    time.sleep(1.2)
    assert idle_reaper(config.path, state_dir, "reap").returncode == 0
    assert status(config.path, state_dir)["state"] == "active"
    end(client)
    st = wait_for(lambda: (s := status(config.path, state_dir))["state"] == "idle" and s)
    assert 0 < st["seconds_until_action"] <= 3 and "irt-alice" in st["last_activity"]
    closed_at = time.time() - st["idle_seconds"]
    assert idle_reaper(config.path, state_dir, "reap").returncode == 0
    assert not os.path.exists(marker), "acted before the deadline"
    done = idle_reaper(config.path, state_dir, "reap", "--wait", "10")
    assert done.returncode == 0, done.stderr
    with open(marker) as f:
        acted = float(f.read())
    assert acted - closed_at >= 3 - 1  # idle_seconds is floored to whole seconds in the JSON
    st = status(config.path, state_dir)
    assert st["blocked"] == "the action already ran for this idle period" and st["action_ran_at"]
    os.unlink(marker)
    assert idle_reaper(config.path, state_dir, "reap").returncode == 0
    assert not os.path.exists(marker), "the action ran twice for one idle period"


def test_status_works_for_a_non_root_user(sshd, config, state_dir):
    client = sshd.start("irt-alice", HOLD, ready=READY)
    time.sleep(1.1)
    as_root = status(config.path, state_dir)
    as_bob = status(config.path, state_dir, user="irt-bob")
    assert as_bob["state"] == as_root["state"] == "active"
    assert [s["user"] for s in as_bob["sessions"]] == ["irt-alice"]
    # Every connection to sshd is a lease's own, so even a non-root reader can tell nothing is unrecorded.
    assert as_bob["live_check"] == {"complete": True, "note": None}
    text = idle_reaper(config.path, state_dir, "status", user="irt-bob")
    assert text.returncode == 0 and "State:     active" in text.stdout and "irt-alice" in text.stdout
    with socket.create_connection(("127.0.0.1", sshd.port)) as unexplained:  # sshd's processes serve it
        unexplained.recv(100)
        as_bob = status(config.path, state_dir, user="irt-bob")
        assert as_bob["live_check"]["complete"] is False and "root" in as_bob["live_check"]["note"]
        assert status(config.path, state_dir)["live_check"]["complete"] is True
    end(client)
