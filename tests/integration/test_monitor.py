"""The hook's one-lookup path to its session's connection (monitor.held_connection, netlink sock_diag) against
the scan it replaces on the login path (monitor.connections, /proc/PID/net/tcp*), on real sockets."""

import os
import socket
import subprocess
import sys

import pytest

from reaper.evidence import monitor


def _connection(family, host, dual=False):
    """A listener and both ends of a connection to it, all held by this process."""
    listener = socket.socket(family)
    if dual:
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    listener.bind(("::" if dual else host, 0))
    listener.listen()
    client = socket.create_connection((host, listener.getsockname()[1]))
    server, _ = listener.accept()
    return listener, client, server


@pytest.mark.parametrize(
    ("family", "host", "dual"),
    [(socket.AF_INET, "127.0.0.1", False), (socket.AF_INET6, "::1", False), (socket.AF_INET6, "127.0.0.1", True)],
    ids=["ipv4", "ipv6", "ipv4-on-a-dual-stack-listener"],
)
def test_the_lookup_finds_what_the_scan_finds(family, host, dual):
    sockets = _connection(family, host, dual)
    try:
        _, client, _ = sockets
        cport, sport = client.getsockname()[1], client.getpeername()[1]
        found = monitor.held_connection(os.getpid(), (host, cport, host, sport))
        assert found == (host, cport, host, sport)
        assert found in monitor.connections(os.getpid())
        # a client port off by one names no connection (the kernel answers with the listener on the server
        # port, which is no connection either)
        assert monitor.held_connection(os.getpid(), (host, cport + 1, host, sport)) is None
    finally:
        for s in sockets:
            s.close()


def test_a_connection_another_process_holds_is_not_found():
    """SSH_CONNECTION may name a real connection: it is the session's only if the session's process holds it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import socket,sys\n"
         "l=socket.create_server(('127.0.0.1',0)); c=socket.create_connection(l.getsockname()); s,_=l.accept()\n"
         "print(c.getsockname()[1], l.getsockname()[1], flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        cport, sport = map(int, holder.stdout.readline().split())
        claimed = ("127.0.0.1", cport, "127.0.0.1", sport)
        assert monitor.held_connection(holder.pid, claimed) == claimed  # the control: it is there, and held
        assert monitor.held_connection(os.getpid(), claimed) is None
    finally:
        holder.stdin.close()
        holder.wait(10)


@pytest.mark.parametrize(
    "claimed",
    [(None, None, None, None), ("127.0.0.1", 0, "127.0.0.1", 22), ("127.0.0.1", 70000, "127.0.0.1", 22),
     ("example.org", 1, "127.0.0.1", 22), ("127.0.0.1", -1, "::1", 22), ("127.0.0.1\0", 1, "127.0.0.1", 22)],
)  # fmt: skip
def test_a_hostile_or_malformed_claim_finds_nothing(claimed):
    assert monitor.held_connection(os.getpid(), claimed) is None
