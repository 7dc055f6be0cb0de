"""Run part of the benchmark in an empty network namespace of its own.

The machine is shared: other people's test sshds come and go, and every live SSH session the reaper sees costs
it work. In a fresh network namespace the kernel shows no TCP connection but our own, so each tick sees the
same sessions in every run. Only the network namespace changes: processes, /proc and files are the host's.
Namespaces belong to the thread: commands this thread starts inside inherit it, other threads are not affected.
"""

import contextlib
import ctypes
import os
import subprocess

CLONE_NEWNET = 0x40000000


def _check(result, what):
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


class NetNs:
    """A new network namespace with loopback up. Enter it with `with ns.entered():`; close() lets it go."""

    def __init__(self):
        self._libc = ctypes.CDLL(None, use_errno=True)
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _check(self._libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
            try:
                subprocess.run(["ip", "link", "set", "lo", "up"], check=True, capture_output=True)
                self.fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            finally:
                _check(self._libc.setns(home, CLONE_NEWNET), "setns back to the host's network namespace")
        finally:
            os.close(home)

    @contextlib.contextmanager
    def entered(self):
        """Move this thread into the namespace; move it back afterwards."""
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _check(self._libc.setns(self.fd, CLONE_NEWNET), "setns into the benchmark's network namespace")
            try:
                yield self
            finally:
                _check(self._libc.setns(home, CLONE_NEWNET), "setns back to the host's network namespace")
        finally:
            os.close(home)

    def close(self):
        os.close(self.fd)


@contextlib.contextmanager
def empty_netns():
    """Move this thread into a new, empty network namespace (loopback up) for the block; then back."""
    ns = NetNs()
    try:
        with ns.entered():
            yield ns
    finally:
        ns.close()
