"""Fixtures of the package tier: the .deb built once per session (and a later version to upgrade to), and
throwaway roots of every supported Debian (bookworm, trixie) to install that one .deb in (tests/debroot.py)."""

import concurrent.futures
import os
import pathlib
import shutil
import struct
import subprocess
from dataclasses import dataclass

import pytest

import reaper
from tests import debroot
from tests.conftest import REPO

BUILD_DEB = REPO / "packaging" / "build-deb"
# A version above the tree's, for upgrade tests: build-deb adds it to the changelog of a staged copy only.
UPGRADE_SUFFIX = "+upgrade1"
PACKAGE = "idle-reaper"
# ELF program header types (elf(5)): a PT_INTERP segment names the dynamic loader the kernel starts first.
PT_LOAD = 1
PT_INTERP = 3


@dataclass(frozen=True)
class Build:
    version: str
    deb: pathlib.Path
    changes: pathlib.Path


def build(out, version=None):
    """Run packaging/build-deb into out; return the Build. Fail with the build's output if it fails."""
    cmd = [str(BUILD_DEB), *(["--version", version] if version else []), str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    deb = pathlib.Path(done.stdout.strip().splitlines()[-1])
    version = deb.name.split("_")[1]
    (changes,) = out.glob(f"{PACKAGE}_{version}_*.changes")
    return Build(version, deb, changes)


@pytest.fixture(scope="session")
def builds(tmp_path_factory):
    """Both builds of the tree, started together: on two cores that takes about half the wall time of one
    after the other, and most runs of this tier need both."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        yield {
            "deb": pool.submit(build, tmp_path_factory.mktemp("deb")),
            "upgrade": pool.submit(build, tmp_path_factory.mktemp("deb-upgrade"), reaper.__version__ + UPGRADE_SUFFIX),
        }


@pytest.fixture(scope="session")
def deb(builds):
    """The package as `make deb` builds it from this tree."""
    return builds["deb"].result()


@pytest.fixture(scope="session")
def deb_upgrade(builds):
    """The same tree built as a later version, to upgrade to."""
    return builds["upgrade"].result()


def units_in_lib(b, out):
    """Repack a Build with its units in /lib/systemd/system, where bookworm's debhelper put them before the
    package moved them to /usr/lib (packaging/debian/rules); return the repacked Build (no .changes)."""
    tree = out / "tree"
    subprocess.run(["dpkg-deb", "-R", str(b.deb), str(tree)], check=True)
    (tree / "lib" / "systemd").mkdir(parents=True)
    (tree / "usr/lib/systemd/system").rename(tree / "lib/systemd/system")
    (tree / "usr/lib/systemd").rmdir()
    md5sums = tree / "DEBIAN" / "md5sums"
    md5sums.write_text(md5sums.read_text().replace("  usr/lib/systemd/system/", "  lib/systemd/system/"))
    deb = out / b.deb.name
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb)], check=True, capture_output=True)
    return Build(b.version, deb, None)


@pytest.fixture(scope="session")
def deb_units_in_lib(tmp_path_factory, deb):
    """The package as bookworm's debhelper laid it out unchanged: the units in /lib/systemd/system."""
    return units_in_lib(deb, tmp_path_factory.mktemp("deb-lib"))


@pytest.fixture(scope="session", params=debroot.SUITES)
def suite(request):
    """Each Debian release the package supports: a test that installs the package runs once on each."""
    return request.param


@pytest.fixture
def root(require_root, suite):
    """A fresh writable root of the suite (minbase, systemd not running in it), gone after the test."""
    with debroot.fresh_root(suite=suite) as path:
        yield path


@pytest.fixture(scope="session")
def installed_image(suite, deb):
    """The suite's root with the package installed as an image builder does, once per run: never modify it."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (it runs systemd-nspawn); run as root")
    with debroot.fresh_root(suite=suite) as image:
        (path,) = put(image, deb)
        sh(image, apt_install(path))
        (image / path.lstrip("/")).unlink()
        yield image


@pytest.fixture
def installed(require_root, installed_image):
    """A fresh writable root of the suite with the package installed (an overlay over installed_image), for
    tests of what an install leaves, or of what comes after it: each saves an install of about 5 s."""
    with debroot.fresh_root(lower=installed_image) as path:
        yield path


def put(root, *builds):
    """Copy the .debs into root's /var/tmp; return their paths as seen inside."""
    inside = []
    for b in builds:
        shutil.copy(b.deb, root / "var" / "tmp" / b.deb.name)
        inside.append(f"/var/tmp/{b.deb.name}")
    return inside


def sh(root, script, check=True, timeout=300):
    """Run a shell script in root (set -eu), as in an image build: no systemd running. Return CompletedProcess."""
    return debroot.nspawn(root, "/bin/sh", "-euc", script, check=check, timeout=timeout)


def apt_install(*paths):
    """The command an image builder runs, as a shell fragment."""
    return "apt-get install -y -q --no-install-recommends " + " ".join(paths)


def elf_segment_types(path):
    """Given an ELF file, return the p_type of each of its program headers, in order (elf(5))."""
    data = pathlib.Path(path).read_bytes()
    assert data[:4] == b"\x7fELF", f"{path} is not an ELF file"
    order = "<" if data[5] == 1 else ">"  # EI_DATA: 1 little-endian, 2 big-endian
    if data[4] == 2:  # EI_CLASS 2: ELF64
        (phoff,) = struct.unpack_from(order + "Q", data, 0x20)
        phentsize, phnum = struct.unpack_from(order + "HH", data, 0x36)
    else:
        (phoff,) = struct.unpack_from(order + "I", data, 0x1C)
        phentsize, phnum = struct.unpack_from(order + "HH", data, 0x2A)
    return [struct.unpack_from(order + "I", data, phoff + i * phentsize)[0] for i in range(phnum)]
