"""The system tier: every selected scenario runs at once, each on its own machine; each test checks one of them.

Most of a scenario is waiting for the clock (inactivity_duration, the timer), so running them one after another
would take many minutes. The `system` fixture builds the image once, then starts the scenarios of all selected
tests in threads at the first system test; each test waits for its own scenario's observations.
"""

import os
import threading
import traceback

import pytest

from tests.system import harness, scenarios

SCENARIO_TIMEOUT = 400


def pytest_configure(config):
    config.addinivalue_line("markers", "scenario(name): the system scenario (tests/system/scenarios.py) a test checks")


def pytest_terminal_summary(terminalreporter):
    """Print every measured poweroff against its deadline, whatever the verbosity."""
    if scenarios.MEASURED:
        terminalreporter.section("poweroff lateness (CLOCK_BOOTTIME, against the deadline)")
        for name, timing in scenarios.MEASURED:
            terminalreporter.write_line(f"{name}: {timing.describe()}")


class Runner:
    """Runs scenarios in threads against one image and hands out their results."""

    def __init__(self, image):
        self.image = image
        self.threads = {}
        self.results = {}
        self.errors = {}

    def start(self, name):
        if name not in self.threads:
            thread = threading.Thread(target=self._run, args=(name,), name=f"scenario-{name}", daemon=True)
            self.threads[name] = thread
            thread.start()

    def _run(self, name):
        try:
            self.results[name] = scenarios.SCENARIOS[name](self.image)
        except BaseException:  # noqa: BLE001 - reported by the test that asks for this scenario
            self.errors[name] = traceback.format_exc()

    def result(self, name):
        """Wait for the scenario and return its observations; fail the test if the scenario itself broke."""
        self.start(name)
        self.threads[name].join(SCENARIO_TIMEOUT)
        if self.threads[name].is_alive():
            pytest.fail(f"scenario {name} still running after {SCENARIO_TIMEOUT}s")
        if name in self.errors:
            pytest.fail(f"scenario {name} broke:\n{self.errors[name]}", pytrace=False)
        return self.results[name]

    def join(self):
        for thread in self.threads.values():
            thread.join(SCENARIO_TIMEOUT)


@pytest.fixture(scope="session")
def system(request, tmp_path_factory):
    """The Runner, with the scenarios of every selected system test already started.

    The machines get the .deb built from this tree (packaging/build-deb), or $IDLE_REAPER_DEB if set.
    """
    if os.geteuid() != 0:
        pytest.fail("the system tier needs root (it boots machines with systemd-nspawn); run as root")
    names = []
    for item in request.session.items:
        marker = item.get_closest_marker("scenario")
        if marker and marker.args[0] not in names:
            names.append(marker.args[0])
    deb = os.environ.get(harness.DEB_ENV) or harness.build_deb(tmp_path_factory.mktemp("deb"))
    with harness.Image.build(deb) as image:
        runner = Runner(image)
        for name in names:
            runner.start(name)
        yield runner
        runner.join()  # every machine is gone before the image goes


@pytest.fixture
def scenario(request, require_root, system):
    """The observations of the scenario named by the test's `scenario` marker."""
    marker = request.node.get_closest_marker("scenario")
    if marker is None:
        pytest.fail("a test using the scenario fixture needs @pytest.mark.scenario(name)")
    return system.result(marker.args[0])
