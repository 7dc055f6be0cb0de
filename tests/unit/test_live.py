"""Lease liveness and live SSH session discovery, against real /proc and real sockets where it can be."""

import os
import socket
import subprocess
import sys

import pytest

from reaper import clock
from reaper.evidence import ssh, system
from reaper.evidence.system import Process, Socket


def lease_for(pid, start, conn=None):
    client, cport, server, sport = conn or (None, None, None, None)
    return {"pid": pid, "pid_start": start, "client": client, "client_port": cport, "server": server,
            "server_port": sport}  # fmt: skip


def test_a_running_process_with_its_start_time_is_live():
    me = os.getpid()
    assert ssh.lease_live(lease_for(me, clock.process_start_ticks(me)), set())


def test_a_reused_pid_is_not_live():
    me = os.getpid()
    assert not ssh.lease_live(lease_for(me, clock.process_start_ticks(me) - 1), set())


def test_a_dead_pid_is_not_live():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    start = clock.process_start_ticks(child.pid)
    child.wait()
    assert not ssh.lease_live(lease_for(child.pid, start), set())


@pytest.fixture
def tcp_pair():
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    conn, _ = server.accept()
    yield client.getsockname(), server.getsockname()
    for s in (conn, client, server):
        s.close()


def test_an_established_connection_keeps_a_lease_live_after_its_process_is_gone(tcp_pair):
    (cip, cport), (sip, sport) = tcp_pair
    established = system.established_tuples(system.tcp_sockets())
    assert (cip, cport, sip, sport) in established
    assert ssh.lease_live(lease_for(999999, 1, (cip, cport, sip, sport)), established)
    assert not ssh.lease_live(lease_for(999999, 1, (cip, cport + 1, sip, sport)), established)


def test_ipv6_connections_are_read_too():
    try:
        server = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.fail("IPv6 loopback is needed for this test")
    client = socket.create_connection(server.getsockname()[:2])
    conn, _ = server.accept()
    try:
        tuples = system.established_tuples(system.tcp_sockets())
        assert ("::1", client.getsockname()[1], "::1", server.getsockname()[1]) in tuples
    finally:
        for s in (conn, client, server):
            s.close()


def test_ipv4_mapped_addresses_compare_as_ipv4():
    assert system.normalize_ip("::ffff:10.0.0.5") == "10.0.0.5"
    assert system.normalize_ip("fe80::1%eth0") == "fe80::1"
    assert ssh.lease_tuple({"client": "::ffff:10.0.0.5", "client_port": 1, "server": "10.0.0.1",
                             "server_port": 22}) == ("10.0.0.5", 1, "10.0.0.1", 22)  # fmt: skip


# --- finding SSH sessions: pure logic over sockets and processes ------------------------------------------

LISTEN = Socket("0.0.0.0", 22, "0.0.0.0", 0, system.TCP_LISTEN, 1)
LISTENER = Process(10, 1, 0, 100, "/usr/sbin/sshd")
SSHD_UID = 102


def established(inode, client_port=50000, local_port=22):
    return Socket("127.0.0.1", local_port, "192.0.2.4", client_port, system.TCP_ESTABLISHED, inode)


def sessions(sockets, procs, held):
    return ssh.ssh_sessions(sockets, procs, lambda pid: held.get(pid, set()), SSHD_UID)


def test_a_user_session_is_found_with_its_user_and_monitor():
    monitor = Process(20, 10, 0, 200, "/usr/sbin/sshd")
    child = Process(21, 20, 1000, 201, "/usr/sbin/sshd")
    (s,) = sessions([LISTEN, established(5)], [LISTENER, monitor, child], {10: {1}, 20: {5}, 21: {5}})
    assert (s.uid, s.pid, s.pid_start, s.client, s.client_port) == (1000, 20, 200, "192.0.2.4", 50000)


def test_a_root_session_has_one_process_and_is_found_by_its_loginuid():
    root = Process(30, 10, 0, 300, "/usr/sbin/sshd", loginuid=0)
    (s,) = sessions([LISTEN, established(6)], [LISTENER, root], {10: {1}, 30: {6}})
    assert (s.uid, s.pid) == (0, 30)


def test_a_root_session_is_found_by_its_title_where_the_loginuid_tells_nothing():
    listener = LISTENER._replace(loginuid=0)  # started from a root shell: every child inherits loginuid 0
    root = Process(30, 10, 0, 300, "/usr/sbin/sshd", loginuid=0)
    titles = {30: "sshd: root@notty"}
    (s,) = ssh.ssh_sessions([LISTEN, established(6)], [listener, root], {10: {1}, 30: {6}}.get, SSHD_UID,
                             titles.get)  # fmt: skip
    assert (s.uid, s.pid) == (0, 30)
    titles[30] = "sshd: root"  # ssh -N: no channel, no "@"
    assert ssh.ssh_sessions([LISTEN, established(6)], [listener, root], {10: {1}, 30: {6}}.get, SSHD_UID,
                             titles.get)  # fmt: skip
    titles[30] = "sshd: root [priv]"
    assert ssh.ssh_sessions([LISTEN, established(6)], [listener, root], {10: {1}, 30: {6}}.get, SSHD_UID,
                             titles.get) == []  # fmt: skip


@pytest.mark.parametrize("title", ["sshd: [accepted]", "sshd: root [priv]", "sshd-session: [accepted]", ""])
def test_a_connection_that_never_logged_in_is_not_a_session(title):
    # At the banner, in key exchange, or after a failed login: a root monitor alone, no loginuid of its own.
    monitor = Process(20, 10, 0, 200, "/usr/sbin/sshd")
    found = ssh.ssh_sessions([LISTEN, established(5)], [LISTENER, monitor], {10: {1}, 20: {5}}.get, SSHD_UID,
                              lambda pid: title)  # fmt: skip
    assert found == []


def test_nothing_a_user_runs_is_a_session_whatever_its_name():
    # A user's own sshd (the real binary, run as the user) or a program named sshd, listening and connected.
    listen = Socket("0.0.0.0", 2222, "0.0.0.0", 0, system.TCP_LISTEN, 3)
    own = Process(40, 1, 1000, 400, "/usr/sbin/sshd", loginuid=1000)
    child = Process(41, 40, 1000, 401, "/home/u/sshd", loginuid=1000)
    assert sessions([listen, established(9, local_port=2222)], [own, child], {40: {3}, 41: {9}}) == []


def test_a_root_session_orphaned_by_a_restart_of_the_listener_is_still_found():
    orphan = Process(30, 1, 0, 300, "/usr/sbin/sshd", loginuid=0)
    new_listener = Process(11, 1, 0, 900, "/usr/sbin/sshd")
    (s,) = sessions([LISTEN, established(6)], [new_listener, orphan], {11: {1}, 30: {6}})
    assert (s.uid, s.pid) == (0, 30)


def test_a_monitor_with_a_loginuid_its_listener_lacks_is_logged_in():
    monitor = Process(20, 10, 0, 200, "/usr/sbin/sshd", loginuid=1000)
    (s,) = sessions([LISTEN, established(5)], [LISTENER, monitor], {10: {1}, 20: {5}})
    assert (s.uid, s.pid) == (1000, 20)


def test_a_connection_still_authenticating_is_not_a_session():
    monitor = Process(20, 10, 0, 200, "/usr/sbin/sshd")
    privsep = Process(22, 20, SSHD_UID, 201, "/usr/sbin/sshd")
    assert sessions([LISTEN, established(5)], [LISTENER, monitor, privsep], {10: {1}, 20: {5}, 22: {5}}) == []


def test_a_session_whose_monitor_was_killed_is_still_found():
    orphan = Process(21, 1, 1000, 201, "/usr/sbin/sshd")
    (s,) = sessions([LISTEN, established(5)], [LISTENER, orphan], {10: {1}, 21: {5}})
    assert (s.uid, s.pid) == (1000, 21)


def test_connections_not_held_by_sshd_or_not_on_its_port_are_not_sessions():
    other = established(7, local_port=8080)
    unheld = established(8)
    assert sessions([LISTEN, other, unheld], [LISTENER], {10: {1}}) == []


def test_sshd_is_found_by_executable_not_title(tmp_path):
    proc = tmp_path / "proc"

    def fake(pid, exe, title, ppid=1, uid=0):
        d = proc / str(pid)
        d.mkdir(parents=True)
        os.symlink(exe, d / "exe")
        (d / "stat").write_text(f"{pid} ({title}) S {ppid} 0 0 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {pid * 10} 0 0\n")
        (d / "status").write_text(f"Name:\t{title}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
        (d / "comm").write_text(title + "\n")
        (d / "loginuid").write_text("4294967295")

    fake(5, "/usr/sbin/sshd", "sshd-test")  # started through a symlink with another name
    fake(6, "/usr/sbin/sshd (deleted)", "sshd", ppid=5)  # the binary was upgraded under it
    fake(7, "/usr/bin/python3", "sshd: alice [priv]")  # a process pretending by title
    fake(8, "/usr/lib/openssh/sshd-session", "sshd-session", ppid=5, uid=1000)
    found = {p.pid: (p.ppid, p.uid, p.start) for p in system.sshd_processes(str(proc))}
    assert found == {5: (1, 0, 50), 6: (5, 0, 60), 8: (5, 1000, 80)}


def test_a_running_pid_without_a_recorded_start_time_is_live():
    assert ssh.lease_live(lease_for(os.getpid(), None), set())


def fake_proc(tmp_path, sockets):
    """A /proc with only net/tcp: the given (local, remote, state, inode) lines, IPv4 loopback addresses."""
    net = tmp_path / "proc" / "net"
    net.mkdir(parents=True)
    lines = ["  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode"]
    for i, (lport, rport, st, inode) in enumerate(sockets):
        rem = f"0100007F:{rport:04X}" if rport else "00000000:0000"
        lines.append(f"{i:4}: 0100007F:{lport:04X} {rem} {st} 0:0 0:0 0 0 0 {inode} 1 0 20 4 30 10 -1")
    (net / "tcp").write_text("\n".join(lines) + "\n")
    return str(tmp_path / "proc")


def test_the_process_scan_is_skipped_when_every_connection_is_a_leases_own(tmp_path, monkeypatch):
    proc = fake_proc(tmp_path, [(22, 0, "0A", 1), (22, 50000, "01", 2)])
    lease = lease_for(999999, 1, ("127.0.0.1", 50000, "127.0.0.1", 22))

    def scan(proc):
        raise AssertionError("scanned")

    monkeypatch.setattr(system, "sshd_processes", scan)
    evidence = ssh.gather([lease], proc)
    assert evidence.checked and evidence.live == [True] and evidence.sessions == []


def test_the_process_scan_runs_when_a_connection_is_no_leases(tmp_path, monkeypatch):
    proc = fake_proc(tmp_path, [(22, 0, "0A", 1), (22, 50000, "01", 2), (22, 50001, "01", 3)])
    lease = lease_for(999999, 1, ("127.0.0.1", 50000, "127.0.0.1", 22))
    scanned = []
    monkeypatch.setattr(system, "sshd_processes", lambda proc: scanned.append(proc) or [])
    evidence = ssh.gather([lease], proc)
    assert scanned == [proc] and evidence.checked


def test_the_lease_index_finds_a_session_by_connection_or_by_process():
    lease = lease_for(300, 77, ("::ffff:192.0.2.9", 50000, "127.0.0.1", 22))
    index = ssh.LeaseIndex([lease])
    by_conn = ssh.LiveSession("192.0.2.9", 50000, "127.0.0.1", 22, 1000, "bob", 1, 1)
    by_proc = ssh.LiveSession("192.0.2.9", 1, "127.0.0.1", 22, 1000, "bob", 300, 77)
    other = ssh.LiveSession("192.0.2.9", 1, "127.0.0.1", 22, 1000, "bob", 300, 78)
    assert index.explaining(by_conn) is lease and index.explaining(by_proc) is lease
    assert index.explaining(other) is None


def test_netlink_and_proc_net_tcp_see_the_same_sockets():
    pairs = []
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        server = socket.create_server((host, 0), family=family)
        client = socket.create_connection(server.getsockname()[:2])
        accepted, _ = server.accept()
        pairs += [server, client, accepted]
    try:
        from_netlink = set(system._sock_diag())
        from_proc = set(system._proc_net_tcp("/proc"))
        assert from_netlink == from_proc
        ports = {p.getsockname()[1] for p in pairs[0::3]}  # the two servers'
        ours = {s for s in from_netlink if s.local_port in ports}
        # Each listener and the server's side of its connection; the client's side is on no listening port.
        assert sorted(s.state for s in ours) == [system.TCP_ESTABLISHED] * 2 + [system.TCP_LISTEN] * 2
        assert not {s for s in from_netlink if s.local_port in {p.getsockname()[1] for p in pairs[1::3]}}
    finally:
        for s in pairs:
            s.close()
