"""A real PAM stack with the hook in it, without sshd and without touching /etc.

A copy of /etc/pam.d plus a test service is bind-mounted over /etc/pam.d in a private mount namespace, and
python-pam (tests/integration/pam_driver.py) opens and closes sessions there. The hook's parent is then the
driver process, as it would be the sshd monitor under sshd.
"""

import json
import os
import shutil
import subprocess
import tempfile

from tests.conftest import HOOK_ARGV, REPO
from tests.integration.sshd import VENV_PYTHON, public_dir

SERVICE = "irt-pam"
DRIVER = str(REPO / "tests" / "integration" / "pam_driver.py")


class PamStack:
    def __init__(self, state_dir, hook_argv=None):
        self.dir = public_dir("irt-pam-")
        self.pam_d = os.path.join(self.dir, "pam.d")
        shutil.copytree("/etc/pam.d", self.pam_d, symlinks=True)
        hook = hook_argv or [*HOOK_ARGV, "--state-dir", state_dir]
        with open(os.path.join(self.pam_d, SERVICE), "w") as f:
            f.write(
                "auth sufficient pam_permit.so\naccount sufficient pam_permit.so\n"
                # As in sshd's stack, pam_exec is not the only session module, so being optional means it
                # can't fail the session (PAM itself refuses some huge items before our hook runs).
                "session required pam_permit.so\n"
                f"session optional pam_exec.so quiet {' '.join(hook)}\n"
            )

    def argv(self, user="irt-pam-user", steps=("open", "close"), rhost="127.0.0.1", tty="ssh", env=None,
             service=SERVICE):  # fmt: skip
        spec = {"user": user, "service": service, "rhost": rhost, "tty": tty, "env": env or {}, "steps": list(steps)}
        fd, spec_file = tempfile.mkstemp(dir=self.dir, suffix=".json")  # too long for an argument at times
        with os.fdopen(fd, "w") as f:
            json.dump(spec, f)
        script = 'mount --bind "$1" /etc/pam.d && shift && exec "$@"'
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", self.pam_d,
                VENV_PYTHON, DRIVER, spec_file]  # fmt: skip

    def run(self, **kw):
        """Open and close (or whatever `steps` says) one PAM session; return the driver's results."""
        done = subprocess.run(self.argv(**kw), capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise AssertionError(f"pam driver failed: {done.stderr}")
        return json.loads(done.stdout)

    def start(self, **kw):
        """Start a driver in the background (its steps may wait on stdin); return the Popen."""
        return subprocess.Popen(self.argv(**kw), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip

    def remove(self):
        shutil.rmtree(self.dir, ignore_errors=True)
