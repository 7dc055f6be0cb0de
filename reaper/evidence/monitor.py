"""What root can check for itself about a process and its TCP connection, from /proc.

An SSH session is served by sshd's per-connection process (the "monitor"): pam_exec's hook is its child, and
the live check finds it holding the connection. Its executable, its uids, its loginuid (which pam_loginuid
sets when the session opens) and the sockets it holds are facts of the kernel, not of the PAM environment.

Imported by the PAM hook on the login path, so it uses only posix and builtin modules (see reaper/hook.py).
"""

import posix

from reaper import defaults

SSHD_NAMES = frozenset({"sshd", "sshd-session", "sshd-auth"})
# /proc/PID/loginuid of a process no login has claimed: (uid_t)-1.
NO_LOGINUID = 4294967295
TCP_ESTABLISHED = "01"
TCP_LISTEN = "0A"
V4_MAPPED = b"\0" * 10 + b"\xff\xff"  # the first 12 bytes of an IPv4-mapped IPv6 address


class Proc:
    """A process as /proc shows it: pid, parent, real uid, start (clock ticks since kernel boot), loginuid."""

    __slots__ = ("pid", "ppid", "uid", "start", "exe", "loginuid")

    def __init__(self, pid, ppid, uid, start, exe, loginuid):
        self.pid, self.ppid, self.uid, self.start, self.exe, self.loginuid = pid, ppid, uid, start, exe, loginuid

    @property
    def is_sshd(self):
        """True if the process runs an sshd executable as root: what a real sshd's listener and monitor do."""
        return self.uid == 0 and self.exe.rsplit("/", 1)[-1] in SSHD_NAMES

    @property
    def logged_in(self):
        """The uid a login (pam_loginuid) gave this process, or None."""
        return None if self.loginuid == NO_LOGINUID else self.loginuid


def stat_fields(pid, proc=defaults.PROC):
    """Return the fields of /proc/PID/stat after the command name (field 3 on), or None if it is gone."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return None
    # comm may hold spaces and parentheses; the fields after the last ')' are fixed.
    return stat[stat.rindex(b")") + 2 :].split()


def read_exe(pid, proc=defaults.PROC):
    """Return the executable's path (without " (deleted)": sshd runs on across an upgrade), or None if gone.

    Raise PermissionError where we may not look (another user's process, without root).
    """
    try:
        return posix.readlink(f"{proc}/{pid}/exe").removesuffix(" (deleted)")
    except (FileNotFoundError, ProcessLookupError):
        return None


def read(pid, proc=defaults.PROC, exe=None):
    """Return the Proc of a pid, or None if it is gone (or a kernel thread). `exe` if the caller read it."""
    exe = exe or read_exe(pid, proc)
    fields = stat_fields(pid, proc)
    if exe is None or fields is None:
        return None
    try:
        with open(f"{proc}/{pid}/status") as f:
            uid_line = next(line for line in f if line.startswith("Uid:"))
        with open(f"{proc}/{pid}/loginuid") as f:
            loginuid = int(f.read())
    except (FileNotFoundError, ProcessLookupError, StopIteration, ValueError):
        return None
    return Proc(pid, int(fields[1]), int(uid_line.split()[1]), int(fields[19]), exe, loginuid)


def socket_inodes(pid, proc=defaults.PROC):
    """Return the inodes of the sockets a process holds. Raise PermissionError if we may not look.

    The system sshd's processes are not dumpable, so their /proc entries belong to root and CAP_SYS_PTRACE
    opens them. A process whose entries belong to a user is one that user started (a program they named
    sshd, say): root without CAP_DAC_READ_SEARCH can't list its fds, and it is never a real sshd's, so it
    is passed over rather than left to block the check for good.
    """
    inodes = set()
    try:
        names = posix.listdir(f"{proc}/{pid}/fd")
    except FileNotFoundError:
        return inodes
    except PermissionError:
        if posix.geteuid() == 0 and posix.stat(f"{proc}/{pid}").st_uid != 0:
            return inodes
        raise
    for name in names:
        try:
            target = posix.readlink(f"{proc}/{pid}/fd/{name}")
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def hex_address(text):
    """Given an address as /proc/net/tcp* prints it (hex, 32-bit words in host order), return its text.

    IPv4-mapped IPv6 comes out as IPv4, so a connection reads the same whichever socket family served it.
    """
    import _socket

    raw = bytes.fromhex(text)
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return address_text(_socket.AF_INET if len(raw) == 4 else _socket.AF_INET6, raw)


def tcp_table(base):
    """Yield (local, local port, remote, remote port, state, inode) of each socket in base/net/tcp and tcp6,
    addresses still in /proc's hex. `base` is /proc (this network namespace) or /proc/PID (that process's)."""
    for name in ("tcp", "tcp6"):
        try:
            with open(f"{base}/net/{name}") as f:
                lines = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) >= 10:
                local, local_port = fields[1].split(":")
                remote, remote_port = fields[2].split(":")
                yield local, int(local_port, 16), remote, int(remote_port, 16), fields[3], int(fields[9])


def connections(pid, proc=defaults.PROC):
    """Return the ESTABLISHED TCP connections a process holds, each as (remote, remote port, local, local
    port), read from its own network namespace. An sshd monitor holds one: its client's.
    """
    inodes = socket_inodes(pid, proc)
    return [
        (hex_address(remote), remote_port, hex_address(local), local_port)
        for local, local_port, remote, remote_port, state, inode in tcp_table(f"{proc}/{pid}")
        if state == TCP_ESTABLISHED and inode in inodes
    ]


NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_TCP_ESTABLISHED_STATE = 1
_NOCOOKIE = b"\xff" * 8


def held_connection(pid, claimed, proc=defaults.PROC):
    """If process pid holds the ESTABLISHED TCP connection `claimed` (client, client port, server, server
    port), return it as connections() would; else None, and connections() tells.

    One exact netlink sock_diag lookup by the 4-tuple. Reading /proc/PID/net/tcp and tcp6 instead walks the
    whole connection table the network namespaces share, twice: 11 ms an open (BENCHMARKS.md, rows 1 and 2).
    `claimed` is a hint (SSH_CONNECTION): the kernel's answer and the process's fds decide.
    """
    import _socket
    import sys

    client, client_port, server, server_port = claimed
    if proc != defaults.PROC or not all(isinstance(p, int) and 0 < p < 65536 for p in (client_port, server_port)):
        return None
    try:
        if posix.stat(f"{proc}/{pid}/ns/net").st_ino != posix.stat(f"{proc}/self/ns/net").st_ino:
            return None  # our socket would ask another network namespace than the one the process serves
        family, local, remote = _pack_pair(server, client)
        if family is None:
            return None
        order = sys.byteorder
        # nlmsghdr, then inet_diag_req_v2: family, IPPROTO_TCP, no extensions, states (unused by an exact
        # lookup), then the id: local port, remote port (big-endian), local and remote address, interface,
        # cookie (none: any socket of that 4-tuple).
        request = (72).to_bytes(4, order) + SOCK_DIAG_BY_FAMILY.to_bytes(2, order)
        request += _NLM_F_REQUEST.to_bytes(2, order) + bytes(8)
        request += bytes((family, 6, 0, 0)) + (1 << _TCP_ESTABLISHED_STATE).to_bytes(4, order)
        request += server_port.to_bytes(2, "big") + client_port.to_bytes(2, "big") + local + remote
        request += bytes(4) + _NOCOOKIE
        sock = sock_diag_socket()
        try:
            sock.sendto(request, (0, 0))
            data = sock.recv(8192)
        finally:
            sock.close()
    except (OSError, ValueError):
        return None
    # One inet_diag_msg, or an NLMSG_ERROR (no such socket): family, state, timer, retrans, the id as sent
    # (ports, addresses), expires, queues, uid, inode.
    if len(data) < 88 or int.from_bytes(data[4:6], order) != SOCK_DIAG_BY_FAMILY:
        return None
    if data[17] != _TCP_ESTABLISHED_STATE or data[20:24] != request[24:28]:
        return None
    answered = data[16]
    width = 4 if answered == _socket.AF_INET else 16
    try:
        local_text = address_text(answered, data[24 : 24 + width])
        remote_text = address_text(answered, data[40 : 40 + width])
    except (OSError, ValueError):
        return None
    if int.from_bytes(data[84:88], order) not in socket_inodes(pid, proc):
        return None
    return (remote_text, client_port, local_text, server_port)


def _pack_pair(local, remote):
    """Return (family, local, remote) packed for inet_diag's id (16 bytes each), or (None, None, None)."""
    import _socket

    for family in (_socket.AF_INET, _socket.AF_INET6):
        try:
            packed = [_socket.inet_pton(family, text) for text in (local, remote)]
        except (OSError, ValueError, TypeError):
            continue
        return family, packed[0].ljust(16, b"\0"), packed[1].ljust(16, b"\0")
    return None, None, None


def address_text(family, raw):
    """The text of a packed address, IPv4-mapped IPv6 as IPv4, so a connection reads the same whichever
    socket family served it."""
    import _socket

    if family == _socket.AF_INET6 and raw[:12] == V4_MAPPED:
        return _socket.inet_ntop(_socket.AF_INET, raw[12:])
    return _socket.inet_ntop(family, raw)


def sock_diag_socket():
    """A netlink socket to the kernel's sock_diag (as `ss` uses). Raise OSError where that is not allowed."""
    import _socket

    return _socket.socket(16, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)  # AF_NETLINK


def is_ip(text):
    """True if text is an IPv4 or IPv6 address literal (not a host name)."""
    import _socket

    for family in (_socket.AF_INET, _socket.AF_INET6):
        try:
            _socket.inet_pton(family, text)
            return True
        except (OSError, ValueError, TypeError):
            pass
    return False


def same_address(a, b):
    """True if two address literals name the same address (IPv4-mapped IPv6 and IPv4 alike)."""
    import _socket

    def packed(text):
        for family in (_socket.AF_INET6, _socket.AF_INET):
            try:
                raw = _socket.inet_pton(family, text.split("%", 1)[0])
            except (OSError, ValueError, TypeError, AttributeError):
                continue
            return raw[12:] if raw[:12] == V4_MAPPED else raw
        return None

    pa = packed(a)
    return pa is not None and pa == packed(b)
