"""The hook as pam_exec runs it: /usr/bin/python3 -I -S, PAM items in the environment, exit 0 whatever happens."""

import json
import os
import subprocess

import pytest

from reaper import hook
from tests.conftest import HOOK_ARGV, REPO, SYSTEM_PYTHON

# The environment pam_exec gives the hook: PAM items, sshd's variables, no PATH, no HOME.
PAM_ENV = {
    "PAM_TYPE": "open_session",
    "PAM_USER": "root",
    "PAM_SERVICE": "sshd",
    "PAM_RHOST": "127.0.0.1",
    "PAM_TTY": "ssh",
    "SSH_CONNECTION": "127.0.0.1 40000 127.0.0.1 22",
}


def run_hook(state_dir, **env):
    return subprocess.run([*HOOK_ARGV, "--state-dir", str(state_dir)],
                          env={**PAM_ENV, **env}, capture_output=True, text=True, timeout=10)  # fmt: skip


def read(state_dir):
    with open(os.path.join(state_dir, "state.json")) as f:
        return json.load(f)


def test_open_then_close_records_then_ends_the_lease(tmp_path):
    d = tmp_path / "s"
    assert run_hook(d).returncode == 0
    (lease,) = read(d)["leases"]
    assert lease["pid"] == os.getpid() and lease["user"] == "root" and lease["uid"] == 0
    assert run_hook(d, PAM_TYPE="close_session").returncode == 0
    st = read(d)
    assert st["leases"] == [] and st["closed"][0]["pid"] == os.getpid() and st["closed"][0]["end"] == "hook"


# The session's process (the hook's parent) holds the server side of a real TCP connection, as sshd's monitor
# does; it runs the hook through the launcher as pam_exec would.
HOLDER = """
import subprocess, sys
fd = int(sys.argv[1])
done = subprocess.run(sys.argv[2:], pass_fds=(fd,), env=eval(sys.stdin.read()))
print(__import__("os").getpid())
"""


def run_hook_holding_connection(state_dir, env_for):
    """Run the hook from a process holding one accepted TCP connection, with the environment
    env_for(client, server) gives. Return (holder pid, client, server) as (address, port) pairs."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        with client, accepted:
            fd = accepted.fileno()
            env = {**PAM_ENV, **env_for(client.getsockname(), listener.getsockname())}
            argv = [SYSTEM_PYTHON, "-I", "-c", HOLDER, str(fd), *HOOK_ARGV, "--state-dir", str(state_dir)]
            done = subprocess.run(argv, input=repr(env), pass_fds=(fd,), capture_output=True, text=True,
                                  check=True, timeout=10)  # fmt: skip
            return int(done.stdout), client.getsockname(), listener.getsockname()


def test_a_true_ssh_connection_is_recorded(tmp_path):
    d = tmp_path / "s"
    pid, client, server = run_hook_holding_connection(
        d, lambda c, s: {"SSH_CONNECTION": f"{c[0]} {c[1]} {s[0]} {s[1]}", "PAM_RHOST": c[0]}
    )
    (lease,) = read(d)["leases"]
    assert lease["pid"] == pid and lease["rhost"] == client[0]
    assert (lease["client"], lease["client_port"], lease["server"], lease["server_port"]) == (*client, *server)


def test_a_forged_ssh_connection_gives_way_to_the_sessions_socket(tmp_path):
    d = tmp_path / "s"
    forged = {"SSH_CONNECTION": "203.0.113.9 4444 127.0.0.1 22", "PAM_RHOST": "203.0.113.9"}
    pid, client, server = run_hook_holding_connection(d, lambda c, s: forged)
    (lease,) = read(d)["leases"]
    assert (lease["client"], lease["client_port"], lease["server"], lease["server_port"]) == (*client, *server)
    assert lease["rhost"] == client[0] and "203.0.113.9" not in json.dumps(lease)


def test_without_a_socket_ssh_connection_is_not_believed(tmp_path):
    d = tmp_path / "s"
    run_hook(d, SSH_CONNECTION="203.0.113.9 4444 127.0.0.1 22")
    (lease,) = read(d)["leases"]
    assert (lease["client"], lease["client_port"], lease["conn"]) == (None, None, None)
    assert lease["rhost"] == PAM_ENV["PAM_RHOST"], "PAM_RHOST is the item the PAM application set"


def test_a_close_is_matched_by_the_process_alone_and_keeps_what_the_open_found(tmp_path):
    d = tmp_path / "s"
    run_hook(d, PAM_USER="root")
    run_hook(d, PAM_TYPE="close_session", PAM_USER="daemon", PAM_RHOST="203.0.113.9", SSH_AUTH_INFO_0="x")
    st = read(d)
    (closed,) = st["closed"]
    assert st["leases"] == [] and closed["user"] == "root" and closed["uid"] == 0
    assert "daemon" not in json.dumps(st) and "203.0.113.9" not in json.dumps(st)


def test_fingerprint_matches_ssh_keygen(tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    algo, blob = (tmp_path / "k.pub").read_text().split()[:2]
    expected = subprocess.run(["ssh-keygen", "-lf", str(tmp_path / "k.pub")], capture_output=True, text=True,
                              check=True).stdout.split()[1]  # fmt: skip
    assert hook.key_fingerprint(f"publickey {algo} {blob}\n") == expected
    assert hook.key_fingerprint(f"password\npublickey {algo} {blob}\n") == expected
    assert hook.key_fingerprint("password\n") is None
    assert hook.key_fingerprint("publickey ssh-ed25519 !!!notbase64\n") is None
    assert hook.key_fingerprint(None) is None


def test_parse_args_takes_only_state_dir_and_config():
    assert hook.parse_args([]) == ("/run/idle-reaper", "/etc/idle-reaper/config.yaml")
    assert hook.parse_args(["--state-dir", "/x"]) == ("/x", "/etc/idle-reaper/config.yaml")
    assert hook.parse_args(["--state-dir=/y", "--config", "/c"]) == ("/y", "/c")
    with pytest.raises(ValueError):
        hook.parse_args(["--other"])


def test_the_environment_cannot_choose_the_state_dir(tmp_path):
    d, elsewhere = tmp_path / "s", tmp_path / "elsewhere"
    run_hook(d, IDLE_REAPER_STATE_DIR=str(elsewhere))
    assert (d / "state.json").exists() and not elsewhere.exists()


@pytest.mark.parametrize(
    "args, env",
    [
        (["--bogus"], {}),
        (["--state-dir", "/proc/1/nonexistent/x"], {}),
        ([], {"PAM_TYPE": "open_session", "SSH_CONNECTION": "garbage"}),
        ([], {"PAM_USER": "x" * 100000}),
    ],
)
def test_it_always_exits_0_and_prints_nothing(tmp_path, args, env):
    argv = args or ["--state-dir", str(tmp_path / "s")]
    done = subprocess.run([*HOOK_ARGV, *argv], env={**PAM_ENV, **env},
                          capture_output=True, text=True, timeout=10)  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_a_corrupt_state_file_is_left_alone_by_the_hook(tmp_path):
    d = tmp_path / "s"
    d.mkdir(mode=0o755)
    (d / "state.json").write_text("{corrupt")
    assert run_hook(d).returncode == 0
    assert (d / "state.json").read_text() == "{corrupt"


def test_the_open_path_imports_nothing_heavy(tmp_path):
    code = (
        f"import sys, os; sys.argv = ['pam-session', '--state-dir', {str(tmp_path / 's')!r}]; "
        f"sys.path.insert(0, {str(REPO)!r}); import reaper.hook; reaper.hook.main(); "
        "heavy = {'re', 'json', 'yaml', 'filelock', 'humanfriendly', 'hashlib', 'socket', 'logging', 'argparse', "
        "'ipaddress', 'subprocess', 'datetime'}; print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run([SYSTEM_PYTHON, "-I", "-c", code], env=PAM_ENV, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
