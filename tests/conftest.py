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
    """Compile the launcher (musl, static) for `hook`, unless `out` is newer than the source. Return its path.

    The compiler command is the Makefile's (`make launcher`), so the tests and `make test` build the same.
    """
    out = pathlib.Path(out)
    cmd = ["make", "-s", "--no-print-directory", "-C", str(REPO), "launcher"]
    cmd += [f"LAUNCHER_SOURCE={source}", f"LAUNCHER={out}", f"LAUNCHER_HOOK={hook}"]
    # Not an outer make's flags and jobserver (pytest under `make test`): this make stands on its own.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)  # noqa: S603 - a fixed build command
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (is musl-tools installed? `make deps`):\n{done.stderr}")
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
