"""The package's autopkgtests (packaging/debian/tests), run as Debian's CI runs them: autopkgtest's own runner, on a
throwaway testbed, against the built .deb.

The testbed is a booted bookworm, and then a booted trixie (systemd-nspawn -b over a fresh overlay of a cached
rootfs that has autopkgtest in it), and autopkgtest runs inside it with the null virt server, so the booted
machine itself is the testbed. The .deb is the one built on this machine, which both releases install:

    autopkgtest /var/tmp/idle-reaper_<version>_<arch>.deb /var/tmp/src/idle-reaper/ -- null

The source tree given to it is this checkout staged as Debian sees a source package (packaging/debian/ as
debian/), as packaging/build-deb stages it.
"""

import contextlib
import os
import shutil
import subprocess
import time
import uuid

import pytest

from tests import debroot
from tests.conftest import REPO
from tests.system import harness

# The testbed: the rootfs of the package and system tiers, plus autopkgtest and dpkg-dev (autopkgtest unpacks a
# source tree with dpkg-source, and would download dpkg-dev on every run without it).
TESTBED_PACKAGES = (*debroot.PACKAGES, "autopkgtest", "dpkg-dev")
# The one .deb, built on this machine, on each Debian release the package supports.
SUITES = ("bookworm", "trixie")
CONTROL = REPO / "packaging" / "debian" / "tests" / "control"
INSIDE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
BOOT_TIMEOUT = 60
AUTOPKGTEST_TIMEOUT = 600
# The rootfs enables sshd on *:22, and the machine shares the host's network; the console units only cost
# inotify instances (tests/system/harness.py).
MASKED = ("ssh.service", "ssh.socket", *harness.CONSOLE_UNITS)
# The null virt server runs the tests on the machine it runs on, which here is a throwaway one booted for this run.
# bookworm's (autopkgtest 5.28) calls that machine isolation-machine; trixie's (5.49) no longer claims it, and so
# skips the isolation-container tests, and its --fake-capability isolation-machine fails an assertion of its own
# (downtmp_prefix is '' there, not None). --ignore-restrictions is what both take, to the same effect.
IGNORE = "--ignore-restrictions=isolation-container"


def declared_tests(control=CONTROL):
    """Return the test names a debian/tests/control declares (its Tests: fields), in order."""
    names = []
    for line in control.read_text().splitlines():
        if line.startswith("Tests:"):
            names += line.split(":", 1)[1].replace(",", " ").split()
    return names


def stage_source(dest):
    """Copy this checkout's files (tracked, and untracked but not ignored) to dest, packaging/debian as debian/."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout
    for name in sorted(set(listed.decode().split("\0")) - {""}):
        source = REPO / name
        if not source.is_file():
            continue  # deleted in the checkout but not yet in git
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    (dest / "packaging" / "debian").rename(dest / "debian")


class Machine:
    """A booted throwaway machine: systemd-nspawn -b of a root, in cgroups of its own (harness.own_cgroups)."""

    def __init__(self, root, log, suite):
        self.root = root
        self.suite = suite
        self.log = log
        self.name = f"adt-{uuid.uuid4().hex[:8]}"
        self.proc = None
        self.leader = None
        self.cgroups = []

    def boot(self):
        self.cgroups = harness.own_cgroups(self.name)
        enter = "".join(f"echo $$ > {d}/cgroup.procs && " for d in self.cgroups)
        argv = ["systemd-nspawn", "-q", "-D", str(self.root), "-b", "--register=no", "--keep-unit"]
        with open(self.log, "wb") as console:
            self.proc = subprocess.Popen(
                ["sh", "-c", f'{enter}exec "$@"', "sh", *argv, "--console=passive", "-M", self.name],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PATH": debroot.SYSTEM_PATH},
            )
        give_up = time.monotonic() + BOOT_TIMEOUT
        state = ""
        while state not in ("running", "degraded"):
            if self.proc.poll() is not None:
                pytest.fail(f"systemd-nspawn exited {self.proc.returncode} while booting:\n{self.console()}")
            if time.monotonic() > give_up:
                pytest.fail(f"the testbed is {state or 'not up'} after {BOOT_TIMEOUT}s:\n{self.console()}")
            if self.leader is None:
                self.leader = next((pid for pid, comm in harness._children(self.proc.pid) if comm == "systemd"), None)
            else:
                state = self.run("systemctl is-system-running", check=False).stdout.strip()
            time.sleep(0.05)

    def run(self, script, check=True, timeout=60):
        """Run a shell script inside the booted machine as root (all its namespaces); return CompletedProcess."""
        argv = ["nsenter", "-t", str(self.leader), "-a", "env", "-i", f"PATH={INSIDE_PATH}", "LANG=C.UTF-8"]
        done = subprocess.run(
            [*argv, "sh", "-euc", script], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
        if check and done.returncode != 0:
            raise AssertionError(f"in the testbed: {script}\nexit {done.returncode}\n{done.stdout}\n{done.stderr}")
        return done

    def console(self):
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])
        return ""

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            if self.leader is not None:
                self.run("systemctl poweroff", check=False)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.leader, 9)
                self.proc.wait(10)
        harness.remove_cgroups(self.cgroups)


@pytest.fixture(params=SUITES)
def testbed(request, require_root, tmp_path):
    """A booted throwaway machine of the suite with autopkgtest installed, and not the package."""
    with debroot.fresh_root(TESTBED_PACKAGES, suite=request.param) as root:
        for unit in MASKED:
            (root / "etc/systemd/system" / unit).unlink(missing_ok=True)
            (root / "etc/systemd/system" / unit).symlink_to("/dev/null")
        bed = Machine(root, tmp_path / "console.log", request.param)
        try:
            bed.boot()
            yield bed
        finally:
            bed.close()


def summary_results(text):
    """Given autopkgtest's summary file, return {test name: result} (PASS, FAIL, SKIP, FLAKY, ...)."""
    results = {}
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if name:
            results[name] = rest.split()[0] if rest.split() else ""
    return results


def test_autopkgtests_pass_on_a_booted_debian(testbed, deb, capsys, record_property):
    debs = testbed.root / "var/tmp"
    shutil.copy(deb.deb, debs / deb.deb.name)
    source = testbed.root / "var/tmp/src/idle-reaper"
    stage_source(source)
    out = "/var/tmp/autopkgtest-out"
    started = time.monotonic()
    done = testbed.run(
        f"autopkgtest --output-dir {out} {IGNORE} /var/tmp/{deb.deb.name} /var/tmp/src/idle-reaper/ -- null",
        check=False,
        timeout=AUTOPKGTEST_TIMEOUT,
    )
    took = time.monotonic() - started
    summary_file = testbed.root / out.lstrip("/") / "summary"
    summary = summary_file.read_text() if summary_file.exists() else ""
    with capsys.disabled():
        print(f"\nautopkgtest on {testbed.suite} ({took:.0f}s, exit {done.returncode}):\n{summary}", end="")
    record_property("autopkgtest_summary", summary)
    log = f"autopkgtest exited {done.returncode}\n{done.stdout[-6000:]}\n{done.stderr[-6000:]}"
    results = summary_results(summary)
    assert results == {name: "PASS" for name in declared_tests()}, log
    assert done.returncode == 0, log
