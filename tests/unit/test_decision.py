"""The decision table. decide() is pure: config, clock, state and live evidence in; a Decision out."""

import ipaddress

import pytest

from reaper import decision
from reaper.config.schema import Config
from reaper.evidence.activity import ACTIVE, INHIBIT, Activity
from reaper.evidence.ssh import Evidence, LiveSession

BOOT = "b/1"
HOUR = 3600
KEY = "SHA256:" + "A" * 43


def cfg(**kw):
    kw.setdefault("inactivity_duration", HOUR)
    kw.setdefault("min_session", 10)
    return Config(path="test.yaml", **kw)


def lease(user="alice", opened=0.0, client="192.0.2.4", port=40000, pid=100, service="sshd", key=None, **kw):
    record = {
        "user": user, "uid": 1000, "service": service, "rhost": client, "tty": "ssh",
        "conn": f"{client} {port} 127.0.0.1 22", "client": client, "client_port": port,
        "server": "127.0.0.1", "server_port": 22, "key": key, "pid": pid, "pid_start": 5,
        "opened": opened, "boot": BOOT, "source": "hook",
    }  # fmt: skip
    record.update(kw)
    return record


def closed(closed_at, **kw):
    return dict(lease(**kw), closed=closed_at, end="hook")


def state(open_=(), closed_=(), lost=None, reaper=None):
    return {"format": 1, "boot": BOOT, "leases": list(open_), "closed": list(closed_), "lost": lost,
            "reaper": reaper or {}}  # fmt: skip


def evidence(live=None, sessions=(), checked=True, n=0):
    return Evidence(set(), [True] * n if live is None else list(live), list(sessions), checked,
                    None if checked else "needs root")  # fmt: skip


def decide(config, now, st, ev=None, boot_started=0.0, problem=None):
    ev = ev if ev is not None else evidence(n=len(st["leases"]) if st else 0)
    return decision.decide(config, now, boot_started, st, ev, problem)


# --- the threshold ------------------------------------------------------------------------------------


def test_nobody_ever_connected_one_second_before_the_deadline():
    d = decide(cfg(), 3599, state())
    assert (d.state, d.act, d.idle_seconds, d.seconds_until_action) == ("idle", False, 3599, 1)
    assert d.last_activity == "boot"


def test_nobody_ever_connected_at_the_deadline_acts():
    d = decide(cfg(), 3600, state())
    assert (d.state, d.act, d.seconds_until_action, d.blocked) == ("idle", True, 0, None)


def test_missing_state_file_is_normal_and_counts_from_boot():
    d = decide(cfg(), 5000, None, evidence(), boot_started=2000)
    assert (d.state, d.idle_seconds, d.act) == ("idle", 3000, False)
    assert decide(cfg(), 5600, None, evidence(), boot_started=2000).act


def test_idle_is_measured_from_the_end_of_the_last_counted_session():
    st = state(closed_=[closed(100, opened=50), closed(400, opened=300, pid=101)])
    assert decide(cfg(), 400 + 3599, st).act is False
    d = decide(cfg(), 400 + 3600, st)
    assert d.act and d.idle_seconds == 3600 and "alice" in d.last_activity


def test_off_never_acts():
    d = decide(cfg(inactivity_duration=None), 10 * HOUR, state())
    assert (d.state, d.act, d.seconds_until_action) == ("disabled", False, None)


# --- active ----------------------------------------------------------------------------------------------


def test_a_live_counted_session_is_active():
    d = decide(cfg(), 10 * HOUR, state(open_=[lease(opened=100)]))
    assert (d.state, d.act, d.idle_seconds, d.seconds_until_action) == ("active", False, 0, None)
    (view,) = d.sessions
    assert view.counted and view.reason is None and view.opened_seconds_ago == 10 * HOUR - 100


def test_a_session_open_for_exactly_min_session_counts():
    d = decide(cfg(), 110, state(open_=[lease(opened=100)]))
    assert d.state == "active"


def test_a_session_younger_than_min_session_does_not_count_yet_but_blocks_the_action():
    d = decide(cfg(), HOUR + 5, state(open_=[lease(opened=HOUR)]))
    assert d.state == "idle" and not d.act and d.blocked_kind == "pending"
    (view,) = d.sessions
    assert not view.counted and view.pending and "shorter than min_session 10s" in view.reason
    assert d.next_check == pytest.approx(5)


def test_a_young_session_holds_the_action_at_most_min_session_past_the_deadline():
    # Deadline at HOUR; min_session 10: the hold ends at HOUR + 10, whatever is still young then.
    young = lease(opened=HOUR + 5)
    held = decide(cfg(), HOUR + 9.9, state([young]))
    assert not held.act and held.blocked_kind == "pending" and held.next_check == pytest.approx(0.1)
    ended = decide(cfg(), HOUR + 10, state([young]))
    assert ended.act and ended.blocked is None


def test_a_session_opened_just_before_the_deadline_counts_before_the_hold_ends():
    just_in_time = lease(opened=HOUR - 0.5)
    assert not decide(cfg(), HOUR + 1, state([just_in_time])).act
    assert decide(cfg(), HOUR + 9.5, state([just_in_time])).state == "active"


def test_overlapping_probes_do_not_extend_the_hold_and_log_it_once():
    keys = set()
    for t in range(0, 30, 2):  # a probe every 2 s, each 3 s long, from the deadline on
        probes = [lease(opened=HOUR + t - 1, pid=1 + t), lease(opened=HOUR + t, pid=2 + t)]
        d = decide(cfg(), HOUR + t + 0.5, state(probes))
        assert d.act == (t + 0.5 >= 10), t
        if not d.act:
            keys.add(decision.change_key(d))
    assert len(keys) == 1, keys


def test_a_closed_session_shorter_than_min_session_never_counts():
    st = state(closed_=[closed(HOUR - 1, opened=HOUR - 9)])
    d = decide(cfg(), HOUR, st)
    assert d.act and d.last_activity == "boot"


def test_min_session_off_counts_every_session():
    st = state(closed_=[closed(HOUR - 1, opened=HOUR - 1.5)])
    assert not decide(cfg(min_session=0), HOUR, st).act


def test_a_close_without_a_recorded_open_counts():
    st = state(closed_=[closed(HOUR - 1, opened=None)])
    assert not decide(cfg(), HOUR, st).act


# --- ignore rules ----------------------------------------------------------------------------------------

IGNORE_CASES = [
    (dict(ignore_users=frozenset({"dstack"})), dict(user="dstack"), "user dstack is in ignore.users"),
    (
        dict(ignore_networks=(ipaddress.ip_network("10.0.0.0/8"),)),
        dict(client="10.1.2.3"),
        "client 10.1.2.3 is in ignore.networks (10.0.0.0/8)",
    ),
    (
        dict(ignore_networks=(ipaddress.ip_network("10.0.0.5/32"),)),
        dict(client="::ffff:10.0.0.5"),
        "is in ignore.networks (10.0.0.5/32)",
    ),
    (
        dict(ignore_networks=(ipaddress.ip_network("fd00::/8"),)),
        dict(client="fd00::1"),
        "in ignore.networks (fd00::/8)",
    ),
    (dict(ignore_keys=frozenset({KEY})), dict(key=KEY), f"key {KEY} is in ignore.keys"),
    (dict(services=("sshd",)), dict(service="login"), "service login is not in services"),
]


@pytest.mark.parametrize("config_kw, lease_kw, reason", IGNORE_CASES)
def test_an_ignored_live_session_is_shown_with_its_reason_and_keeps_nothing_alive(config_kw, lease_kw, reason):
    d = decide(cfg(**config_kw), HOUR, state(open_=[lease(opened=100, **lease_kw)]))
    (view,) = d.sessions
    assert not view.counted and not view.pending and reason in view.reason
    assert d.state == "idle" and d.act


@pytest.mark.parametrize("config_kw, lease_kw, reason", IGNORE_CASES)
def test_an_ignored_closed_session_does_not_reset_the_idle_clock(config_kw, lease_kw, reason):
    st = state(closed_=[closed(HOUR - 1, opened=100, **lease_kw)])
    assert decide(cfg(**config_kw), HOUR, st).act


def test_a_network_rule_of_the_other_family_does_not_match():
    config = cfg(ignore_networks=(ipaddress.ip_network("::/0"),))
    d = decide(config, HOUR, state(open_=[lease(opened=100, client="10.0.0.1")]))
    assert d.state == "active"


def test_an_unignored_session_keeps_it_active_next_to_an_ignored_one():
    config = cfg(ignore_users=frozenset({"dstack"}))
    st = state(open_=[lease(user="dstack", opened=0, pid=1), lease(user="alice", opened=0, pid=2)])
    d = decide(config, HOUR, st)
    assert d.state == "active" and [v.counted for v in d.sessions] == [False, True]


# --- stale leases, lost state, unexplained sessions ---------------------------------------------------------


def test_a_dead_lease_ends_when_first_seen_dead():
    st = state(open_=[lease(opened=0)])
    d = decide(cfg(), 2 * HOUR, st, evidence(live=[False]))
    assert d.state == "idle" and d.idle_seconds == 0 and d.seconds_until_action == HOUR and not d.sessions


def test_lost_state_restarts_the_idle_clock():
    d = decide(cfg(), 2 * HOUR, state(lost=HOUR + 10))
    assert not d.act and d.seconds_until_action == 10 and "lost" in d.last_activity


def test_an_unusable_state_is_unknown_and_never_acts():
    d = decide(cfg(), 10 * HOUR, None, evidence(), problem="state file unusable: not valid JSON")
    assert (d.state, d.act, d.seconds_until_action) == ("unknown", False, None)
    assert "not valid JSON" in d.reason


def live_session(user="bob", uid=1001, client="192.0.2.9", port=50000, pid=300):
    return LiveSession(client, port, "127.0.0.1", 22, uid, user, pid, 77)


def test_a_live_ssh_session_the_state_does_not_explain_is_unknown_not_idle():
    d = decide(cfg(), 10 * HOUR, state(), evidence(sessions=[live_session()]))
    assert d.state == "unknown" and not d.act and "not recorded by the hook" in d.reason and "bob" in d.reason
    (view,) = d.sessions
    assert view.counted and not view.recorded


def test_a_live_session_explained_by_its_lease_is_not_unknown():
    st = state(open_=[lease(user="bob", client="192.0.2.9", port=50000, pid=300, opened=0)])
    d = decide(cfg(), 10 * HOUR, st, evidence(live=[True], sessions=[live_session()]))
    assert d.state == "active" and len(d.sessions) == 1


def test_an_unexplained_session_of_an_ignored_user_does_not_block():
    d = decide(cfg(ignore_users=frozenset({"bob"})), 10 * HOUR, state(), evidence(sessions=[live_session()]))
    assert d.state == "idle" and d.act
    (view,) = d.sessions
    assert not view.counted and not view.recorded and "ignore.users" in view.reason


def test_without_the_live_check_it_does_not_act():
    d = decide(cfg(), 10 * HOUR, state(), evidence(checked=False))
    assert d.state == "idle" and not d.act and d.blocked_kind == "unchecked"
    assert decision.unclear(d)


def test_without_the_live_check_it_still_counts_down():
    d = decide(cfg(), 100, state(), evidence(checked=False))
    assert d.state == "idle" and d.seconds_until_action == HOUR - 100 and not decision.unclear(d)


def test_the_action_runs_once_per_idle_period():
    st = state(reaper={"acted_for": 0.0})
    d = decide(cfg(), 2 * HOUR, st)
    assert not d.act and d.blocked_kind == "acted"
    st = state(closed_=[closed(HOUR, opened=0)], reaper={"acted_for": 0.0})
    assert decide(cfg(), 2 * HOUR, st).act


def test_disabled_wins_over_an_unknown_state():
    d = decide(cfg(inactivity_duration=None), HOUR, None, evidence(), problem="corrupt")
    assert d.state == "disabled"


def test_change_key_ignores_the_ticking_clock():
    a = decide(cfg(), 100, state())
    b = decide(cfg(), 200, state())
    assert decision.change_key(a) == decision.change_key(b)
    assert decision.change_key(a) != decision.change_key(decide(cfg(), HOUR, state()))


def test_a_session_in_a_container_on_this_machine_blocks_and_says_where():
    inside = LiveSession("127.0.0.1", 50000, "127.0.0.1", 2222, 1000, "dev", 400, 77, container=True)
    d = decide(cfg(), 10 * HOUR, state(), evidence(sessions=[inside]))
    assert d.state == "unknown" and not d.act
    assert d.reason == "SSH session served by an sshd in a container on this machine: dev from 127.0.0.1 (pid 400)"
    assert d.sessions[0].container


def test_a_reason_names_a_few_sessions_and_counts_the_rest():
    st = state(open_=[lease(user=f"u{i}", pid=i, opened=0) for i in range(10)])
    d = decide(cfg(), HOUR, st)
    assert d.state == "active" and d.reason.startswith("10 counted session(s): u0 from")
    assert d.reason.endswith("and 7 more") and len(d.sessions) == 10


# --- other kinds of evidence: inhibitors, mosh, ... (evidence.activity) ---------------------------------


def held(until=None, ended=None, holds=INHIBIT, since=100.0, kind="inhibitor"):
    return Activity(kind, "i1", holds, "alice", "training run", since, until=until, ended=ended)


def test_a_lasting_inhibitor_inhibits_and_nothing_acts():
    d = decision.decide(cfg(), 2 * HOUR, 0.0, state(), evidence(), activities=[held()])
    assert (d.state, d.act) == ("inhibited", False) and "training run" in d.reason


def test_the_countdown_starts_when_the_last_inhibitor_ends():
    d = decision.decide(cfg(), 2 * HOUR, 0.0, state(), evidence(), activities=[held(ended=HOUR + 600)])
    assert (d.state, d.act, d.seconds_until_action) == ("idle", False, 600)
    assert d.idle_since == HOUR + 600 and "inhibitor i1 of alice ended" in d.last_activity


def test_an_inhibitor_for_a_time_ends_by_itself_and_says_when():
    lasting = decision.decide(cfg(), HOUR, 0.0, state(), evidence(), activities=[held(until=HOUR + 40)])
    assert lasting.state == "inhibited" and lasting.next_check == 40
    expired = decision.decide(cfg(), 2 * HOUR + 40, 0.0, state(), evidence(), activities=[held(until=HOUR + 40)])
    assert expired.act and expired.idle_since == HOUR + 40


def test_an_end_the_tick_remembered_counts_after_its_source_forgot_it():
    st = state(reaper={"activity_end": {"at": HOUR + 5, "what": "inhibitor i1 of alice ended"}})
    d = decision.decide(cfg(), HOUR + 10, 0.0, st, evidence())
    assert (d.state, d.idle_since, d.seconds_until_action) == ("idle", HOUR + 5, HOUR - 5)


def test_an_attached_mosh_client_is_activity_and_a_session_outranks_an_inhibitor():
    mosh = held(holds=ACTIVE, kind="mosh")
    assert decision.decide(cfg(), 2 * HOUR, 0.0, state(), evidence(), activities=[mosh, held()]).state == "active"
    d = decide(cfg(), 2 * HOUR, state(open_=[lease(opened=0.0)]))
    assert d.state == "active"


def test_an_activity_no_source_reports_any_more_ended_when_first_seen_gone():
    st = state(reaper={"lasting": {"mosh 4242": "mosh 4242 of alice"}})
    d = decision.decide(cfg(), HOUR + 10, 0.0, st, evidence())
    assert (d.state, d.idle_since, d.last_activity) == ("idle", HOUR + 10, "mosh 4242 of alice ended")


def test_a_login_the_hook_has_not_recorded_yet_is_unknown_quietly_then_as_a_failed_hook():
    # Its sshd process started at 2 h (in clock ticks); the deadline passed long before.
    young = LiveSession("192.0.2.9", 50000, "127.0.0.1", 22, 1000, "bob", 300, int(2 * HOUR * decision.CLK_TCK))
    d = decision.decide(cfg(), 2 * HOUR + 3, 0.0, state(), evidence(sessions=[young]))
    assert (d.state, d.act, d.blocked_kind) == ("unknown", False, "logging-in") and d.next_check == pytest.approx(7)
    later = decision.decide(cfg(), 2 * HOUR + decision.LOGIN_GRACE + 1, 0.0, state(), evidence(sessions=[young]))
    assert (later.state, later.act, later.blocked_kind) == ("unknown", False, None)
    assert "not recorded by the hook (the hook failed" in later.reason
