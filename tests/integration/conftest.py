import os
import shutil

import pytest

from tests.integration.sshd import Sshd, Users, public_dir

USER_NAMES = ["irt-alice", "irt-bob", "irt-ci", "root"]


@pytest.fixture(scope="session")
def users():
    if os.geteuid() != 0:
        pytest.fail("the integration tests need root: they run a real sshd and make test users")
    made = Users(USER_NAMES)
    made.add_key("irt-alice", "robot")  # a second key of alice's, for ignore.keys
    yield made
    made.remove()


@pytest.fixture
def workdir():
    d = public_dir("irt-work-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def state_dir(workdir):
    return os.path.join(workdir, "state")


@pytest.fixture
def config(workdir):
    """Write the config file; return its path. Call again to change it."""
    path = os.path.join(workdir, "config.yaml")

    def write(text='inactivity_duration: 1h\nmin_session: 1s\naction: ["/bin/true"]\n'):
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o644)
        return path

    write()
    write.path = path
    return write


@pytest.fixture
def sshd(require_root, users, state_dir):
    server = Sshd(users, state_dir)
    yield server
    server.stop()
