"""Run part of the benchmark in an empty network namespace, and come back.

The machine is shared: other people's test sshds come and go, and every live SSH session the reaper sees costs
it work. In a fresh network namespace the kernel shows no TCP connection but our own, so each tick sees the
same sessions in every run. Only the network namespace changes: processes, /proc and files are the host's.
Namespaces belong to the thread: commands this thread starts inherit it, other threads are not affected.
"""

import contextlib
import ctypes
import os
import subprocess

CLONE_NEWNET = 0x40000000


def _libc():
    return ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def empty_netns():
    """Move this thread into a new, empty network namespace (with loopback up); move it back afterwards."""
    libc = _libc()
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
        try:
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True, capture_output=True)
            yield
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns back to the host's network namespace: {os.strerror(err)}")
    finally:
        os.close(home)
