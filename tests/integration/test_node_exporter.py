"""The metrics through a real node_exporter (issue 13): Debian's prometheus-node-exporter on a free loopback
port, its textfile collector pointed at the test's directory and every other collector off; the reaper's
textfile scraped from /metrics through a session's open and close and an action. The sshd and the reaper run
in a network namespace of their own, so other SSH sessions on this machine don't show in the live check."""

import json
import os
import subprocess
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.sshd import Sshd, end, free_port, idle_reaper, wait_for

NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
READY = "ready"
HOLD = f"echo {READY}; read x"


class NodeExporter:
    def __init__(self, textfile_dir, log_path):
        self.port = free_port()
        self.log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        argv = [
            NODE_EXPORTER,
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--collector.disable-defaults",
            "--collector.textfile",
            f"--collector.textfile.directory={textfile_dir}",
            "--web.disable-exporter-metrics",
        ]
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self._up, timeout=15)

    def _up(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"node_exporter exited: {open(self.log.name).read()}")
        try:
            self.scrape_text()
        except OSError:
            return False
        return True

    def scrape_text(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:  # noqa: S310
            return r.read().decode()

    def scrape(self):
        """Return {name{labels}: value} of the idle_reaper_* samples and the textfile collector's error flag."""
        out = {}
        for family in text_string_to_metric_families(self.scrape_text()):
            for s in family.samples:
                if s.name.startswith("idle_reaper_") or s.name == "node_textfile_scrape_error":
                    labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                    out[s.name + (f"{{{labels}}}" if labels else "")] = s.value
        return out

    def stop(self):
        self.proc.terminate()  # the process this fixture started, by its pid
        self.proc.wait(10)
        self.log.close()


@pytest.fixture
def textfile_dir(workdir):
    d = os.path.join(workdir, "textfile")
    os.mkdir(d)
    os.chmod(d, 0o755)
    return d


@pytest.fixture
def node_exporter(require_root, textfile_dir, workdir):
    exporter = NodeExporter(textfile_dir, os.path.join(workdir, "node_exporter.log"))
    yield exporter
    exporter.stop()


@pytest.fixture
def isolated_sshd(require_root, users, state_dir):
    server = Sshd(users, state_dir, netns=True)
    yield server
    server.stop()


def _state(scraped):
    (state,) = [k.split("=")[1].rstrip("}") for k, v in scraped.items() if k.startswith("idle_reaper_state{") and v]
    return state


def test_node_exporter_serves_the_reapers_metrics_through_a_session_and_an_action(
    isolated_sshd, node_exporter, config, state_dir, textfile_dir, workdir
):
    sshd = isolated_sshd
    prom = os.path.join(textfile_dir, "idle-reaper.prom")
    marker = os.path.join(workdir, "acted")
    policy = f'min_session: 1s\nmetrics: {prom}\naction: ["/usr/bin/touch", "{marker}"]\n'
    config("inactivity_duration: 1w\n" + policy)  # idle since boot, which may be hours ago

    def reap():
        done = idle_reaper(config.path, state_dir, "reap", enter=sshd.enter)
        assert done.returncode == 0, done.stderr
        return node_exporter.scrape()

    before = time.time()
    got = reap()
    assert got["node_textfile_scrape_error"] == 0
    assert _state(got) == "idle"
    assert os.stat(prom).st_mode & 0o777 == 0o644
    assert got["idle_reaper_inactivity_duration_seconds"] == 7 * 86400
    assert before - 1 <= got["idle_reaper_last_tick_timestamp_seconds"] <= time.time() + 1
    assert got["idle_reaper_actions_total{result=ok}"] == 0

    client = sshd.start("irt-alice", HOLD, ready=READY)
    time.sleep(1.2)  # min_session
    got = reap()
    assert _state(got) == "active"
    assert got["idle_reaper_sessions{status=counted}"] == 1
    assert "idle_reaper_action_due_timestamp_seconds" not in got

    end(client)
    closed_at = time.time()
    wait_for(lambda: json.load(open(os.path.join(state_dir, "state.json")))["closed"])
    config("inactivity_duration: 4s\n" + policy)  # read afresh by the next tick
    got = reap()
    assert _state(got) == "idle" and got["idle_reaper_sessions{status=counted}"] == 0
    idle_since = got["idle_reaper_idle_since_timestamp_seconds"]
    assert closed_at - 2 <= idle_since <= closed_at + 2
    assert got["idle_reaper_action_due_timestamp_seconds"] == pytest.approx(idle_since + 4, abs=0.01)

    time.sleep(max(0.0, idle_since + 4.2 - time.time()))
    acted = time.time()
    got = reap()
    assert os.path.exists(marker)
    assert got["idle_reaper_actions_total{result=ok}"] == 1
    assert acted - 2 <= got["idle_reaper_last_action_timestamp_seconds"] <= time.time() + 1
    got = reap()  # the next tick: the action already ran for this idle period
    assert got["idle_reaper_action_blocked"] == 1 and got["idle_reaper_actions_total{result=ok}"] == 1

    # The same story in the history, for any user.
    done = idle_reaper(config.path, state_dir, "history", "--json", user="irt-bob", enter=sshd.enter)
    assert done.returncode == 0, done.stderr
    view = json.loads(done.stdout)
    (active,) = [s for s in view["stretches"] if s["kind"] == "active"]
    assert active["who"] == ["irt-alice from 127.0.0.1"] and active["seconds"] >= 1
    (action,) = [p for p in view["points"] if p["kind"] == "action"]
    assert action["action"] == ["/usr/bin/touch", marker] and "time to act" in action["reason"]
    assert view["summary"]["actions"] == 1


def test_a_metrics_write_that_fails_is_logged_and_the_tick_goes_on(isolated_sshd, config, state_dir, workdir):
    prom = os.path.join(workdir, "missing-dir", "idle-reaper.prom")
    config(f"inactivity_duration: 1w\nmetrics: {prom}\n")
    done = idle_reaper(config.path, state_dir, "reap", enter=isolated_sshd.enter)
    assert done.returncode == 0, done.stderr
    assert f"metrics: could not write {prom}" in done.stderr
