"""A real OpenSSH server on loopback with the hook in its PAM stack, and real test users, for integration tests.

/etc is left as it is: sshd runs in a private mount namespace where a copy of /etc/pam.d/sshd with our
pam_exec line is bind-mounted over the original (RECIPES.md). The PAM service is then still "sshd".
"""

import contextlib
import json
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
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


class SyslogCatcher:
    """A unix datagram socket that collects syslog messages, read by a thread so a sender never blocks."""

    def __init__(self, path):
        self.path = path
        self.messages = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(path)
        os.chmod(path, 0o666)  # as /dev/log: sshd's unprivileged children may log too
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append(data.decode("utf-8", "backslashreplace"))

    def lines(self, ident=None):
        """Every message so far ("<PRI>date ident[pid]: text"), or only those from `ident`."""
        found = list(self.messages)
        if ident is not None:
            found = [m for m in found if f" {ident}[" in m.split(": ", 1)[0] or f" {ident}:" in m]
        return found

    def close(self):
        self._stop.set()
        self._thread.join(2)
        self._sock.close()


CLONE_NEWNET = 0x40000000


def in_netns(path, make):
    """Call make() in a thread that joined the network namespace at `path`; return what it returns.

    Only that thread moves (setns), so a socket it makes lives in that namespace and the test process stays
    where it is. Python 3.11 has no os.setns, hence libc.
    """
    import ctypes

    result = {}

    def run():
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {path}")
            finally:
                os.close(fd)
            result["value"] = make()
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            result["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def dev_log_script(work, log_socket):
    """Shell commands that, in a private mount namespace, put `log_socket` at /dev/log.

    /dev is the host's devtmpfs, shared with every namespace, and this host has no /dev/log: creating one in it
    would change the host. So /dev becomes an overlay of itself, with an upper layer of our own holding a
    placeholder `log` for the socket to be bound over, and /dev's own submounts (pts, shm) bound back on top.
    """
    upper, scratch, merged = (os.path.join(work, "dev-" + n) for n in ("upper", "work", "merged"))
    for d in (upper, scratch, merged):
        os.mkdir(d, 0o755)
    open(os.path.join(upper, "log"), "w").close()  # noqa: SIM115 - an empty placeholder
    with open("/proc/self/mountinfo") as f:
        points = {line.split()[4] for line in f}
    subs = sorted((p for p in points if p.startswith("/dev/") and "\\" not in p), key=lambda p: p.count("/"))
    q = shlex.quote
    steps = [f"mount -t overlay overlay -o lowerdir=/dev,upperdir={q(upper)},workdir={q(scratch)} {q(merged)}"]
    steps += [f"mount --bind {q(p)} {q(merged + p.removeprefix('/dev'))}" for p in subs]
    steps += [f"mount --bind {q(log_socket)} {q(merged)}/log", f"mount --move {q(merged)} /dev"]
    return " && ".join(steps)


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


def hook_pam_line(state_dir):
    """Our hook's PAM line, as the package's profile has it, writing to `state_dir`."""
    return f"session optional pam_exec.so quiet {' '.join(HOOK_ARGV)} --state-dir {state_dir}"


def pam_dir_with(pam_d, line, placement="service", service="sshd", without=()):
    """Copy /etc/pam.d to `pam_d` with `line` added, and `service` as a copy of the stock sshd file. Return it.

    `placement` "service" puts the line at the end of the service's file; "common-session" appends it to
    common-session, as pam-auth-update does, and leaves the service's file as it is. The service's lines that
    name a module in `without` are left out.
    """
    if placement not in ("service", "common-session"):
        raise ValueError(f"placement {placement!r}: use 'service' or 'common-session'")
    line = line.rstrip("\n") + "\n" if line else ""
    with open("/etc/pam.d/sshd") as f:
        pam = "".join(t for t in f.readlines() if not any(m in t.split("#", 1)[0] for m in without))
    shutil.copytree("/etc/pam.d", pam_d, symlinks=True)
    if placement == "service":
        pam += line
    elif line:
        common = os.path.join(pam_d, "common-session")
        with open(common) as f:
            text = f.read()
        os.unlink(common)  # it may be a symlink: never write through it into the host's /etc
        with open(common, "w") as f:
            f.write(text.rstrip("\n") + "\n" + line)
    with open(os.path.join(pam_d, service), "w") as f:
        f.write(pam)
    return pam_d


class Sshd:
    """One sshd on 127.0.0.1 and ::1, with the hook writing to `state_dir`.

    `hook_line`: True adds our hook's pam_exec line, False adds none, and a string is added as the PAM line
    itself (the benchmarks compare logins with other hooks).
    `name`: run sshd through a symlink of that name; the PAM service is then that name too.
    `placement`: "service" appends the line to the end of the service's own file (after pam_env, so even the
    open hook sees the user's ~/.pam_environment); "common-session" appends it to common-session, where
    pam-auth-update puts it, and leaves the stock service file as it is (pam_loginuid before it, pam_env
    user_readenv=1 after it: Debian's real order).
    `syslog`: capture what sshd and the hook log through /dev/log (see syslog_lines()).
    `config`: sshd_config lines put first (sshd keeps the first value of a keyword, so these win).
    `loginuid`: give the listener this audit loginuid, as one started by hand from a login shell has (every
    connection's monitor inherits it before any login); by default it has none, as under systemd.
    `without`: PAM modules left out of the service's stack (container images often drop pam_loginuid).
    `netns`: run it in a network namespace of its own (loopback only). The live check sees only the TCP
    connections of the namespace it runs in, so a test that says "no session on this machine" is not upset by
    other SSH sessions here (another test run's container, say). Everything that must reach this sshd or see
    its connections runs under `enter` (clients, the CLI) or comes from connect().
    """

    def __init__(self, users, state_dir, hook_line=True, name="sshd", placement="service", syslog=False,
                 config="", loginuid=None, without=(), netns=False):  # fmt: skip
        self.users = users
        self.state_dir = state_dir
        self.dir = public_dir("irt-sshd-")
        self.port = free_port()
        self.clients = []
        host_key = os.path.join(self.dir, "host_ed25519")
        keygen(host_key)
        first = config.rstrip("\n") + "\n" if config else ""
        with open(os.path.join(self.dir, "sshd_config"), "w") as f:
            f.write(
                first + f"Port {self.port}\nListenAddress 127.0.0.1\nListenAddress ::1\nHostKey {host_key}\n"
                f"PidFile {self.dir}/sshd.pid\nUsePAM yes\nPasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\nPrintMotd no\nLogLevel VERBOSE\nStrictModes no\n"
                f"AuthorizedKeysFile {users.keys_dir}/%u\nExposeAuthInfo yes\nPermitRootLogin prohibit-password\n"
                "MaxSessions 20\n"
            )
        if hook_line is True:
            hook_line = hook_pam_line(state_dir)
        pam_d = pam_dir_with(os.path.join(self.dir, "pam.d"), hook_line or "", placement, name, without)
        binary = "/usr/sbin/sshd"
        if name != "sshd":
            binary = os.path.join(self.dir, name)
            os.symlink("/usr/sbin/sshd", binary)
        os.makedirs("/run/sshd", exist_ok=True)  # privilege separation dir
        self.log = open(os.path.join(self.dir, "sshd.log"), "w")  # noqa: SIM115 - closed in stop()
        script = f"mount --bind {pam_d} /etc/pam.d && "
        if netns:
            script += "ip link set lo up && "
        self.syslog = None
        if syslog:
            self.syslog = SyslogCatcher(os.path.join(self.dir, "log"))
            script += dev_log_script(self.dir, self.syslog.path) + " && "
        if loginuid is not None:
            script += f"echo {int(loginuid)} > /proc/self/loginuid && "
        self.binary = binary
        script += f"exec {binary} -D -e -f {self.dir}/sshd_config"
        unshare = ["unshare", "-m", *(["-n"] if netns else []), "--propagation", "private"]
        self.proc = subprocess.Popen([*unshare, "sh", "-c", script], stdout=self.log,
                                     stderr=subprocess.STDOUT)  # fmt: skip
        self._started(netns)

    def _started(self, netns):
        self.netns = f"/proc/{self.proc.pid}/ns/net" if netns else None
        # The argv prefix that runs a command where this sshd's connections are (nothing without netns).
        self.enter = ["nsenter", f"--net={self.netns}"] if netns else []
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), self.connect(timeout=1):
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not start: {self.read_log()}")
            time.sleep(0.02)

    def restart_listener(self, survivor):
        """Stop the listener and start another, as `systemctl restart ssh` does: the sessions live on, their
        processes now children of PID 1. The new one joins the old one's namespaces through `survivor`, a
        process that outlives it (a session's)."""
        self.proc.terminate()
        self.proc.wait(10)
        namespaces = ["--mount", *(["--net"] if self.netns else [])]
        argv = [
            "nsenter",
            f"--target={survivor}",
            *namespaces,
            self.binary,
            "-D",
            "-e",
            "-f",
            f"{self.dir}/sshd_config",
        ]
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)  # noqa: S603
        self._started(self.netns is not None)

    def processes(self):
        """The pids of the listener's children: one per connection (its monitor)."""
        found = []
        for entry in os.listdir("/proc"):
            with contextlib.suppress(OSError, IndexError):
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
                if int(stat[stat.rindex(b")") + 2 :].split()[1]) == self.proc.pid:
                    found.append(int(entry))
        return found

    def syslog_lines(self, ident="idle-reaper"):
        """What was logged to /dev/log in sshd's namespace (the hook, as `ident`), as raw syslog messages."""
        if self.syslog is None:
            raise RuntimeError("this sshd was started without syslog=True")
        return self.syslog.lines(ident)

    def read_log(self):
        with open(os.path.join(self.dir, "sshd.log")) as f:
            return f.read()

    def connect(self, timeout=10):
        """A TCP connection to this sshd from the test process (from inside its network namespace, if any)."""
        if self.netns is None:
            return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        return in_netns(self.netns, lambda: socket.create_connection(("127.0.0.1", self.port), timeout=timeout))

    def ssh_argv(self, label, *command, host="127.0.0.1", options=()):
        user = self.users[label]
        ssh = ["ssh", "-p", str(self.port), "-i", user.key, *CLIENT_OPTS, *options, f"{user.name}@{host}", *command]
        return [*self.enter, *ssh]

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
        if self.syslog:
            self.syslog.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def end(client, timeout=5):
    """Close a background ssh client the way a user does, and wait for it."""
    client.terminate()
    client.wait(timeout)


def idle_reaper(config, state_dir, *args, user=None, python=VENV_PYTHON, enter=()):
    """Run the CLI from the checkout (as `user` if given, under the argv prefix `enter`, such as an Sshd's
    `enter`). Return the CompletedProcess."""
    argv = [python, "-m", "reaper", "--config", config, "--state-dir", state_dir, *args]
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    argv = [*enter, *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO, env=cli_env())


def status(config, state_dir, user=None, enter=()):
    done = idle_reaper(config, state_dir, "status", "--json", user=user, enter=enter)
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
