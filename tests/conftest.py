"""Shared fixtures. Tests that need root (sshd, users, PAM, nspawn) fail with a clear message without it."""

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
HOOK = REPO / "hooks" / "pam-session"
SYSTEM_PYTHON = "/usr/bin/python3"
SHIMS = REPO / "tests" / "shims"
# The hook exactly as pam_exec runs it (packaging/pam-configs/idle-reaper): isolated, and without `site`,
# which the hook doesn't need and which costs a few ms of every login.
HOOK_ARGV = [SYSTEM_PYTHON, "-I", "-S", str(HOOK)]


def cli_env(**extra):
    """The environment for running idle-reaper in a test: a refusing `systemctl` first on PATH, so that a
    test that forgot to configure an action of its own can never power off the machine running it."""
    path = f"{SHIMS}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return {**os.environ, "PATH": path, **extra}


@pytest.fixture
def require_root():
    """Fail (never skip) when not root: these tests prove real parts work, and a skip would hide that."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (it runs a real sshd, PAM stack, users or systemd-nspawn); run as root")
