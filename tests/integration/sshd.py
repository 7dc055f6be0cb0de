"""A real OpenSSH server on loopback with the hook in its PAM stack, and real test users, for integration tests.

/etc is left as it is: sshd runs in a private mount namespace where a copy of /etc/pam.d/sshd with our
pam_exec line is bind-mounted over the original (RECIPES.md). The PAM service is then still "sshd".
"""

import contextlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass

from tests.conftest import HOOK_ARGV, REPO, cli_env

VENV_PYTHON = str(REPO / ".venv" / "bin" / "python")
CLIENT_OPTS = [
    "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
    "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
]  # fmt: skip


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def public_dir(prefix):
    """A temp dir other users can read: status is run as a non-root user too."""
    d = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    os.chmod(d, 0o755)
    return d


def keygen(path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path], check=True)
    fingerprint = subprocess.run(["ssh-keygen", "-lf", path + ".pub"], capture_output=True, text=True, check=True)
    return fingerprint.stdout.split()[1]


@dataclass
class User:
    name: str
    key: str  # private key path
    fingerprint: str


class Users:
    """Test accounts made for the test session and removed after it."""

    def __init__(self, names):
        self.dir = public_dir("irt-keys-")
        self.users = {}
        self.keys_dir = os.path.join(self.dir, "authorized")
        os.mkdir(self.keys_dir, 0o755)
        for name in names:
            with contextlib.suppress(KeyError):
                pwd.getpwnam(name)
                subprocess.run(["userdel", "-r", name], capture_output=True)
            if name != "root":
                subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True)
            self.add_key(name, name)

    def add_key(self, user, label):
        """Give `user` one more key; return it as a User (name, key path, fingerprint)."""
        path = os.path.join(self.dir, label)
        fingerprint = keygen(path)
        with open(os.path.join(self.keys_dir, user), "a") as out, open(path + ".pub") as pub:
            out.write(pub.read())
        os.chmod(os.path.join(self.keys_dir, user), 0o644)
        self.users[label] = User(user, path, fingerprint)
        return self.users[label]

    def __getitem__(self, label):
        return self.users[label]

    def remove(self):
        for label, user in self.users.items():
            if label == user.name and user.name != "root":
                subprocess.run(["userdel", "-r", user.name], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


class Sshd:
    """One sshd on 127.0.0.1 and ::1, with the hook writing to `state_dir`.

    `hook_line`: True adds our hook's pam_exec line, False adds none, and a string is added as the PAM line
    itself (the benchmarks compare logins with other hooks).
    `name`: run sshd through a symlink of that name; the PAM service is then that name too.
    """

    def __init__(self, users, state_dir, hook_line=True, name="sshd"):
        self.users = users
        self.state_dir = state_dir
        self.dir = public_dir("irt-sshd-")
        self.port = free_port()
        self.clients = []
        host_key = os.path.join(self.dir, "host_ed25519")
        keygen(host_key)
        with open(os.path.join(self.dir, "sshd_config"), "w") as f:
            f.write(
                f"Port {self.port}\nListenAddress 127.0.0.1\nListenAddress ::1\nHostKey {host_key}\n"
                f"PidFile {self.dir}/sshd.pid\nUsePAM yes\nPasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\nPrintMotd no\nLogLevel VERBOSE\nStrictModes no\n"
                f"AuthorizedKeysFile {users.keys_dir}/%u\nExposeAuthInfo yes\nPermitRootLogin prohibit-password\n"
                "MaxSessions 20\n"
            )
        with open("/etc/pam.d/sshd") as f:
            pam = f.read()
        if hook_line is True:
            pam += f"session optional pam_exec.so quiet {' '.join(HOOK_ARGV)} --state-dir {state_dir}\n"
        elif hook_line:
            pam += hook_line.rstrip("\n") + "\n"
        pam_d = os.path.join(self.dir, "pam.d")
        shutil.copytree("/etc/pam.d", pam_d, symlinks=True)
        with open(os.path.join(pam_d, name), "w") as f:
            f.write(pam)
        binary = "/usr/sbin/sshd"
        if name != "sshd":
            binary = os.path.join(self.dir, name)
            os.symlink("/usr/sbin/sshd", binary)
        os.makedirs("/run/sshd", exist_ok=True)  # privilege separation dir
        self.log = open(os.path.join(self.dir, "sshd.log"), "w")  # noqa: SIM115 - closed in stop()
        script = f"mount --bind {pam_d} /etc/pam.d && exec {binary} -D -e -f {self.dir}/sshd_config"
        self.proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                                     stdout=self.log, stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not start: {self.read_log()}")
            time.sleep(0.02)

    def read_log(self):
        with open(os.path.join(self.dir, "sshd.log")) as f:
            return f.read()

    def ssh_argv(self, label, *command, host="127.0.0.1", options=()):
        user = self.users[label]
        return ["ssh", "-p", str(self.port), "-i", user.key, *CLIENT_OPTS, *options, f"{user.name}@{host}", *command]

    def run(self, label, *command, **kw):
        """Log in, run a command, log out. Return the CompletedProcess."""
        return subprocess.run(self.ssh_argv(label, *command, **kw), capture_output=True, text=True, timeout=30)

    def start(self, label, *command, ready=None, **kw):
        """Log in in the background. With `ready`, wait until the remote prints that line (the login is done)."""
        client = subprocess.Popen(self.ssh_argv(label, *command, **kw), stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        self.clients.append(client)
        if ready is not None:
            line = client.stdout.readline().strip()
            if line != ready:
                client.kill()
                raise RuntimeError(f"ssh login failed: {line!r} {client.stderr.read()} {self.read_log()[-2000:]}")
        return client

    def stop(self):
        for client in self.clients:
            if client.poll() is None:
                client.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    client.wait(5)
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def end(client, timeout=5):
    """Close a background ssh client the way a user does, and wait for it."""
    client.terminate()
    client.wait(timeout)


def idle_reaper(config, state_dir, *args, user=None, python=VENV_PYTHON):
    """Run the CLI from the checkout (as `user` if given). Return the CompletedProcess."""
    argv = [python, "-m", "reaper", "--config", config, "--state-dir", state_dir, *args]
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO, env=cli_env())


def status(config, state_dir, user=None):
    done = idle_reaper(config, state_dir, "status", "--json", user=user)
    if done.returncode != 0:
        raise AssertionError(f"status failed ({done.returncode}): {done.stderr}")
    return json.loads(done.stdout)


def wait_for(predicate, timeout=10, interval=0.05):
    """Poll until predicate() is truthy; return its value, or raise after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
        time.sleep(interval)
