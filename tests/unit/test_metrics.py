"""Prometheus metrics (issue 13): the `metrics` key, the exposition text's names and values, the atomic write."""

import os

import pytest
from prometheus_client.parser import text_string_to_metric_families

from reaper import config, decision
from reaper.actions import metrics
from reaper.config.schema import Config
from reaper.errors import ConfigError
from reaper.evidence import activity


@pytest.fixture
def write(tmp_path):
    def write(text):
        path = tmp_path / "config.yaml"
        path.write_text(text)
        return str(path)

    return write


def test_metrics_is_off_by_default(write):
    assert config.load(write("inactivity_duration: 2h\n")).metrics is None
    assert config.load(write("inactivity_duration: 2h\nmetrics: off\n")).metrics is None


def test_metrics_takes_an_absolute_prom_path(write):
    path = "/var/lib/prometheus/node-exporter/idle-reaper.prom"
    assert config.load(write(f"inactivity_duration: 2h\nmetrics: {path}\n")).metrics == path


@pytest.mark.parametrize("bad", ["idle.prom", "/var/lib/x.txt", "[a]", "true", "/var/lib/.prom"])
def test_metrics_refuses_what_is_not_an_absolute_prom_path(write, bad):
    with pytest.raises(ConfigError, match=r"config.yaml:2: metrics: .*allowed: off, or an absolute path"):
        config.load(write(f"inactivity_duration: 2h\nmetrics: {bad}\n"))


def test_the_kept_parse_keeps_the_metrics_path(write, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    path = write("inactivity_duration: 2h\nmetrics: /tmp/x.prom\n")
    config.load(path, cache_dir=str(state), keep=True)
    assert config.load(path, cache_dir=str(state)).metrics == "/tmp/x.prom"


# --- the text ----------------------------------------------------------------------------------------------

CFG = Config(path="c", inactivity_duration=7200, min_session=10)
NOW, WALL, BOOTED = 5000.0, 1_800_000_000.0, 100.0


def _idle(idle_since=1400.0, **kw):
    return decision.Decision(decision.IDLE, "idle since boot", NOW - idle_since, 7200 - (NOW - idle_since), False,
                             idle_since=idle_since, **kw)  # fmt: skip


def _parse(text):
    return {
        s.name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}" if s.labels else ""): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_an_idle_machine_exports_its_state_deadline_and_tick_as_wall_clock_timestamps():
    memory = {"actions_ok": 0}
    counts = {"counted": 0, "pending": 1, "ignored": 2}
    got = _parse(metrics.render(CFG, _idle(), memory, counts, NOW, WALL, BOOTED))
    assert got["idle_reaper_state{state=idle}"] == 1
    assert got["idle_reaper_state{state=active}"] == 0
    assert sum(v for k, v in got.items() if k.startswith("idle_reaper_state{")) == 1
    assert got["idle_reaper_inactivity_duration_seconds"] == 7200
    assert got["idle_reaper_idle_since_timestamp_seconds"] == WALL - (NOW - 1400.0)
    assert got["idle_reaper_action_due_timestamp_seconds"] == WALL - (NOW - 1400.0) + 7200
    assert got["idle_reaper_sessions{status=pending}"] == 1
    assert got["idle_reaper_sessions{status=ignored}"] == 2
    assert got["idle_reaper_last_tick_timestamp_seconds"] == WALL
    assert got["idle_reaper_boot_timestamp_seconds"] == WALL - (NOW - BOOTED)
    assert got["idle_reaper_actions_total{result=ok}"] == 0
    assert "idle_reaper_last_action_timestamp_seconds" not in got


def test_names_follow_prometheus_rules():
    text = metrics.render(CFG, _idle(), {"acted_at": 4000.0, "actions_ok": 1}, dict.fromkeys(
        ("counted", "pending", "ignored"), 0), NOW, WALL, BOOTED)  # fmt: skip
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("idle_reaper_")
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples)
        for s in family.samples:
            assert set(s.labels) <= {"state", "status", "result"}  # few labels, never per session
            if "timestamp" in s.name:
                assert s.name.endswith("_timestamp_seconds") and s.value > 1e9


def test_an_active_machine_has_no_deadline_and_counts_sessions_and_inhibitors():
    held = activity.Activity("inhibitor", "1", activity.INHIBIT, "dev", "build", 10.0)
    result = decision.Decision(decision.ACTIVE, "1 counted", 0.0, None, False, idle_since=100.0, activities=(held,))
    counts = {"counted": 3, "pending": 0, "ignored": 0}
    got = _parse(metrics.render(CFG, result, {}, counts, NOW, WALL, BOOTED))
    assert got["idle_reaper_state{state=active}"] == 1
    assert got["idle_reaper_sessions{status=counted}"] == 3
    assert got["idle_reaper_inhibitors"] == 1
    assert "idle_reaper_idle_since_timestamp_seconds" not in got
    assert "idle_reaper_action_due_timestamp_seconds" not in got


def test_off_leaves_out_the_duration_and_an_action_shows_its_time_and_count():
    cfg = CFG._replace(inactivity_duration=None)
    result = decision.Decision(decision.DISABLED, "off", 0.0, None, False)
    got = _parse(metrics.render(cfg, result, {"acted_at": 4900.0, "actions_ok": 1}, dict.fromkeys(
        ("counted", "pending", "ignored"), 0), NOW, WALL, BOOTED))  # fmt: skip
    assert "idle_reaper_inactivity_duration_seconds" not in got
    assert got["idle_reaper_actions_total{result=ok}"] == 1
    assert got["idle_reaper_last_action_timestamp_seconds"] == WALL - 100.0


def test_unclear_evidence_exports_since_when():
    result = decision.Decision(decision.UNKNOWN, "state file unusable", 0.0, None, False)
    got = _parse(metrics.render(CFG, result, {"unclear_since": 4400.0}, dict.fromkeys(
        ("counted", "pending", "ignored"), 0), NOW, WALL, BOOTED))  # fmt: skip
    assert got["idle_reaper_state{state=unknown}"] == 1
    assert got["idle_reaper_unclear_since_timestamp_seconds"] == WALL - 600.0


def test_session_counts_follow_the_policy():
    cfg = CFG._replace(ignore_users=frozenset({"ci"}))
    leases = [
        {"user": "dev", "service": "sshd", "opened": NOW - 100},
        {"user": "dev", "service": "sshd", "opened": NOW - 2},
        {"user": "ci", "service": "sshd", "opened": NOW - 100},
        {"user": "x", "service": "su", "opened": NOW - 100},
    ]
    assert metrics.session_counts(cfg, leases, NOW) == {"counted": 1, "pending": 1, "ignored": 2}


def test_write_is_atomic_readable_and_only_when_changed(tmp_path):
    path = str(tmp_path / "idle-reaper.prom")
    old = os.umask(0o077)
    try:
        assert metrics.write(path, "a 1\n") is True
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o644
    inode = os.stat(path).st_ino
    assert metrics.write(path, "a 1\n") is False
    assert os.stat(path).st_ino == inode
    assert metrics.write(path, "a 2\n") is True
    assert open(path).read() == "a 2\n"
    assert os.listdir(tmp_path) == ["idle-reaper.prom"]


def test_session_counts_agree_with_the_policy_on_every_kind_of_lease():
    from reaper import policy

    cfg = CFG._replace(
        services=("sshd", "sshd-test"), ignore_users=frozenset({"ci"}), ignore_keys=frozenset({"SHA256:k"}),
        ignore_networks=(__import__("ipaddress").ip_network("10.0.0.0/8"),),
    )  # fmt: skip
    leases = [
        {"user": user, "service": service, "client": client, "rhost": rhost, "key": key, "opened": opened}
        for user in ("dev", "ci", None)
        for service in ("sshd", "su", None)
        for client, rhost in (("10.1.2.3", None), ("192.0.2.1", None), (None, "10.9.9.9"), (None, None))
        for key in ("SHA256:k", "SHA256:x", None)
        for opened in (NOW - 100, NOW - 3, None)
    ]
    want = {"counted": 0, "pending": 0, "ignored": 0}
    for lease in leases:
        if policy.ignore_reason(cfg, lease) is not None:
            want["ignored"] += 1
        elif policy.too_short(cfg, None if lease["opened"] is None else NOW - lease["opened"]):
            want["pending"] += 1
        else:
            want["counted"] += 1
    assert metrics.session_counts(cfg, leases, NOW) == want
