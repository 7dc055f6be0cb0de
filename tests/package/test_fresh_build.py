"""A fresh machine builds the package: `make deb` in a minimal Debian (debootstrap --variant=minbase) with only
make and git added, for bookworm and for trixie, from a git clone of this checkout.

`make deb` has to install its own build dependencies there (the Makefile's deps target runs apt-get), as it would
on a new CI machine; so these need Debian's archive. The two suites build at the same time, each in a fresh
overlay of its cached rootfs (tests/debroot.py). apt's downloads are kept between runs in a cache of their own,
/var/cache/idle-reaper-tests/apt-archives/<suite>, bind-mounted as the machine's /var/cache/apt/archives (by one
run at a time): a warm run still installs every package, but downloads nothing it already has.

The clone is of the checkout as it is (tracked changes and new files too, not ignored ones), committed to a
temporary repository, not to the checkout's: what a clean clone of it would be once committed.
"""

import concurrent.futures
import contextlib
import fcntl
import os
import pathlib
import subprocess
import tempfile
import time
from dataclasses import dataclass

import pytest

import reaper
from tests import debroot
from tests.conftest import REPO

SUITES = ("bookworm", "trixie")
# minbase has neither: a CI machine that clones the tree and runs make has at least these.
PACKAGES = ("git", "make")
APT_ARCHIVES = debroot.CACHE_DIR / "apt-archives"
BUILD_TIMEOUT = 1500
INSIDE = "/root/idle-reaper"
BUNDLE = "/var/tmp/idle-reaper.bundle"


@dataclass(frozen=True)
class FreshBuild:
    suite: str
    returncode: int
    output: str
    debs: list  # the dist/ .debs, as names
    fields: dict  # Package, Version, Architecture of the main .deb, from dpkg-deb inside
    seconds: float


def _git(*args, env=None, cwd=REPO):
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout.strip()


def snapshot_bundle(dest):
    """Commit the checkout as it is to a temporary repository and bundle it at dest; return dest.

    The commit is made with a temporary index, so the checkout's index, branches and refs are left as they are.
    """
    with tempfile.TemporaryDirectory(prefix="idle-reaper-snapshot-") as tmp:
        ident = {"GIT_AUTHOR_NAME": "idle-reaper tests", "GIT_AUTHOR_EMAIL": "tests@invalid"}
        ident |= {"GIT_COMMITTER_NAME": ident["GIT_AUTHOR_NAME"], "GIT_COMMITTER_EMAIL": ident["GIT_AUTHOR_EMAIL"]}
        env = {**os.environ, **ident, "GIT_INDEX_FILE": f"{tmp}/index"}
        _git("read-tree", "HEAD", env=env)
        _git("add", "-A", env=env)
        tree = _git("write-tree", env=env)
        commit = _git("commit-tree", tree, "-p", "HEAD", "-m", "the checkout as it is, for a fresh build", env=env)
        repo = f"{tmp}/src.git"
        _git("init", "-q", "--bare", "-b", "main", repo)
        _git("push", "-q", repo, f"{commit}:refs/heads/main")
        _git("bundle", "create", "-q", str(dest), "HEAD", "main", cwd=repo)
    return dest


@contextlib.contextmanager
def apt_archives(suite):
    """Yield nspawn options that bind the suite's kept apt downloads, or none while another run has them.

    apt in the machine locks its archives directory and fails rather than waits when another apt holds it, so a
    second run at the same time (another pytest, say) downloads into its own overlay instead.
    """
    APT_ARCHIVES.mkdir(parents=True, exist_ok=True)
    with open(APT_ARCHIVES / f".{suite}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield []
            return
        (APT_ARCHIVES / suite).mkdir(exist_ok=True)
        yield [f"--bind={APT_ARCHIVES / suite}:/var/cache/apt/archives"]


def build_fresh(suite, bundle):
    """In a fresh overlay of the suite's minbase + make + git rootfs: clone the bundle, run make deb."""
    started = time.monotonic()
    with debroot.fresh_root(PACKAGES, suite=suite) as root, apt_archives(suite) as binds:
        (root / BUNDLE.lstrip("/")).write_bytes(pathlib.Path(bundle).read_bytes())
        script = (
            f"git clone -q {BUNDLE} {INSIDE} && cd {INSIDE} && make deb"
            " && ls dist && dpkg-deb -f dist/idle-reaper_*_$(dpkg --print-architecture).deb"
            " Package Version Architecture"
        )
        argv = ["systemd-nspawn", "-q", "-D", str(root), "--register=no", "--keep-unit", "--console=pipe"]
        argv += ["--setenv=DEBIAN_FRONTEND=noninteractive", *binds]
        done = subprocess.run(
            [*argv, "--", "/bin/bash", "-euo", "pipefail", "-c", script],
            env={**os.environ, "PATH": debroot.SYSTEM_PATH},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=BUILD_TIMEOUT,
        )
        debs = sorted(p.name for p in (root / INSIDE.lstrip("/") / "dist").glob("*.deb"))
    fields = dict(line.split(": ", 1) for line in done.stdout.splitlines() if line.split(": ", 1)[0] in _FIELDS)
    return FreshBuild(suite, done.returncode, done.stdout, debs, fields, time.monotonic() - started)


_FIELDS = ("Package", "Version", "Architecture")


@pytest.fixture(scope="module")
def fresh_builds(tmp_path_factory):
    """Start both suites' builds at once; return {suite: a Future of its FreshBuild}."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (debootstrap, systemd-nspawn); run as root")
    bundle = snapshot_bundle(tmp_path_factory.mktemp("fresh") / "idle-reaper.bundle")
    with concurrent.futures.ThreadPoolExecutor(len(SUITES)) as pool:
        yield {suite: pool.submit(build_fresh, suite, bundle) for suite in SUITES}


@pytest.mark.parametrize("suite", SUITES)
def test_make_deb_on_a_fresh_minimal_debian_installs_its_build_deps_and_builds(fresh_builds, suite, capsys):
    built = fresh_builds[suite].result(timeout=BUILD_TIMEOUT + 60)
    with capsys.disabled():
        print(f"\nfresh {suite} (minbase + make + git): make deb exited {built.returncode} in {built.seconds:.0f}s")
    assert built.returncode == 0, f"make deb on a fresh {suite} failed:\n{built.output[-8000:]}"
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout
    assert f"idle-reaper_{reaper.__version__}_{arch.strip()}.deb" in built.debs, built.debs
    assert built.fields == {"Package": "idle-reaper", "Version": reaper.__version__, "Architecture": arch.strip()}
