"""The example alert rules the package ships (issue 13): `promtool check rules` passes, and a
`promtool test rules` case for each alert shows it firing when it should and not before."""

import json
import subprocess

import pytest

from tests.conftest import REPO

RULES = REPO / "packaging" / "prometheus" / "idle-reaper.rules.yml"
PROMTOOL = "/usr/bin/promtool"

# One case per alert: the input series (promtool's expanding notation, a sample a minute), and when to look
# with what fires then: (eval time, [(instance, its summary)]). Wall-clock timestamps count from promtool's
# epoch 0, so `time()` at "11m" is 660. The annotations are checked too, so their templates render.
CASES = {
    "IdleReaperNotActing": (
        # Due at 0 and still idle: late by 11 minutes it fires; a machine due at 5m is not late enough yet.
        [
            ("idle_reaper_action_due_timestamp_seconds", "vm1", {}, "0x20"),
            ("idle_reaper_action_due_timestamp_seconds", "vm2", {}, "300x20"),
        ],
        [("9m", []), ("11m", [("vm1", "vm1 is idle past its deadline but still up")])],
    ),
    "IdleReaperInhibitedForADay": (
        [
            ("idle_reaper_state", "vm1", {"state": "inhibited"}, "1x1500"),
            ("idle_reaper_state", "vm1", {"state": "idle"}, "0x1500"),
        ],
        [("23h", []), ("1d1m", [("vm1", "vm1 has been kept up by an inhibitor for more than a day")])],
    ),
    "IdleReaperStale": (
        # A tick a minute for 10 minutes, then none: the last tick is at 9m (540 s).
        [("idle_reaper_last_tick_timestamp_seconds", "vm1", {}, "0+60x9 540x20")],
        [("10m", []), ("19m", []), ("20m", [("vm1", "idle-reaper on vm1 has not run for 11m 0s")])],
    ),
    "IdleReaperUnknownForLong": (
        [("idle_reaper_unclear_since_timestamp_seconds", "vm1", {}, "0x70")],
        [("59m", []), ("61m", [("vm1", "idle-reaper on vm1 has not known the state for 1h 1m 0s")])],
    ),
}
DESCRIPTIONS = {
    "IdleReaperNotActing": "The action was due 11m 0s ago. See `idle-reaper status` and `journalctl -u idle-reaper`"
    " on the machine.",
    "IdleReaperInhibitedForADay": "`idle-reaper status` on the machine lists the inhibitors and who holds them.",
    "IdleReaperStale": "Check `systemctl status idle-reaper.timer idle-reaper.service` on the machine.",
    "IdleReaperUnknownForLong": "`idle-reaper status` on the machine says why; nothing is powered off meanwhile.",
}


def test_promtool_checks_the_rules():
    done = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(CASES)} rules found" in done.stdout


def _case(alert):
    """Return promtool's unit-test file for one alert, as JSON (which is YAML)."""
    series, checks = CASES[alert]
    inputs = []
    for name, instance, labels, values in series:
        shown = ", ".join(f'{k}="{v}"' for k, v in {**labels, "instance": instance, "job": "node"}.items())
        inputs.append({"series": f"{name}{{{shown}}}", "values": values})
    severity = "info" if alert == "IdleReaperInhibitedForADay" else "warning"
    extra = {"state": "inhibited"} if alert == "IdleReaperInhibitedForADay" else {}
    tests = [
        {
            "eval_time": at,
            "alertname": alert,
            "exp_alerts": [
                {
                    "exp_labels": {"instance": i, "job": "node", "severity": severity, **extra},
                    "exp_annotations": {"summary": summary, "description": DESCRIPTIONS[alert]},
                }
                for i, summary in fired
            ],
        }
        for at, fired in checks
    ]
    return json.dumps({"rule_files": [str(RULES)], "evaluation_interval": "1m",
                       "tests": [{"interval": "1m", "input_series": inputs, "alert_rule_test": tests}]})  # fmt: skip


@pytest.mark.parametrize("alert", sorted(CASES))
def test_promtool_test_rules_fires_each_alert_when_it_should(alert, tmp_path):
    test_file = tmp_path / "test.yml"
    test_file.write_text(_case(alert))
    done = subprocess.run([PROMTOOL, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, test_file.read_text() + done.stdout + done.stderr


def test_every_alert_has_a_case():
    import yaml

    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    assert sorted(r["alert"] for r in rules) == sorted(CASES)
