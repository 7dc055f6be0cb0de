"""Pre-action hooks run outside a unit (as in the tests; under systemd each runs in a transient unit)."""

import logging
import os

import pytest

from reaper.actions import pre_action
from tests.unit.test_decision import cfg, decide, state


def hook(directory, name, body, mode=0o755):
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    os.chmod(path, mode)
    return path


@pytest.fixture
def log():
    logger = logging.getLogger("test-pre-action")
    logger.setLevel(logging.INFO)
    return logger


def test_hooks_are_run_parts_names_in_c_order_and_unsafe_ones_are_skipped(tmp_path):
    for name in ("20-b", "10-a", "B", "a_c"):
        hook(tmp_path, name, "true")
    hook(tmp_path, "30-x.dpkg-old", "true")
    hook(tmp_path, "README.md", "true")
    hook(tmp_path, "40-notexec", "true", mode=0o644)
    hook(tmp_path, "50-writable", "true", mode=0o757)
    (tmp_path / "60-dir").mkdir()
    run, skipped = pre_action.hooks(str(tmp_path))
    assert [os.path.basename(p) for p in run] == ["10-a", "20-b", "B", "a_c"]
    assert [s.split(": ", 1)[1] for s in skipped] == [
        "not executable",
        "unsafe: it must be owned by root and writable by nobody else",
        "not a regular file",
    ]
    assert pre_action.hooks(str(tmp_path / "missing")) == ([], [])


def test_each_hook_gets_the_reason_the_idle_time_and_the_deadline(tmp_path, log, caplog):
    out = tmp_path / "env"
    hook(tmp_path, "10-env", f'echo "$IDLE_REAPER_CAUSE|$IDLE_REAPER_IDLE_SECONDS|$IDLE_REAPER_DEADLINE|$PATH" > {out}')
    d = decide(cfg(), 3600, state())._replace(cause="inactivity_duration")
    env = pre_action.environment(d, "2026-12-01T10:00:00+00:00")
    assert env["IDLE_REAPER_REASON"] == "idle since boot"
    (o,) = pre_action.run_all(str(tmp_path), env, 5, False, log)
    assert o.status == "finished"
    cause, idle, deadline, path = out.read_text().strip().split("|")
    assert (cause, idle, deadline) == ("inactivity_duration", "3600", "2026-12-01T10:00:00+00:00")
    assert path.startswith("/usr/local/sbin:")


def test_a_failing_or_hanging_hook_is_logged_and_the_others_still_run(tmp_path, log, caplog):
    hook(tmp_path, "10-fails", "echo oops; exit 3")
    hook(tmp_path, "20-hangs", "exec sleep 30")
    hook(tmp_path, "30-runs", "echo synced")
    with caplog.at_level(logging.INFO, logger="test-pre-action"):
        outcomes = pre_action.run_all(str(tmp_path), {}, 1, False, log)
    assert [o.status for o in outcomes] == [
        "failed with exit status 3",
        "timed out (pre_action_timeout 1s)",
        "finished",
    ]
    assert 1 <= outcomes[1].seconds < 5
    text = caplog.text
    assert "10-fails: oops" in text and "30-runs: synced" in text and "the others still run" in text


def test_pre_action_timeout_has_a_default_and_refuses_off():
    from reaper.config import parse
    from reaper.errors import ConfigError

    assert parse.parse("c.yaml", "inactivity_duration: 2h\n").pre_action_timeout == 60
    assert parse.parse("c.yaml", "inactivity_duration: 2h\npre_action_timeout: 5m\n").pre_action_timeout == 300
    with pytest.raises(ConfigError, match=r"c.yaml:2: pre_action_timeout: off is not allowed"):
        parse.parse("c.yaml", "inactivity_duration: 2h\npre_action_timeout: off\n")
