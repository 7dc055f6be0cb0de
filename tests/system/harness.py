"""Throwaway Debian machines booted under systemd-nspawn, with the built .deb installed, for the system tier.

    with Image.build(deb) as image:                   # cached rootfs + the .deb + test users, once per run
                                                      #   (suite="trixie": the same .deb on Debian 13)
        with image.machine("inactivity_duration: 20s\n") as m:
            m.boot()                                  # boots the real systemd, waits until it is running
            session = m.ssh("dev")                    # a real SSH login to the machine's sshd (also: forward(),
            m.status(), m.status(user="dev")          #   control_master()); status --json read inside
            session.close()
            end = m.session_end("dev")                # when the hook recorded the close (CLOCK_BOOTTIME)
            timing = m.wait_poweroff(end + 20)        # a Poweroff: deadline, action_at, exited_at, late
        with image.machine(config, sshd_options="PasswordAuthentication yes\n") as m:
            m.boot()
            stranger = m.stranger("silent")           # a connection that never logs in, held (re-opened when dropped)

Each machine is an overlayfs over the image, which is an overlayfs over the cached rootfs of tests/debroot.py, so
a machine costs milliseconds and the package is installed once per run. The machine shares the host's network;
its sshd listens on a free port on 127.0.0.1. The host and the machine share one kernel, so CLOCK_BOOTTIME, which
every decision of the reaper uses, is the same clock on both sides: the harness measures deadlines and poweroffs
in it. Deadline-precision benchmarks (issue 6) import this module too.
"""

import atexit
import contextlib
import json
import os
import pathlib
import queue
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass

from tests import debroot

REPO = pathlib.Path(__file__).resolve().parents[2]
DIST = REPO / "dist"
DEB_ENV = "IDLE_REAPER_DEB"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SYSTEM_PATH = debroot.SYSTEM_PATH
# Commands run inside get a clean environment: the host's (pyenv, the venv) means nothing in there.
INSIDE_ENV = ["env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"]
CLIENT_OPTS = [
    "-F", "/dev/null",
    "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
    "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
]  # fmt: skip
# Console units with no use in a test machine. Each holds inotify instances, which all machines share with the host
# (fs.inotify.max_user_instances, 128 by default): with ten machines up, they are what runs out first.
CONSOLE_UNITS = ["systemd-ask-password-console.path", "systemd-ask-password-wall.path", "console-getty.service"]
# Test accounts in every image: two developers and a control-plane account that configs may ignore.
USERS = ("dev", "dev2", "probe")
BOOT_TIMEOUT = 60
CONFIG_PATH = "/etc/idle-reaper/config.yaml"
# How the reaper says it is about to run the action (reaper/commands/reap.py); used to time the action from the journal.
ACTION_LOG = "running the action"
# journalctl matches for everything about idle-reaper: the unit (systemd's lines too), the reaper, the PAM hook.
JOURNAL_MATCHES = [
    "_SYSTEMD_UNIT=idle-reaper.service", "+", "UNIT=idle-reaper.service", "+", "SYSLOG_IDENTIFIER=idle-reaper",
]  # fmt: skip


def now():
    """Return CLOCK_BOOTTIME: the clock the reaper decides by, the same on the host and in the machine."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def find_deb():
    """Return the .deb to test: $IDLE_REAPER_DEB, else the newest dist/idle-reaper_*.deb (`make deb`)."""
    if os.environ.get(DEB_ENV):
        return pathlib.Path(os.environ[DEB_ENV])
    debs = sorted(DIST.glob("idle-reaper_*.deb"), key=lambda p: p.stat().st_mtime)
    if not debs:
        raise FileNotFoundError(f"no {DIST}/idle-reaper_*.deb: run `make deb` first (or set {DEB_ENV})")
    return debs[-1]


def build_deb(out):
    """Build the .deb from this tree with packaging/build-deb into out; return its path."""
    done = _run([str(REPO / "packaging" / "build-deb"), str(out)], timeout=600)
    if done.returncode != 0:
        output = f"{done.stdout[-3000:]}{done.stderr[-3000:]}"
        raise AssertionError(f"packaging/build-deb failed ({done.returncode}):\n{output}")
    (deb,) = pathlib.Path(out).glob("idle-reaper_*.deb")
    return deb


_machines = set()  # machines not yet closed: killed at exit if a run is interrupted


@atexit.register
def _close_all():
    for machine in list(_machines):
        machine.close()


_ports_given = set()
_ports_lock = threading.Lock()


def free_port():
    """Return a free TCP port on 127.0.0.1 that this process has not handed out before."""
    with _ports_lock:
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in _ports_given:
                _ports_given.add(port)
                return port


def free_udp_port():
    """Return a free UDP port on 127.0.0.1 that this process has not handed out before (for mosh-server)."""
    with _ports_lock:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in _ports_given:
                _ports_given.add(port)
                return port


def _run(argv, **kwargs):
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    return subprocess.run(argv, env={**os.environ, "PATH": SYSTEM_PATH}, **kwargs)


def _stat_fields(pid):
    """Return (comm, fields after comm) of /proc/PID/stat, or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    comm = stat[stat.index(b"(") + 1 : stat.rindex(b")")].decode(errors="replace")
    return comm, stat[stat.rindex(b")") + 2 :].split()


def _children(pid):
    """Return [(child pid, comm)] of a process, from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            got = _stat_fields(entry)
            if got and int(got[1][1]) == pid:
                out.append((int(entry), got[0]))
    return out


def inotify_note():
    """Say how many inotify instances root holds against the limit: a machine that runs short fails units."""
    used = 0
    for fd_dir in pathlib.Path("/proc").glob("[0-9]*/fd"):
        with contextlib.suppress(OSError):
            if fd_dir.parent.stat().st_uid == 0:
                used += sum(1 for fd in fd_dir.iterdir() if os.readlink(fd) == "anon_inode:inotify")
    limit = pathlib.Path("/proc/sys/fs/inotify/max_user_instances").read_text().strip()
    return f"\n(inotify instances held by root: {used} of fs.inotify.max_user_instances {limit})"


def own_cgroups(name):
    """Return new cgroup directories, one per hierarchy systemd uses, for one machine under ours.

    systemd-nspawn --keep-unit makes the container's cgroup tree under its own cgroup (payload/). Machines started
    from one cgroup would share that tree, and their systemds would manage each other's units; so each machine's
    nspawn is moved into a cgroup of its own first.
    """
    ours = {}
    for line in pathlib.Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        ours[controllers] = path.lstrip("/")
    base = pathlib.Path("/sys/fs/cgroup")
    if (base / "cgroup.controllers").exists():  # cgroup v2 only
        places = [base / ours.get("", "")]
    else:  # hybrid: systemd's own v1 hierarchy, and the v2 one if mounted
        places = [base / "systemd" / ours.get("name=systemd", "")]
        if (base / "unified" / "cgroup.procs").exists():
            places.append(base / "unified" / ours.get("", ""))
    made = []
    for place in places:
        (place / name).mkdir()
        made.append(place / name)
    return made


def remove_cgroups(dirs):
    """Remove cgroup directories made by own_cgroups(), children first (they are empty once the machine is gone)."""
    for top in dirs:
        for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def keygen(path):
    """Make an ed25519 key pair at path; return its SHA256 fingerprint."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True)
    listed = subprocess.run(["ssh-keygen", "-lf", f"{path}.pub"], capture_output=True, text=True, check=True)
    return listed.stdout.split()[1]


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    key: pathlib.Path  # private key, on the host
    fingerprint: str


@dataclass(frozen=True)
class Poweroff:
    """When a machine powered itself off, against when it should have, all in CLOCK_BOOTTIME seconds."""

    deadline: float  # when idle_seconds reached inactivity_duration
    action_at: float | None  # when the reaper logged that it runs the action (from the machine's journal)
    exited_at: float | None  # when the machine was gone (systemd-nspawn exited with status 0); None: still up
    suite: str = debroot.SUITE  # the Debian release the machine ran

    @property
    def late(self):
        """Seconds from the deadline to the machine being gone (negative: early); None if it didn't go."""
        return None if self.exited_at is None else self.exited_at - self.deadline

    @property
    def action_late(self):
        """Seconds from the deadline to the reaper running the action; None if it didn't."""
        return None if self.action_at is None else self.action_at - self.deadline

    def describe(self):
        if self.exited_at is None:
            return f"no poweroff within {now() - self.deadline:.1f}s after the deadline"
        action = "" if self.action_late is None else f", action ran {self.action_late:+.2f}s from it"
        return f"powered off {self.late:+.2f}s from the deadline{action}"


class Image:
    """The cached rootfs of a suite with the .deb installed (as an image builder would) and test users with SSH keys."""

    def __init__(self, root, workdir, deb, users, suite=debroot.SUITE):
        self.root = root
        self.workdir = workdir
        self.deb = deb
        self.users = users
        self.suite = suite

    @classmethod
    @contextlib.contextmanager
    def build(cls, deb=None, users=USERS, parent=None, suite=debroot.SUITE, packages=debroot.PACKAGES):
        """Yield an Image: an overlay over the suite's cached rootfs with the package installed; removed afterwards.

        `packages` picks the cached rootfs (tests/debroot.py): a variant with more packages is cached apart.
        """
        deb = pathlib.Path(deb) if deb else find_deb()
        workdir = pathlib.Path(tempfile.mkdtemp(prefix=f"irs-{suite}-", dir=parent))
        try:
            with debroot.fresh_root(packages, parent=workdir, suite=suite) as root:
                shutil.copy(deb, root / "var/tmp/idle-reaper.deb")
                debroot.nspawn(root, "apt-get", "install", "-y", "--no-install-recommends", "/var/tmp/idle-reaper.deb")
                (root / "var/tmp/idle-reaper.deb").unlink()
                script = "".join(f"useradd -m -s /bin/bash {name}\n" for name in users)
                debroot.nspawn(root, "sh", "-ec", script)
                debroot.nspawn(root, "systemctl", "mask", "--quiet", *CONSOLE_UNITS)
                made = {name: cls._add_user(root, workdir, name) for name in users}
                # A persistent journal survives the poweroff, so the host can read when the action ran.
                (root / "var/log/journal").mkdir(exist_ok=True)
                yield cls(root, workdir, deb, made, suite)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    @staticmethod
    def _add_user(root, workdir, name):
        fields = next(
            line.split(":") for line in (root / "etc/passwd").read_text().splitlines() if line.split(":")[0] == name
        )
        uid, gid = int(fields[2]), int(fields[3])
        key = workdir / f"key-{name}"
        fingerprint = keygen(key)
        ssh_dir = root / "home" / name / ".ssh"
        ssh_dir.mkdir(mode=0o700)
        shutil.copy(f"{key}.pub", ssh_dir / "authorized_keys")
        for path in (ssh_dir, ssh_dir / "authorized_keys"):
            os.chown(path, uid, gid)
        return User(name, uid, gid, key, fingerprint)

    def machine(self, config, name=None, sshd_options=""):
        """Return a Machine (not yet booted) over this image, with `config` as /etc/idle-reaper/config.yaml.

        `sshd_options` are sshd_config lines for this machine's sshd; they win over the harness's own.
        """
        return Machine(self, config, name, sshd_options)


class Machine:
    """One throwaway booted system: an overlay over an Image, booted with systemd-nspawn -b.

    Use it as a context manager: leaving it stops the machine if it still runs and removes everything.
    """

    def __init__(self, image, config, name=None, sshd_options=""):
        self.image = image
        self.name = name or f"irs-{uuid.uuid4().hex[:8]}"
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=image.workdir))
        self.root = self.dir / "root"
        self.port = free_port()
        self.config = config
        self.sshd_options = sshd_options
        self.proc = None
        self.leader = None  # the machine's PID 1 (systemd), as a host pid
        self.booted = None  # CLOCK_BOOTTIME when the machine's PID 1 started: what the reaper calls boot
        self.exited_at = None
        self.returncode = None
        self.stopped_by_host = None  # CLOCK_BOOTTIME when stop() asked it to shut down
        self._exited = threading.Event()
        self._mounted = False
        self._sessions = []
        self._strangers = []
        self.cgroups = []

    # --- lifecycle ---------------------------------------------------------------------------------------

    def __enter__(self):
        self.prepare()
        return self

    def __exit__(self, *exc):
        self.close()

    def prepare(self):
        """Mount the machine's overlay and write its config, its sshd port and nothing else."""
        _machines.add(self)
        for d in ("upper", "work"):
            (self.dir / d).mkdir()
        self.root.mkdir()
        options = f"lowerdir={self.image.root},upperdir={self.dir / 'upper'},workdir={self.dir / 'work'}"
        _run(["mount", "-t", "overlay", "overlay", "-o", options, str(self.root)], check=True)
        self._mounted = True
        (self.root / CONFIG_PATH.lstrip("/")).write_text(self.config)
        # sshd takes the first value it reads for a keyword: the scenario's own options come first.
        (self.root / "etc/ssh/sshd_config.d/idle-reaper-test.conf").write_text(
            f"{self.sshd_options}Port {self.port}\nListenAddress 127.0.0.1\nExposeAuthInfo yes\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nLogLevel VERBOSE\n"
        )

    def boot(self, timeout=BOOT_TIMEOUT):
        """Boot the machine and wait until systemd says it is running. Return the boot time (CLOCK_BOOTTIME)."""
        if not self._mounted:
            self.prepare()
        self.console = open(self.dir / "console.log", "wb")  # noqa: SIM115 - closed in close()
        self.cgroups = own_cgroups(f"{self.name}-{uuid.uuid4().hex[:8]}")
        enter = "".join(f"echo $$ > {d}/cgroup.procs && " for d in self.cgroups)
        argv = ["systemd-nspawn", "-q", "-D", str(self.root), "-b", "--register=no", "--keep-unit"]
        self.proc = subprocess.Popen(
            ["sh", "-c", f'{enter}exec "$@"', "sh", *argv, "--console=passive", "-M", self.name],
            stdin=subprocess.DEVNULL,
            stdout=self.console,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PATH": SYSTEM_PATH},
        )
        threading.Thread(target=self._watch, name=f"watch-{self.name}", daemon=True).start()
        give_up = now() + timeout
        while self.leader is None:
            self._check_up("while booting")
            self.leader = next((pid for pid, comm in _children(self.proc.pid) if comm == "systemd"), None)
            if now() > give_up:
                raise TimeoutError(f"{self.name}: no systemd under systemd-nspawn after {timeout}s{self._tail()}")
            time.sleep(0.02)
        self.booted = int(_stat_fields(self.leader)[1][19]) / CLK_TCK
        state = ""
        while state not in ("running", "degraded"):
            self._check_up("while booting")
            state = self.inside(["systemctl", "is-system-running"], check=False).stdout.strip()
            if now() > give_up:
                raise TimeoutError(f"{self.name}: system state {state!r} after {timeout}s{self._tail()}")
            time.sleep(0.05)
        if state == "degraded":
            failed = self.inside(["systemctl", "--failed", "--no-pager", "--plain"], check=False).stdout
            raise AssertionError(f"{self.name} booted degraded:\n{failed}{inotify_note()}")
        return self.booted

    def boot_again(self, timeout=BOOT_TIMEOUT):
        """Boot the same machine once more after it went down (powered itself off, or was stopped): its
        overlay, and so its disk (/var, /etc, the journal), is kept for the machine's life, as a VM's disk is
        across a stop and a start. Return the new boot time (CLOCK_BOOTTIME)."""
        if self.proc is None or self.running:
            raise AssertionError(f"{self.name}: boot_again() is for a machine that booted and went down")
        self.console.close()
        remove_cgroups(self.cgroups)
        self.proc = self.leader = self.booted = self.exited_at = self.returncode = self.stopped_by_host = None
        self._exited = threading.Event()
        return self.boot(timeout)

    def _watch(self):
        self.returncode = self.proc.wait()
        self.exited_at = now()
        self._exited.set()

    def _check_up(self, what):
        if self._exited.is_set():
            raise AssertionError(f"{self.name}: systemd-nspawn exited ({self.returncode}) {what}{self._tail()}")

    @property
    def running(self):
        return self.proc is not None and not self._exited.is_set()

    @property
    def powered_off(self):
        """True if the machine shut itself down (nspawn exited 0 without the host asking)."""
        return self._exited.is_set() and self.returncode == 0 and self.stopped_by_host is None

    def wait_exit(self, timeout):
        """Wait up to timeout seconds for the machine to be gone; return True if it is."""
        return self._exited.wait(max(0.0, timeout))

    def wait_poweroff(self, deadline, late_limit=75.0):
        """Wait until the machine is gone or late_limit seconds past the deadline; return a Poweroff.

        late_limit is generous on purpose: a late poweroff is then measured, not just reported as missing.
        """
        self.wait_exit(deadline + late_limit - now())
        if self._exited.is_set() and self.stopped_by_host is None and self.returncode != 0:
            raise AssertionError(f"{self.name}: systemd-nspawn exited {self.returncode}{self._tail()}")
        exited = self.exited_at if self.powered_off else None
        return Poweroff(deadline, self.action_time(), exited, self.image.suite)

    def stop(self, timeout=30):
        """Shut the machine down from the host (SIGTERM to our systemd-nspawn: an orderly halt)."""
        if not self.running:
            return
        self.stopped_by_host = now()
        self.proc.send_signal(signal.SIGTERM)
        if not self.wait_exit(timeout):
            self.kill()

    def kill(self):
        """Kill the machine: SIGKILL to its PID 1 ends its whole PID namespace, then nspawn exits."""
        if self.running:
            if self.stopped_by_host is None:
                self.stopped_by_host = now()
            with contextlib.suppress(ProcessLookupError):
                if self.leader:
                    os.kill(self.leader, signal.SIGKILL)
            if not self.wait_exit(10):
                self.proc.kill()
                self.wait_exit(10)

    def close(self):
        """Stop the machine if it still runs, end our SSH clients, unmount and delete its files."""
        for stranger in self._strangers:
            stranger.stop()
        for session in self._sessions:
            session.kill()
        if self.proc is not None:
            self.stop()
            self.console.close()
            remove_cgroups(self.cgroups)
        if self._mounted:
            if _run(["umount", str(self.root)]).returncode != 0:
                _run(["umount", "-l", str(self.root)])
            self._mounted = False
        shutil.rmtree(self.dir, ignore_errors=True)
        _machines.discard(self)

    def _tail(self, lines=30):
        try:
            text = (self.dir / "console.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\nconsole:\n" + "\n".join(text[-lines:])

    # --- inside the machine -------------------------------------------------------------------------------

    def inside(self, argv, user=None, check=True, timeout=30, input=None):
        """Run argv inside the running machine (all its namespaces), as root or as a test user, no PAM session."""
        if self.leader is None:
            raise AssertionError(f"{self.name} is not booted")
        drop = []
        if user is not None:
            u = self.image.users[user]
            drop = ["setpriv", f"--reuid={u.uid}", f"--regid={u.gid}", "--init-groups", "--reset-env"]
        cmd = ["nsenter", "-t", str(self.leader), "-a", *INSIDE_ENV, *drop, *argv]
        done = _run(cmd, check=False, timeout=timeout, input=input, stdin=None if input else subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise AssertionError(
                f"{self.name}: {' '.join(argv)} exited {done.returncode}"
                f"\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
            )
        return done

    def inside_start(self, argv):
        """Start argv inside the running machine as root, in the background; return its Popen (nsenter's)."""
        cmd = ["nsenter", "-t", str(self.leader), "-a", *INSIDE_ENV, *argv]
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def status(self, user=None):
        """Return `idle-reaper status --json` as read inside the machine, as root or as a test user."""
        return json.loads(self.inside(["idle-reaper", "status", "--json"], user=user).stdout)

    def status_text(self, user=None):
        return self.inside(["idle-reaper", "status"], user=user).stdout

    def write_config(self, text):
        """Replace the config from inside the running machine, as an admin editing it would."""
        self.inside(["sh", "-c", f"cat > {CONFIG_PATH}.new && mv {CONFIG_PATH}.new {CONFIG_PATH}"], input=text)

    def state_file(self):
        """Return the reaper's state file as the machine sees it (/run/idle-reaper/state.json), or None."""
        path = pathlib.Path(f"/proc/{self.leader}/root/run/idle-reaper/state.json")
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None

    def session_end(self, user, timeout=10, after=None):
        """Return when the hook recorded the last close of `user`'s session (CLOCK_BOOTTIME), waiting for it.

        With `after`, only a close recorded after that time: an earlier session's close is already there while
        the hook of the one just ended may still be running."""
        give_up = now() + timeout
        while True:
            state = self.state_file() or {}
            ends = [r["closed"] for r in state.get("closed", []) if r.get("user") == user]
            ends = [t for t in ends if after is None or t > after]
            if ends:
                return max(ends)
            if now() > give_up:
                raise AssertionError(f"{self.name}: no close of {user}'s session in the state file: {state}")
            time.sleep(0.05)

    def journal(self, unit=None):
        """Return the machine's journal entries (dicts, as journalctl -o json gives them).

        By default everything about idle-reaper: its unit (systemd's lines too), the reaper's and the hook's lines;
        with `unit`, that unit's entries only.
        """
        matches = JOURNAL_MATCHES if unit is None else ["-u", unit]
        if self.running:
            done = self.inside(["journalctl", "-o", "json", "--no-pager", *matches], check=False)
        else:
            directory = str(self.root / "var/log/journal")
            done = _run(["journalctl", "-D", directory, "-o", "json", "--no-pager", *matches])
        return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]

    def journal_text(self):
        """Return the journal() lines as text, each stamped with seconds since the machine's boot."""
        offset = now() - time.clock_gettime(time.CLOCK_MONOTONIC)
        lines = []
        for e in self.journal():
            at = int(e["__MONOTONIC_TIMESTAMP"]) / 1e6 + offset - (self.booted or 0)
            lines.append(f"[{at:+7.2f}s] {e.get('SYSLOG_IDENTIFIER', '')}: {e.get('MESSAGE')}")
        return "\n".join(lines)

    def journal_lines(self, unit=None):
        """Return the journal() entries as (CLOCK_BOOTTIME, SYSLOG_IDENTIFIER, MESSAGE) tuples.

        journald stamps entries with CLOCK_MONOTONIC; the host converts with its own boottime-monotonic offset.
        """
        offset = now() - time.clock_gettime(time.CLOCK_MONOTONIC)
        return [
            (int(e["__MONOTONIC_TIMESTAMP"]) / 1e6 + offset, e.get("SYSLOG_IDENTIFIER", ""), str(e.get("MESSAGE")))
            for e in self.journal(unit)
        ]

    def action_time(self):
        """Return when the reaper logged that it runs the action (CLOCK_BOOTTIME), from the journal, or None."""
        return next((at for at, _, message in self.journal_lines() if ACTION_LOG in message), None)

    # --- SSH from the host ---------------------------------------------------------------------------------

    def ssh_argv(self, user, *options):
        u = self.image.users[user]
        return ["ssh", *CLIENT_OPTS, "-i", str(u.key), "-p", str(self.port), *options, f"{u.name}@127.0.0.1"]

    def ssh_start(self, user, command):
        """Start `ssh user@machine command` in the background and return the Session at once, logged in or not."""
        session = Session(self, [*self.ssh_argv(user), command], interactive=False)
        self._sessions.append(session)
        return session

    def ssh_from(self, netns, address, user):
        """Open a shell session as `user` from network namespace `netns` to the machine's sshd at `address`."""
        argv = ["ip", "netns", "exec", netns, *self.ssh_argv(user)[:-1], f"{user}@{address}", "exec sh"]
        session = Session(self, argv)
        self._sessions.append(session)
        session.wait_ready()
        return session

    def mosh(self, user):
        """Start a mosh session of `user` (see MoshClient) and return it once mosh-server has a client."""
        client = MoshClient(self, user)
        self._sessions.append(client)
        return client

    def mosh_entries(self):
        """Return the machine's utmp entries of mosh-server (reaper.evidence.mosh.parse), [] without utmp."""
        from reaper.evidence import mosh

        try:
            return mosh.parse(pathlib.Path(f"/proc/{self.leader}/root/run/utmp").read_bytes())
        except FileNotFoundError:
            return []

    def stranger(self, kind):
        """Start a Stranger of this kind against the machine's sshd and return it (see Stranger)."""
        stranger = Stranger(self, kind)
        self._strangers.append(stranger)
        return stranger

    def ssh_run(self, user, command, timeout=30):
        """Run one command over a fresh SSH connection; return the CompletedProcess."""
        return _run([*self.ssh_argv(user), command], timeout=timeout, stdin=subprocess.DEVNULL)

    def ssh(self, user, *options):
        """Open a shell session as `user` (a real SSH login) and return it once the shell answers."""
        session = Session(self, [*self.ssh_argv(user, *options), "exec sh"])
        self._sessions.append(session)
        session.wait_ready()
        return session

    def forward(self, user):
        """Open a forward-only connection (`ssh -N -L`) and return it once the forward listens."""
        local = free_port()
        options = ["-N", "-o", "ExitOnForwardFailure=yes", "-L", f"127.0.0.1:{local}:127.0.0.1:{self.port}"]
        session = Session(self, self.ssh_argv(user, *options), interactive=False)
        self._sessions.append(session)
        give_up = now() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", local)) == 0:
                    break
            if session.proc.poll() is not None or now() > give_up:
                raise AssertionError(f"ssh -N -L to {self.name} did not come up: {session.stderr_text()}")
            time.sleep(0.05)
        session.forward_port = local
        return session

    def control_master(self, user, channels=3):
        """Open one ControlMaster connection and `channels` shell channels over it (as VS Code does)."""
        sock = self.dir / f"cm-{user}"
        master = Session(
            self, self.ssh_argv(user, "-N", "-o", "ControlMaster=yes", "-o", f"ControlPath={sock}"), interactive=False
        )
        self._sessions.append(master)
        give_up = now() + 30
        while _run(["ssh", "-o", f"ControlPath={sock}", "-O", "check", "x"]).returncode != 0:
            if master.proc.poll() is not None or now() > give_up:
                raise AssertionError(f"ControlMaster to {self.name} did not come up: {master.stderr_text()}")
            time.sleep(0.05)
        master.channels = [
            self.ssh(user, "-o", "ControlMaster=no", "-o", f"ControlPath={sock}") for _ in range(channels)
        ]
        master.control_path = sock
        return master


class Session:
    """An ssh client process on the host. Interactive ones run a shell fed through stdin."""

    def __init__(self, machine, argv, interactive=True):
        self.machine = machine
        self.interactive = interactive
        self.channels = []
        self.control_path = None
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()/kill()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if interactive else subprocess.DEVNULL,
            stdout=subprocess.PIPE if interactive else subprocess.DEVNULL,
            stderr=self.stderr,
            text=True,
            bufsize=1,
        )
        self.lines = queue.Queue()
        self.closed_at = None  # CLOCK_BOOTTIME when the client had exited
        if interactive:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def stderr_text(self):
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")

    def wait_ready(self, timeout=30):
        self.run("true", timeout=timeout)

    def run(self, command, timeout=30):
        """Run a shell command in the session; return its output (stdout and stderr)."""
        marker = f"__done_{uuid.uuid4().hex}__"
        try:
            self.proc.stdin.write(f"{{ {command}\n}} 2>&1; echo {marker}\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise AssertionError(f"the SSH session is gone: {self.stderr_text()}") from None
        out = []
        give_up = now() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, give_up - now()))
            except queue.Empty:
                raise AssertionError(f"no answer in the SSH session within {timeout}s: {''.join(out)}") from None
            if line is None:
                raise AssertionError(f"the SSH session ended: {''.join(out)}{self.stderr_text()}")
            if line.strip() == marker:
                return "".join(out)
            out.append(line)

    def close(self, timeout=30):
        """Disconnect as a user would (exit the shell, Ctrl-C a forward, `ssh -O exit` a master); wait for it."""
        for channel in self.channels:
            channel.close(timeout)
        if self.interactive:
            with contextlib.suppress(BrokenPipeError, OSError):
                self.proc.stdin.write("exit\n")
                self.proc.stdin.close()
        elif self.control_path is not None:
            _run(["ssh", "-o", f"ControlPath={self.control_path}", "-O", "exit", "x"])
        else:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.closed_at = now()
        return self.proc.returncode

    def kill(self):
        """End the client now, if it still runs (cleanup)."""
        for channel in self.channels:
            channel.kill()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()


class MoshClient:
    """A mosh session: mosh-server started over SSH as `mosh` starts it (it prints its port and key, detaches, and
    the SSH session ends), then mosh-client on a pseudo-terminal of the host, run inside the machine (the
    image variant with mosh has it; the host need not). `type()` sends a line; `output` is what came back."""

    def __init__(self, machine, user, timeout=30):
        import fcntl
        import pty
        import struct
        import termios

        self.machine = machine
        port = free_udp_port()
        done = machine.ssh_run(user, f"LANG=C.UTF-8 mosh-server new -s -p {port} -l LANG=C.UTF-8 2>&1")
        connect = [line.split() for line in done.stdout.splitlines() if line.startswith("MOSH CONNECT ")]
        detached = [line for line in done.stdout.splitlines() if "detached, pid = " in line]
        if done.returncode != 0 or not connect or not detached:
            raise AssertionError(f"mosh-server did not start: {done.returncode}\n{done.stdout}{done.stderr}")
        _, _, self.port, key = connect[0]
        self.server_pid = int(detached[0].split("pid = ")[1].rstrip("]").strip())
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # mosh-client needs a size
        env = ["env", "-i", "PATH=/usr/bin:/bin", "LANG=C.UTF-8", "TERM=xterm", f"MOSH_KEY={key}"]
        argv = ["nsenter", "-t", str(machine.leader), "-a", *env, "mosh-client", "127.0.0.1", self.port]
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
        os.close(slave)
        self.output = b""
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, args=(self.master,), daemon=True)
        self._reader.start()
        give_up = now() + timeout
        while not any(e["attached"] for e in machine.mosh_entries()):
            if self.proc.poll() is not None or now() > give_up:
                raise AssertionError(f"mosh-client did not attach: {self.output[-500:]!r}")
            time.sleep(0.1)

    def _read(self, master):
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            with self._lock:
                self.output += chunk

    def type(self, line):
        if self.master is None:
            raise AssertionError("mosh-client was killed")
        os.write(self.master, line.encode() + b"\r")

    def client_pid(self):
        """The host pid of mosh-client (nsenter's child), or None."""
        return next((pid for pid, comm in _children(self.proc.pid) if comm == "mosh-client"), None)

    def kill(self):
        """SIGKILL mosh-client: it tells mosh-server nothing (cleanup, and the vanished client of a test)."""
        pid = self.client_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        # Once only: kill() runs again at cleanup, and a second close of the number would close whatever file
        # another thread's machine has opened under it since (seen: a session's stderr, EBADF at its close).
        master, self.master = self.master, None
        self._reader.join(10)  # mosh-client gone, its reads end (EIO): only then is the number free to close
        if master is not None and not self._reader.is_alive():
            with contextlib.suppress(OSError):
                os.close(master)


class Netns:
    """A network namespace of our own, joined to the host's by a veth pair with addresses on both ends, so that
    a client in it can vanish: `link_down()` takes its end down and nothing more (no FIN, no RST) reaches the
    other side. Deleted on exit. Names start with irt-lg-; nothing on the host's own interfaces changes."""

    def __init__(self):
        tag = uuid.uuid4().hex[:6]
        self.name = f"irt-lg-{tag}"
        self.host_dev, self.ns_dev = f"irtlg{tag}h", f"irtlg{tag}n"
        used = _run(["ip", "-o", "addr"]).stdout
        while True:
            net = f"10.{random.randint(200, 254)}.{random.randint(0, 255)}.{random.randrange(0, 256, 4)}"
            prefix = net.rsplit(".", 1)[0] + "."
            if prefix not in used:
                break
        base = int(net.rsplit(".", 1)[1])
        self.host_addr, self.ns_addr = f"{prefix}{base + 1}", f"{prefix}{base + 2}"

    def __enter__(self):
        steps = [
            ["ip", "netns", "add", self.name],
            ["ip", "link", "add", self.host_dev, "type", "veth", "peer", "name", self.ns_dev, "netns", self.name],
            ["ip", "addr", "add", f"{self.host_addr}/30", "dev", self.host_dev],
            ["ip", "link", "set", self.host_dev, "up"],
            ["ip", "-n", self.name, "addr", "add", f"{self.ns_addr}/30", "dev", self.ns_dev],
            ["ip", "-n", self.name, "link", "set", self.ns_dev, "up"],
            ["ip", "-n", self.name, "link", "set", "lo", "up"],
        ]
        try:
            for step in steps:
                _run(step, check=True)
        except BaseException:
            self.__exit__()
            raise
        return self

    def link_down(self):
        _run(["ip", "-n", self.name, "link", "set", self.ns_dev, "down"], check=True)

    def __exit__(self, *exc):
        _run(["ip", "netns", "del", self.name])
        _run(["ip", "link", "del", self.host_dev])  # gone with the namespace already, normally


# A stranger's password prompt: the first answer is a wrong password; later prompts are never answered, until
# the ssh client that asked is gone. IRS_ASKED is a directory made at the first prompt, "again" in it at the next.
ASKPASS = """#!/bin/sh
if mkdir "$IRS_ASKED" 2>/dev/null; then echo not-the-password; exit 0; fi
: > "$IRS_ASKED/again"
while kill -0 "$PPID" 2>/dev/null; do sleep 0.2; done
exit 1
"""


TCP_ESTABLISHED = 1  # the st field of /proc/net/tcp


def _tcp_state(pid):
    """Return the state of process pid's TCP socket (as /proc/net/tcp numbers it), or None if it has none."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in pathlib.Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[len("socket:[") : -1])
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    return int(fields[3], 16)
    return None


class Stranger:
    """A client of the machine's sshd that never logs in, held open, and re-opened whenever sshd drops it.

    It stands for the attack `while :; do (exec 3<>/dev/tcp/VM/22; sleep 125); done`, which keeps a pre-auth
    connection open at all times although sshd drops each one after LoginGraceTime. The kinds:
      - "silent": connects, reads sshd's identification and never sends one of its own;
      - "banner": sends `SSH-2.0-irt` and stops there, in the middle of the key exchange;
      - "failed-auth": a real ssh client as "dev" whose key is refused and whose first password is wrong, then
        waits at the next password prompt; the machine's sshd needs `PasswordAuthentication yes`.

    `connections` holds [opened, ended] (CLOCK_BOOTTIME; ended None while held) for each connection that got as far
    as its kind goes: past sshd's identification, into the key exchange, or refused once and waiting.
    """

    KINDS = ("silent", "banner", "failed-auth")
    POLL = 0.1

    def __init__(self, machine, kind):
        if kind not in self.KINDS:
            raise ValueError(f"unknown stranger {kind!r}: one of {self.KINDS}")
        self.machine = machine
        self.kind = kind
        self.connections = []
        self.refused = 0  # failed-auth: connections in which sshd refused the wrong password
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"stranger-{kind}-{machine.name}", daemon=True)
        self._thread.start()

    def current(self):
        """Return the index of the connection held now, or None between connections."""
        with self._lock:
            if self.connections and self.connections[-1][1] is None:
                return len(self.connections) - 1
            return None

    def stop(self):
        self._stop.set()
        self._thread.join(10)

    def _opened(self):
        with self._lock:
            self.connections.append([now(), None])

    def _ended(self):
        with self._lock:
            if self.connections and self.connections[-1][1] is None:
                self.connections[-1][1] = now()

    def _loop(self):
        while not self._stop.is_set() and self.machine.running:
            try:
                if self.kind == "failed-auth":
                    self._hold_ssh(len(self.connections))
                else:
                    self._hold_socket()
            except OSError:
                pass  # refused or reset: sshd is not up (yet, or any more); try again while the machine runs
            finally:
                self._ended()
            self._stop.wait(self.POLL)

    def _hold_socket(self):
        with socket.create_connection(("127.0.0.1", self.machine.port), timeout=10) as sock:
            seen = b""
            while b"\n" not in seen:  # sshd's identification: it has accepted the connection
                chunk = sock.recv(256)
                if not chunk:
                    return
                seen += chunk
            if self.kind == "banner":
                sock.sendall(b"SSH-2.0-irt\r\n")
                if not sock.recv(4096):  # sshd's KEXINIT: the key exchange has begun, and goes no further
                    return
            self._opened()
            sock.settimeout(self.POLL)
            while not self._stop.is_set():
                try:
                    if not sock.recv(4096):
                        return  # sshd dropped it (LoginGraceTime, or the machine going down)
                except TimeoutError:
                    continue

    def _hold_ssh(self, attempt):
        askpass = self.machine.dir / "stranger-askpass"
        key = self.machine.dir / "key-stranger"
        if not askpass.exists():
            askpass.write_text(ASKPASS)
            askpass.chmod(0o755)
            keygen(key)  # authorized nowhere
        asked = self.machine.dir / f"stranger-asked-{attempt}"
        pairs = zip(CLIENT_OPTS[::2], CLIENT_OPTS[1::2], strict=True)
        opts = [word for pair in pairs if pair[1] != "BatchMode=yes" for word in pair]  # it has to ask
        argv = [
            "ssh", *opts, "-o", "BatchMode=no", "-o", "PreferredAuthentications=publickey,password",
            "-o", "NumberOfPasswordPrompts=3", "-i", str(key), "-p", str(self.machine.port), "dev@127.0.0.1", "true",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
        env.update(SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force", IRS_ASKED=str(asked))
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            opened = refused = False
            while proc.poll() is None and not self._stop.is_set():
                if not opened and asked.exists():  # the key was refused: it is in password authentication
                    self._opened()
                    opened = True
                if not refused and (asked / "again").exists():
                    self.refused += 1
                    refused = True
                # Waiting for its askpass, ssh doesn't notice that sshd dropped the connection: its socket does.
                if opened and _tcp_state(proc.pid) != TCP_ESTABLISHED:
                    return
                time.sleep(self.POLL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
