"""Shared fixtures. Tests that need root (sshd, users, PAM, nspawn) fail with a clear message without it."""

import os
import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
HOOK = REPO / "hooks" / "pam-session"
SYSTEM_PYTHON = "/usr/bin/python3"
SHIMS = REPO / "tests" / "shims"
LAUNCHER_SOURCE = REPO / "hooks" / "pam-session-launch.c"
# The static launcher that pam_exec runs, built for this checkout: it execs `python3 -I -S` on this tree's
# hook with a fixed environment, exactly as the package's build does for /usr/share/idle-reaper.
LAUNCHER = REPO / "build" / "hook" / "pam-session-launch"


def build_launcher(source=LAUNCHER_SOURCE, out=LAUNCHER, hook=HOOK):
    """Compile the launcher (musl, static) for `hook`, unless `out` is newer than the source. Return its path."""
    out = pathlib.Path(out)
    if out.exists() and out.stat().st_mtime >= source.stat().st_mtime:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    cmd = ["musl-gcc", "-static", "-Os", "-Wall", "-Wextra", "-Werror", f'-DHOOK="{hook}"', "-o", str(tmp), str(source)]
    subprocess.run(cmd, check=True)  # noqa: S603 - a fixed compiler command
    os.chmod(tmp, 0o755)
    os.rename(tmp, out)
    return out


# The hook exactly as pam_exec runs it (packaging/pam-configs/idle-reaper): the launcher, which runs the
# Python hook isolated (-I), without `site` (-S), with none of the PAM environment but a few checked names.
HOOK_ARGV = [str(build_launcher())]


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
