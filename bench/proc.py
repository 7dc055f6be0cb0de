"""Running a command and timing it: wall time from spawn to exit, and its peak RSS from wait4.

Commands run through a small spawner process (bench/spawner.py): see there why.
"""

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

from bench import REPO, SYSTEM_PYTHON

# /run is a tmpfs on a real machine, where the state lives; fsync there costs nothing. So does the bench's.
TMPFS = "/dev/shm"
SPAWNER = str(REPO / "bench" / "spawner.py")


@dataclass(frozen=True)
class Run:
    seconds: float
    maxrss_kb: int
    returncode: int


class Spawner:
    """A running bench/spawner.py. It stays in the network namespace it was started in.

    `hold`: sockets it inherits and keeps open without touching them, as sshd's monitor holds its session's
    connection: the hooks it starts find them in their parent's /proc/PID/fd.
    """

    def __init__(self, hold=()):
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, "-I", "-S", SPAWNER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            pass_fds=[s.fileno() for s in hold],
        )

    def run(self, argv, env=None, cwd=None, umask=None, stdout=None, stderr=None):
        """Run argv to the end; return its Run. Output goes to the files named, else to /dev/null."""
        argv = list(argv)
        if not os.path.isabs(argv[0]):
            argv[0] = shutil.which(argv[0]) or argv[0]
        spec = {"argv": argv, "env": env, "cwd": cwd, "umask": umask, "stdout": stdout, "stderr": stderr}
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the spawner died")
        got = json.loads(line)
        return Run(got["seconds"], got["maxrss_kb"], got["returncode"])

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(10)


_default = None


def run_timed(argv, **kw):
    """Run argv through the shared spawner (started on first use, in this thread's network namespace)."""
    global _default
    if _default is None or _default.proc.poll() is not None:
        _default = Spawner()
    return _default.run(argv, **kw)


def close_default():
    global _default
    if _default is not None:
        _default.close()
        _default = None


def tmpfs_dir(prefix):
    """A fresh directory on tmpfs, readable by others (mode 0755), like /run."""
    base = TMPFS if os.path.isdir(TMPFS) else None
    path = tempfile.mkdtemp(prefix=prefix, dir=base)
    os.chmod(path, 0o755)  # noqa: S103 - like /run: status is for everyone
    return path


def remove(path):
    shutil.rmtree(path, ignore_errors=True)
