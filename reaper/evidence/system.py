"""Read the live system from /proc: TCP connections, sshd processes and the sockets they hold.

Pure readers, no decisions. Anything we are not allowed to read (another user's process as non-root, or
sshd's non-dumpable processes without CAP_SYS_PTRACE) is reported as unreadable, never as absent.
"""

import functools
import ipaddress
import os
from typing import NamedTuple

from reaper import defaults
from reaper.evidence import monitor

SSHD_NAMES = monitor.SSHD_NAMES
TCP_ESTABLISHED = monitor.TCP_ESTABLISHED
TCP_LISTEN = monitor.TCP_LISTEN


class Socket(NamedTuple):  # a NamedTuple: a tick may read tens of thousands
    local: str
    local_port: int
    remote: str
    remote_port: int
    state: str
    inode: int

    @property
    def tuple(self):
        return (self.remote, self.remote_port, self.local, self.local_port)


class Process(NamedTuple):
    pid: int
    ppid: int
    uid: int
    start: int  # clock ticks since kernel boot
    exe: str
    container: bool = False  # runs in another PID namespace: a container on this machine
    loginuid: int = monitor.NO_LOGINUID  # what pam_loginuid set when a session opened in it

    @property
    def logged_in(self):
        return None if self.loginuid == monitor.NO_LOGINUID else self.loginuid


@functools.lru_cache(maxsize=4096)  # a tick compares every lease's addresses: a handful, over and over
def normalize_ip(text):
    """Given an address as sshd or /proc writes it, return one canonical text (IPv4-mapped IPv6 as IPv4)."""
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except (ValueError, AttributeError):
        return text
    if addr.version == 6 and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr.compressed


def _hex_ip(text, known):
    """Given an address as /proc/net/tcp* prints it, return its text. `known` caches: a machine's sockets
    share a handful of addresses, and converting each one anew was most of a tick with many connections."""
    if text not in known:
        known[text] = normalize_ip(monitor.hex_address(text))
    return known[text]


def tcp_sockets(proc=defaults.PROC):
    """Return the listening TCP sockets (IPv4 and IPv6) of this network namespace, and the ESTABLISHED ones
    on a listening port: a server's side of a connection, which an SSH session's is. Not a client's side.

    Asks the kernel over netlink (sock_diag, as `ss` does): it filters by state and answers in binary, where
    /proc/net/tcp renders every socket as text for us to split, which at 20,000 sockets was a quarter of a
    tick. Falls back to /proc/net/tcp where netlink is not allowed. A test `proc` (not /proc) reads files.
    """
    if proc == defaults.PROC:
        try:
            return _sock_diag()
        except OSError:
            pass
    return _proc_net_tcp(proc)


_SOCK_DIAG_BY_FAMILY = monitor.SOCK_DIAG_BY_FAMILY
_NLM_F_REQUEST_DUMP = 0x301
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_STATES = {1: TCP_ESTABLISHED, 10: TCP_LISTEN}


def _sock_diag():

    sock = monitor.sock_diag_socket()
    try:
        known = {}
        listeners = _dump(sock, 1 << 10, None, known)
        listening = {s.local_port for s in listeners}
        return listeners + _dump(sock, 1 << 1, listening, known)
    finally:
        sock.close()


def _dump(sock, states, ports, known):
    """Dump the TCP sockets in `states` (a bitmask of TCP states), IPv4 then IPv6. With `ports`, keep only
    those whose local port is one of them, read before anything else of each record is decoded."""
    import _socket
    import struct

    out = []
    for family, width in ((_socket.AF_INET, 4), (_socket.AF_INET6, 16)):
        # nlmsghdr, then inet_diag_req_v2: family, IPPROTO_TCP, no extensions, the states wanted, any id.
        request = struct.pack("=IHHII", 16 + 56, _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST_DUMP, family, 0)
        request += struct.pack("=BBBBI", family, 6, 0, 0, states) + bytes(48)
        sock.sendto(request, (0, 0))
        done = False
        while not done:
            data = sock.recv(1 << 20)
            offset = 0
            while offset + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                if kind == _NLMSG_DONE:
                    done = True
                    break
                if kind == _NLMSG_ERROR:
                    (errno,) = struct.unpack_from("=i", data, offset + 16)
                    raise OSError(-errno, "sock_diag refused the dump")
                if length < 16:
                    raise OSError("sock_diag: a malformed message")
                # inet_diag_msg after the header: family, state, timer, retrans, then the id: sport, dport
                # (big-endian), src[16], dst[16], interface, cookie; then expires, queues, uid, inode.
                sport = (data[offset + 20] << 8) | data[offset + 21]
                state = _STATES.get(data[offset + 17])
                if kind == _SOCK_DIAG_BY_FAMILY and state and (ports is None or sport in ports):
                    dport = (data[offset + 22] << 8) | data[offset + 23]
                    src = _packed_ip(family, data[offset + 24 : offset + 24 + width], known)
                    dst = _packed_ip(family, data[offset + 40 : offset + 40 + width], known)
                    (inode,) = struct.unpack_from("=I", data, offset + 84)
                    out.append(Socket(src, sport, dst, dport, state, inode))
                offset += (length + 3) & ~3
    return out


def _packed_ip(family, raw, known):
    key = (family, raw)
    if key not in known:
        import _socket

        known[key] = normalize_ip(_socket.inet_ntop(family, raw))
    return known[key]


def _proc_net_tcp(proc):
    out = []
    known = {}
    listening = set()
    for local, lport, remote, rport, state, inode in monitor.tcp_table(proc):
        if state not in (TCP_ESTABLISHED, TCP_LISTEN):
            continue  # TIME_WAIT and the like: neither a session nor a listener
        out.append(Socket(_hex_ip(local, known), lport, _hex_ip(remote, known), rport, state, inode))
        if state == TCP_LISTEN:
            listening.add(lport)
    return [s for s in out if s.state == TCP_LISTEN or s.local_port in listening]


def established_tuples(sockets):
    """Return {(client, client_port, server, server_port)} of the ESTABLISHED sockets."""
    return {s.tuple for s in sockets if s.state == TCP_ESTABLISHED}


def _read_process(pid, proc):
    try:
        exe = monitor.read_exe(pid, proc)
    except PermissionError:
        # Not ours to inspect. Its name (set from the executable at exec) tells whether that matters.
        try:
            with open(f"{proc}/{pid}/comm") as f:
                comm = f.read().strip()
        except FileNotFoundError:
            return None
        if comm in SSHD_NAMES:
            raise
        return None
    if exe is None or os.path.basename(exe) not in SSHD_NAMES:
        return None  # gone, a kernel thread, or not sshd
    p = monitor.read(pid, proc, exe)
    if p is None:
        return None
    container = _pid_namespace(pid, proc) not in (None, _pid_namespace("self", proc))
    return Process(pid, p.ppid, p.uid, p.start, exe, container, p.loginuid)


def title(pid, proc=defaults.PROC):
    """Return a process's title (argv[0] as it set it: sshd writes what a connection is doing), or ''."""
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0", 1)[0].decode("utf-8", "replace")
    except OSError:
        return ""


def _pid_namespace(pid, proc):
    try:
        return os.stat(f"{proc}/{pid}/ns/pid").st_ino
    except OSError:
        return None


def sshd_processes(proc=defaults.PROC):
    """Return the sshd processes, found by executable (not title: a root login has no "[priv]" process).

    Raise PermissionError if some process's executable can't be read (not root).
    """
    out = []
    for entry in os.listdir(proc):
        if entry.isdigit():
            found = _read_process(int(entry), proc)
            if found:
                out.append(found)
    return out


socket_inodes = monitor.socket_inodes
