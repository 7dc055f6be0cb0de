"""Who may do what: modes hold, and an unprivileged user can read status but change nothing."""

import json
import os
import pwd
import stat
import subprocess

import pytest

from reaper.state import leases
from tests.conftest import HOOK_ARGV, REPO, SYSTEM_PYTHON, cli_env
from tests.integration.sshd import idle_reaper, status
from tests.reliability.conftest import due_config

DEBIAN_CLI = [SYSTEM_PYTHON, "-I", "-c", f"import sys; sys.path.insert(0, {str(REPO)!r}); "
              "import filelock; assert filelock.__version__.startswith('3.9'), filelock.__version__; "
              "from reaper.cli import main; sys.exit(main(sys.argv[1:]))"]  # fmt: skip


def hook(state_dir, pam_type="open_session", user=None, **env):
    argv = [*HOOK_ARGV, "--state-dir", state_dir]
    if user:
        argv = ["/usr/sbin/runuser", "-u", user, "--", *argv]
    env = {"PAM_TYPE": pam_type, "PAM_USER": "root", "PAM_SERVICE": "sshd", "PAM_RHOST": "127.0.0.1",
           "PAM_TTY": "ssh", "SSH_CONNECTION": "127.0.0.1 40001 127.0.0.1 22", **env}  # fmt: skip
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=10)


def modes(state_dir):
    return (
        stat.S_IMODE(os.stat(state_dir).st_mode),
        stat.S_IMODE(os.stat(leases.state_path(state_dir)).st_mode),
        stat.S_IMODE(os.stat(leases.lock_path(state_dir)).st_mode),
        {os.stat(p).st_uid for p in (state_dir, leases.state_path(state_dir), leases.lock_path(state_dir))},
    )


@pytest.mark.parametrize("filelock_from", ["debian-3.9", "pypi"])
def test_modes_hold_after_hooks_and_ticks(require_root, config, state_dir, filelock_from):
    for pam_type in ("open_session", "close_session"):
        assert hook(state_dir, pam_type).returncode == 0
        assert modes(state_dir) == (0o755, 0o644, 0o600, {0})
    os.chmod(leases.lock_path(state_dir), 0o644)  # as another filelock version might leave it
    if filelock_from == "pypi":
        done = idle_reaper(config.path, state_dir, "reap")
    else:
        done = subprocess.run([*DEBIAN_CLI, "--config", config.path, "--state-dir", state_dir, "reap"],
                              capture_output=True, text=True, cwd="/", env=cli_env())  # fmt: skip
    assert done.returncode in (0, 4), done.stderr
    assert modes(state_dir) == (0o755, 0o644, 0o600, {0})


@pytest.fixture
def recorded(require_root, users, config, state_dir):
    """A state with one recorded session, as root's hook wrote it; the test's user is irt-bob."""
    assert hook(state_dir).returncode == 0
    with open(leases.state_path(state_dir), "rb") as f:
        return f.read()


def as_bob(*argv):
    return subprocess.run(["runuser", "-u", "irt-bob", "--", *argv], capture_output=True, text=True, timeout=30)


def test_a_non_root_user_can_read_status(recorded, config, state_dir):
    st = status(config.path, state_dir, user="irt-bob")
    assert [s["user"] for s in st["sessions"]] == ["root"]


def test_a_non_root_user_cannot_write_the_state_file(recorded, state_dir):
    done = as_bob(SYSTEM_PYTHON, "-c", f"open({leases.state_path(state_dir)!r}, 'w')")
    assert done.returncode != 0 and "Permission denied" in done.stderr
    done = as_bob(SYSTEM_PYTHON, "-c", f"open({os.path.join(state_dir, 'state.json.1.tmp')!r}, 'w')")
    assert done.returncode != 0 and "Permission denied" in done.stderr
    with open(leases.state_path(state_dir), "rb") as f:
        assert f.read() == recorded


def test_a_non_root_user_cannot_open_or_lock_the_lock_file(recorded, state_dir):
    code = (f"import fcntl, os\nfd = os.open({leases.lock_path(state_dir)!r}, os.O_RDONLY)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)")  # fmt: skip
    done = as_bob(SYSTEM_PYTHON, "-c", code)
    assert done.returncode != 0 and "Permission denied" in done.stderr


@pytest.mark.parametrize("pam_type", ["open_session", "close_session"])
def test_a_non_root_user_cannot_forge_or_end_a_session(recorded, state_dir, pam_type):
    done = hook(state_dir, pam_type, user="irt-bob", PAM_USER="irt-bob")
    assert done.returncode == 0  # the hook never fails, but it changes nothing
    with open(leases.state_path(state_dir), "rb") as f:
        assert f.read() == recorded


def test_a_non_root_user_cannot_change_what_the_reaper_runs(recorded, users, config, state_dir, workdir):
    done = as_bob(SYSTEM_PYTHON, "-c", f"open({config.path!r}, 'a')")
    assert done.returncode != 0 and "Permission denied" in done.stderr
    # Their own config and their own reap run nothing: reap needs root, and root's reaper reads root's config.
    own = os.path.join(workdir, "bob.yaml")
    pwned = os.path.join(workdir, "pwned")
    with open(own, "w") as f:
        f.write(due_config(pwned))
    os.chown(own, pwd.getpwnam("irt-bob").pw_uid, -1)
    done = idle_reaper(own, state_dir, "reap", user="irt-bob")
    assert done.returncode == 1 and "reap needs root" in done.stderr
    assert not os.path.exists(pwned)
    with open(leases.state_path(state_dir), "rb") as f:
        assert f.read() == recorded


SHELL_BAIT = "$(touch {p}) `touch {p}` ; touch {p} | touch {p}"


def test_pam_values_never_reach_a_shell(require_root, workdir, state_dir):
    bait = os.path.join(workdir, "from-pam")
    value = SHELL_BAIT.format(p=bait)
    done = hook(state_dir, PAM_USER=value, PAM_RHOST=value, PAM_TTY=value, SSH_CONNECTION=value,
                SSH_AUTH_INFO_0=f"publickey ssh-ed25519 {value}")  # fmt: skip
    assert done.returncode == 0
    assert hook(state_dir, "close_session", PAM_USER=value, SSH_CONNECTION=value).returncode == 0
    assert not os.path.exists(bait)
    with open(leases.state_path(state_dir)) as f:
        assert json.load(f)["closed"][0]["user"] == value


def test_the_action_runs_as_an_argv_list_without_a_shell(require_root, config, state_dir, workdir):
    bait = os.path.join(workdir, "from-action")
    value = SHELL_BAIT.format(p=bait)
    config(f'inactivity_duration: 1s\nmin_session: off\naction: ["/bin/echo", "{value}"]\n')
    done = idle_reaper(config.path, state_dir, "reap")
    assert done.returncode == 0, done.stderr
    assert f"the action finished: {value}" in done.stderr  # echoed back as one literal argument
    assert not os.path.exists(bait)
