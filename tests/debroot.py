"""Cached Debian root filesystems (bookworm, trixie) for the package and system tiers, and throwaway copies of them.

    root = debroot.cached_rootfs()          # bookworm; builds once (debootstrap, about a minute), then reused
    root = debroot.cached_rootfs(suite="trixie")
    with debroot.fresh_root(suite="trixie") as root:   # a writable copy for one test, gone afterwards
        debroot.nspawn(root, "apt-get", "install", "-y", "/var/tmp/idle-reaper.deb")

The cache lives outside the repo, under /var/cache/idle-reaper-tests/ (or $IDLE_REAPER_TEST_CACHE), one entry per
suite and package list: `trixie-minbase-<hash>/rootfs`. An entry is built in a temp dir and renamed into place,
under a lock, so two pytest processes never both build it and nobody sees a half-built one. It is never modified
after that: each test gets an overlayfs over it (about 3 ms; a full `cp -a` of the ~300 MB tree takes about 2 s), or
a copy where overlayfs can't be mounted.

debootstrap installs the packages of the list that PACKAGES has too; apt-get installs the rest inside afterwards.
debootstrap's own ordering fails to configure larger sets: trixie with lintian included failed on
ca-certificates and libnet-ssleay-perl, after five retries and four minutes.
"""

import contextlib
import fcntl
import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile
import uuid

SUITE = "bookworm"
# Every Debian release the package supports: Debian 12 and Debian 13.
SUITES = ("bookworm", "trixie")
VARIANT = "minbase"
# One rootfs serves both tiers: the package tier (install cycle) and the nspawn system tier (boot, sshd, logind).
PACKAGES = (
    "dbus",
    "iproute2",
    "libpam-modules",
    "libpam-runtime",
    "libpam-systemd",
    "openssh-server",
    "procps",
    "python3",
    "python3-filelock",
    "python3-humanfriendly",
    "python3-yaml",
    "systemd",
    "systemd-sysv",
)
# Checks that run inside a suite's own rootfs: its lintian, and the unit tests on its Python (tests/conftest.py
# runs `make launcher`, which finds the launcher up to date).
CHECK_PACKAGES = (*PACKAGES, "lintian", "make", "python3-pytest", "python3-prometheus-client")
# Bump when the way an entry is built changes, so old entries are not reused.
BUILD_FORMAT = "1"
CACHE_DIR = pathlib.Path(os.environ.get("IDLE_REAPER_TEST_CACHE", "/var/cache/idle-reaper-tests"))
SOURCES = "/etc/apt/sources.list.d/debian.sources"
FALLBACK_MIRROR = "http://deb.debian.org/debian"
DEBOOTSTRAP_TIMEOUT = 1200
# debootstrap and dpkg want sbin on PATH, and pyenv's python3 must not shadow Debian's.
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def mirror(sources=SOURCES):
    """Return the Debian mirror this machine's apt uses (the first URIs: line), or deb.debian.org."""
    with contextlib.suppress(OSError):
        for line in pathlib.Path(sources).read_text().splitlines():
            if line.startswith("URIs:") and line.split()[1:]:
                return line.split()[1]
    return FALLBACK_MIRROR


def cache_key(packages=PACKAGES, suite=SUITE):
    """Given a package list, return the short hash naming its cache entry (order and duplicates don't matter)."""
    text = "\n".join([BUILD_FORMAT, suite, VARIANT, *sorted(set(packages))])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def entry_dir(packages=PACKAGES, suite=SUITE):
    return CACHE_DIR / f"{suite}-{VARIANT}-{cache_key(packages, suite)}"


def cached_rootfs(packages=PACKAGES, suite=SUITE):
    """Return the path of the cached rootfs for this package list, building it first if it is missing.

    Never modify what this returns: every later test run reuses it. Use fresh_root() for a writable copy.
    """
    entry = entry_dir(packages, suite)
    rootfs = entry / "rootfs"
    if rootfs.is_dir():
        return rootfs
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # blocks while another process builds; it may build ours
        if rootfs.is_dir():
            return rootfs
        # Holding the lock, any build dir left over is from a process that died mid-build.
        for stale in CACHE_DIR.glob(".build-*"):
            shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(entry, ignore_errors=True)  # an entry without its rootfs is broken: build it again
        build = CACHE_DIR / f".build-{entry.name}-{os.getpid()}"
        try:
            _debootstrap(build / "rootfs", packages, suite)
            (build / "packages").write_text("\n".join(sorted(set(packages))) + "\n")
            os.rename(build, entry)
        finally:
            shutil.rmtree(build, ignore_errors=True)
    return rootfs


def _debootstrap(target, packages, suite):
    target.parent.mkdir(parents=True)
    base = sorted(set(packages) & set(PACKAGES))
    extra = sorted(set(packages) - set(PACKAGES))
    cmd = [
        "debootstrap",
        f"--variant={VARIANT}",
        *(["--include=" + ",".join(base)] if base else []),
        suite,
        str(target),
        mirror(),
    ]
    done = subprocess.run(
        cmd, env={**os.environ, "PATH": SYSTEM_PATH}, capture_output=True, text=True, timeout=DEBOOTSTRAP_TIMEOUT
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    if extra:
        # With the package lists debootstrap left; apt orders the configuring as debootstrap does not.
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *extra]
        nspawn(target, *install, timeout=DEBOOTSTRAP_TIMEOUT)
        nspawn(target, "apt-get", "clean")
    # The downloaded .debs (~50 MB) are of no use to the tests.
    for deb in (target / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()


@contextlib.contextmanager
def fresh_root(packages=PACKAGES, parent=None, copy=False, suite=SUITE, lower=None):
    """Yield a writable rootfs for one test, from the cache; unmount and delete it afterwards.

    It is an overlayfs over the cached rootfs, or a `cp -a` copy with copy=True or where overlayfs fails.
    Its directory name is unique, because systemd-nspawn derives the machine name from it. With `lower` (a
    root that another fresh_root() yielded and still holds, say), it is over that instead of the cache.
    """
    lower = lower or cached_rootfs(packages, suite)
    work = pathlib.Path(tempfile.mkdtemp(prefix="idle-reaper-root-", dir=parent))
    root = work / f"deb-{uuid.uuid4().hex[:12]}"
    mounted = False
    try:
        if not copy:
            (work / "upper").mkdir()
            (work / "ovl-work").mkdir()
            root.mkdir()
            options = f"lowerdir={lower},upperdir={work / 'upper'},workdir={work / 'ovl-work'}"
            mounted = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(root)]).returncode == 0
            if not mounted:
                root.rmdir()
        if not mounted:
            subprocess.run(["cp", "-a", "--reflink=auto", str(lower), str(root)], check=True)
        yield root
    finally:
        if mounted and subprocess.run(["umount", str(root)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(root)], check=False)  # something still holds it; detach
        shutil.rmtree(work, ignore_errors=True)


def nspawn(root, *argv, check=True, timeout=300, env=None, binds=()):
    """Run a command in the rootfs (not booted: no systemd is running in it, as in an image build).

    Return the CompletedProcess with text stdout and stderr. env sets variables inside; binds are
    (host path, container path) pairs to bind-mount read-only.
    """
    cmd = ["systemd-nspawn", "-q", "-D", str(root), "--register=no", "--keep-unit", "--console=pipe"]
    for name, value in {"DEBIAN_FRONTEND": "noninteractive", **(env or {})}.items():
        cmd.append(f"--setenv={name}={value}")
    for host, inside in binds:
        cmd.append(f"--bind-ro={host}:{inside}")
    done = subprocess.run(
        [*cmd, "--", *argv],
        env={**os.environ, "PATH": SYSTEM_PATH},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"in {root}: {' '.join(argv)} exited {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        )
    return done
