"""The system tier: every selected scenario runs at once, each on its own machine; each test checks one of them.

Most of a scenario is waiting for the clock (inactivity_duration, the timer), so running them one after another
would take many minutes. The `system` fixture builds the image once, then starts the scenarios of all selected
tests in threads at the first system test; each test waits for its own scenario's observations.

Every scenario runs on each supported Debian (bookworm and trixie), from the one .deb: each test is parametrized by
`suite`, and the two suites' machines run at the same time.
"""

import contextlib
import os
import threading
import traceback

import pytest

from tests import debroot
from tests.system import harness, scenarios

SCENARIO_TIMEOUT = 600
# Every scenario runs on bookworm; on trixie a smoke set (the package tier runs its whole install cycle on both).
TRIXIE_SMOKE = frozenset({"nobody_connects", "shell_session_held", "job_inhibits_after_logout"})
# Machines running at once: each booted systemd takes inotify instances (128 per user by default) and CPU,
# and a scenario's timing suffers on an overloaded machine.
MAX_MACHINES = 10


def pytest_configure(config):
    config.addinivalue_line("markers", "scenario(name): the system scenario (tests/system/scenarios.py) a test checks")


def pytest_generate_tests(metafunc):
    """Run each test that checks a scenario on bookworm, and those of the smoke set on trixie too (test ids end
    in [bookworm] and [trixie])."""
    if "suite" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("scenario")
        smoke = marker is not None and marker.args[0] in TRIXIE_SMOKE
        metafunc.parametrize("suite", debroot.SUITES if smoke else [debroot.SUITE])


def pytest_terminal_summary(terminalreporter):
    """Print every measured poweroff against its deadline, whatever the verbosity."""
    if scenarios.MEASURED:
        terminalreporter.section("poweroff lateness (CLOCK_BOOTTIME, against the deadline)")
        for name, timing in scenarios.MEASURED:
            terminalreporter.write_line(f"{name} ({timing.suite}): {timing.describe()}")


class Runner:
    """Runs scenarios in threads, each against its suite's image, and hands out their results."""

    def __init__(self, images):
        self.images = images  # {suite: Image}
        self.threads = {}
        self.results = {}
        self.errors = {}
        self.slots = threading.Semaphore(MAX_MACHINES)

    def start(self, suite, name):
        key = (suite, name)
        if key not in self.threads:
            thread = threading.Thread(target=self._run, args=key, name=f"scenario-{suite}-{name}", daemon=True)
            self.threads[key] = thread
            thread.start()

    def _run(self, suite, name):
        with self.slots:
            try:
                self.results[suite, name] = scenarios.SCENARIOS[name](self.images[suite])
            except BaseException:  # noqa: BLE001 - reported by the test that asks for this scenario
                self.errors[suite, name] = traceback.format_exc()

    def result(self, suite, name):
        """Wait for the scenario and return its observations; fail the test if the scenario itself broke."""
        key = (suite, name)
        self.start(*key)
        self.threads[key].join(SCENARIO_TIMEOUT)
        if self.threads[key].is_alive():
            pytest.fail(f"scenario {name} on {suite} still running after {SCENARIO_TIMEOUT}s")
        if key in self.errors:
            pytest.fail(f"scenario {name} on {suite} broke:\n{self.errors[key]}", pytrace=False)
        return self.results[key]

    def join(self):
        for thread in self.threads.values():
            thread.join(SCENARIO_TIMEOUT)


@pytest.fixture(scope="session")
def system(request, tmp_path_factory):
    """The Runner, with the scenarios of every selected system test already started.

    The machines of every suite get the one .deb built from this tree (packaging/build-deb), or $IDLE_REAPER_DEB if
    set. A suite's scenarios start as soon as its image is ready, while the next suite's is built.
    """
    if os.geteuid() != 0:
        pytest.fail("the system tier needs root (it boots machines with systemd-nspawn); run as root")
    wanted = {}  # {suite: [scenario names]}, in test order
    for item in request.session.items:
        marker = item.get_closest_marker("scenario")
        callspec = getattr(item, "callspec", None)
        if marker and callspec and "suite" in callspec.params:
            names = wanted.setdefault(callspec.params["suite"], [])
            if marker.args[0] not in names:
                names.append(marker.args[0])
    deb = os.environ.get(harness.DEB_ENV) or harness.build_deb(tmp_path_factory.mktemp("deb"))
    with contextlib.ExitStack() as images:
        runner = Runner({})
        try:
            for suite, names in wanted.items():
                runner.images[suite] = images.enter_context(harness.Image.build(deb, suite=suite))
                for name in names:
                    runner.start(suite, name)
            yield runner
        finally:
            runner.join()  # every machine is gone before its image goes


@pytest.fixture
def scenario(request, require_root, system, suite):
    """The observations of the scenario named by the test's `scenario` marker, on the test's suite."""
    marker = request.node.get_closest_marker("scenario")
    if marker is None:
        pytest.fail("a test using the scenario fixture needs @pytest.mark.scenario(name)")
    if suite not in system.images:
        pytest.fail(f"no {suite} image: the scenario was not started")
    return system.result(suite, marker.args[0])
