import os

import pytest

from tests.integration.conftest import config, state_dir, users, workdir  # noqa: F401 - shared fixtures
from tests.integration.sshd import Sshd


@pytest.fixture
def sshd(require_root, users, state_dir):  # noqa: F811
    server = Sshd(users, state_dir)
    yield server
    server.stop()


@pytest.fixture
def marker(workdir):  # noqa: F811
    """A file the test action writes: its existence means the action ran."""
    return os.path.join(workdir, "acted")


def due_config(marker, extra=""):
    """A config whose action is due at once on this machine (booted more than a second ago)."""
    return f'inactivity_duration: 1s\nmin_session: off\naction: ["/bin/sh", "-c", "echo ran >> {marker}"]\n{extra}'
