"""The hook driven through a real PAM stack (pam_exec) by python-pam: fast, no sshd."""

import json
import os

import pytest

from tests.integration.pamstack import SERVICE, PamStack
from tests.integration.sshd import status

CONN = "192.0.2.10 50123 127.0.0.1 22"


@pytest.fixture
def pam_stack(require_root, state_dir):
    stack = PamStack(state_dir)
    yield stack
    stack.remove()


def read(state_dir):
    with open(os.path.join(state_dir, "state.json")) as f:
        return json.load(f)


def test_open_records_what_the_system_confirms_and_close_ends_it(pam_stack, state_dir):
    # The session's process (python-pam here, not an sshd monitor) holds no TCP connection: SSH_CONNECTION
    # claims one, and the hook doesn't believe it. PAM_RHOST is the item the application set.
    auth_info = "publickey ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n"
    env = {"SSH_CONNECTION": CONN, "SSH_AUTH_INFO_0": auth_info}
    driver = pam_stack.start(user="root", steps=["open", "wait-stdin", "close"], rhost="192.0.2.10", env=env)
    try:
        (lease,) = _wait_lease(state_dir)
        assert lease["pid"] == driver.pid
        assert {k: lease[k] for k in ("user", "uid", "service", "rhost", "tty", "conn", "client", "client_port",
                                      "server", "server_port", "key", "source")} == {  # fmt: skip
            "user": "root", "uid": 0, "service": SERVICE, "rhost": "192.0.2.10", "tty": "ssh", "conn": None,
            "client": None, "client_port": None, "server": None, "server_port": None,
            "key": "SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU", "source": "hook",
        }  # fmt: skip
        assert isinstance(lease["pid_start"], int) and lease["opened"] > 0 and lease["boot"]
    finally:
        out, _ = driver.communicate("\n", timeout=30)
    assert json.loads(out) == {"auth": True, "steps": [0, 0]}
    st = read(state_dir)
    assert st["leases"] == [] and st["closed"][0]["end"] == "hook"


def _wait_lease(state_dir):
    from tests.integration.sshd import wait_for

    return wait_for(lambda: os.path.exists(os.path.join(state_dir, "state.json")) and read(state_dir)["leases"])


def test_the_session_shows_in_status_with_its_pam_service(pam_stack, state_dir, config):
    config(f"inactivity_duration: 1h\nmin_session: off\nservices: [{SERVICE}]\n")
    driver = pam_stack.start(user="root", steps=["open", "wait-stdin", "close"], env={"SSH_CONNECTION": CONN})
    try:
        _wait_lease(state_dir)
        st = status(config.path, state_dir)
        assert st["state"] == "active"
        (s,) = st["sessions"]
        assert (s["user"], s["service"], s["counted"], s["pid"]) == ("root", SERVICE, True, driver.pid)
    finally:
        driver.communicate("\n", timeout=30)


def test_a_service_not_listed_is_ignored_with_the_reason(pam_stack, state_dir, config):
    driver = pam_stack.start(user="root", steps=["open", "wait-stdin", "close"])
    try:
        _wait_lease(state_dir)
        (s,) = status(config.path, state_dir)["sessions"]
        assert not s["counted"] and s["reason"] == f"service {SERVICE} is not in services"
    finally:
        driver.communicate("\n", timeout=30)


def test_a_failing_hook_never_fails_the_session(require_root, workdir):
    unusable = os.path.join(workdir, "file-not-dir")
    with open(unusable, "w"):
        pass
    stack = PamStack(os.path.join(unusable, "state"))
    try:
        assert stack.run(user="root") == {"auth": True, "steps": [0, 0]}
    finally:
        stack.remove()


def test_sessions_of_one_process_are_matched_open_to_close(pam_stack, state_dir):
    for _ in range(3):
        assert pam_stack.run(user="root")["steps"] == [0, 0]
    st = read(state_dir)
    assert st["leases"] == [] and len(st["closed"]) >= 1
