"""The package and the code on Debian 13 (trixie), checked inside a trixie rootfs: trixie's own lintian, whose
checks bookworm's lacks, on the one .deb that `make deb` builds; and the unit tests on trixie's Python 3.13 with
its own libraries (filelock 3.18). tests/package/test_install.py runs the package's life on trixie too.
"""

import re
import shutil
import subprocess

import pytest

from tests import debroot
from tests.conftest import LAUNCHER, REPO
from tests.package.conftest import apt_install, put, sh

SUITE = "trixie"
# What the unit tests read or run from the tree (tests/conftest.py runs `make launcher`, and finds it up to date).
TREE = ("reaper", "hooks", "tests", "packaging", "pyproject.toml", "setup.cfg", "Makefile", "README.md")


@pytest.fixture
def trixie_root(require_root):
    """A fresh trixie root with lintian, make and python3-pytest (debroot.CHECK_PACKAGES)."""
    with debroot.fresh_root(debroot.CHECK_PACKAGES, suite=SUITE) as root:
        yield root


def test_trixies_lintian_passes_the_package_at_error_and_warning(trixie_root, deb, record_property):
    # The .changes and everything beside it: both .debs (the dbgsym too) and the .buildinfo.
    inside = trixie_root / "var/tmp/lintian"
    inside.mkdir()
    for path in deb.changes.parent.iterdir():
        shutil.copy(path, inside)
    # Both levels: `--fail-on warning` alone exits 0 on errors (aliased-location is an error).
    lint = f"lintian --version; lintian --color=never --fail-on error,warning --display-info {deb.changes.name}"
    done = debroot.nspawn(trixie_root, "sh", "-c", f"cd /var/tmp/lintian && {lint}", check=False, timeout=600)
    version, _, report = done.stdout.partition("\n")
    record_property("trixie_lintian", version)
    assert version.startswith("Lintian v2.12"), done.stdout  # 2.122 is trixie's
    tags = [line for line in report.splitlines() if re.match(r"^[EWIPOX]: ", line)]
    assert done.returncode == 0, done.stdout + done.stderr
    assert not [t for t in tags if t[0] in "EW"], tags


def test_unit_tests_pass_on_trixies_python(trixie_root, record_property):
    # At the same path as here: the checkout's launcher, built on the host (static, so it runs there as it
    # is), execs the hook by its absolute path.
    # The copy lives in the root's /var/tmp and is bound at the checkout's path: a checkout under /tmp would be
    # hidden by the tmpfs nspawn mounts there.
    tree = trixie_root / "var/tmp/checkout"
    tree.mkdir(parents=True)
    for item in TREE:
        subprocess.run(["cp", "-a", str(REPO / item), str(tree / item)], check=True)
    (tree / LAUNCHER.relative_to(REPO)).parent.mkdir(parents=True)
    subprocess.run(["cp", "-a", str(LAUNCHER), str(tree / LAUNCHER.relative_to(REPO))], check=True)
    for cache in tree.rglob("__pycache__"):
        shutil.rmtree(cache)
    run = f"cd {REPO} && python3 --version && python3 -m pytest -q -p no:cacheprovider tests/unit 2>&1"
    done = debroot.nspawn(trixie_root, "sh", "-c", run, check=False, timeout=600, binds=[(str(tree), str(REPO))])
    version = done.stdout.splitlines()[0] if done.stdout else ""
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    record_property("trixie_unit_tests", f"{version}: {summary}")
    assert version.startswith("Python 3.13"), done.stdout + done.stderr
    assert done.returncode == 0 and " passed" in summary and "failed" not in summary, done.stdout[-6000:]


def test_units_in_lib_are_what_made_trixies_purge_warn(require_root, deb_units_in_lib):
    # The package as bookworm's debhelper left it (issue 10): trixie's purge can't remove /lib/systemd/system,
    # which no other package there owns. So the purge checks of test_install.py can fail, and the move to
    # /usr/lib (packaging/debian/rules) is what keeps trixie's purge quiet.
    with debroot.fresh_root(suite=SUITE) as root:
        (path,) = put(root, deb_units_in_lib)
        out = sh(root, f"{apt_install(path)} >/dev/null; apt-get purge -y -q idle-reaper 2>&1").stdout
    assert "dpkg: warning: while removing idle-reaper, directory '/lib/systemd/system' not empty" in out, out
