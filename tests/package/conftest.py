"""Fixtures of the package tier: the .deb built once per session (and a later version to upgrade to), and
throwaway bookworm roots to install it in (tests/debroot.py)."""

import pathlib
import shutil
import struct
import subprocess
from dataclasses import dataclass

import pytest

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
def deb(tmp_path_factory):
    """The package as `make deb` builds it from this tree."""
    return build(tmp_path_factory.mktemp("deb"))


@pytest.fixture(scope="session")
def deb_upgrade(tmp_path_factory, deb):
    """The same tree built as a later version, to upgrade to."""
    return build(tmp_path_factory.mktemp("deb-upgrade"), deb.version + UPGRADE_SUFFIX)


@pytest.fixture
def root(require_root):
    """A fresh writable bookworm root (minbase, systemd not running in it), gone after the test."""
    with debroot.fresh_root() as path:
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
