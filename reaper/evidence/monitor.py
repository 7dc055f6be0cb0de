"""What root can check for itself about a process and its TCP connection, from /proc.

An SSH session is served by sshd's per-connection process (the "monitor"): pam_exec's hook is its child, and
the live check finds it holding the connection. Its executable, its uids, its loginuid (which pam_loginuid
sets when the session opens) and the sockets it holds are facts of the kernel, not of the PAM environment.

Imported by the PAM hook on the login path, so it uses only os and builtin modules.
"""

import os

from reaper import defaults

SSHD_NAMES = frozenset({"sshd", "sshd-session", "sshd-auth"})
# /proc/PID/loginuid of a process no login has claimed: (uid_t)-1.
NO_LOGINUID = 4294967295
TCP_ESTABLISHED = "01"
TCP_LISTEN = "0A"


class Proc:
    """A process as /proc shows it: pid, parent, real uid, start (clock ticks since kernel boot), loginuid."""

    __slots__ = ("pid", "ppid", "uid", "start", "exe", "loginuid")

    def __init__(self, pid, ppid, uid, start, exe, loginuid):
        self.pid, self.ppid, self.uid, self.start, self.exe, self.loginuid = pid, ppid, uid, start, exe, loginuid

    @property
    def is_sshd(self):
        """True if the process runs an sshd executable as root: what a real sshd's listener and monitor do."""
        return self.uid == 0 and os.path.basename(self.exe) in SSHD_NAMES

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
        return os.readlink(f"{proc}/{pid}/exe").removesuffix(" (deleted)")
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
        names = os.listdir(f"{proc}/{pid}/fd")
    except FileNotFoundError:
        return inodes
    except PermissionError:
        if os.geteuid() == 0 and os.stat(f"{proc}/{pid}").st_uid != 0:
            return inodes
        raise
    for name in names:
        try:
            target = os.readlink(f"{proc}/{pid}/fd/{name}")
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
    if len(raw) == 4:
        return _socket.inet_ntop(_socket.AF_INET, raw)
    if raw[:12] == b"\0" * 10 + b"\xff\xff":
        return _socket.inet_ntop(_socket.AF_INET, raw[12:])
    return _socket.inet_ntop(_socket.AF_INET6, raw)


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
            return raw[12:] if raw[:12] == b"\0" * 10 + b"\xff\xff" else raw
        return None

    pa = packed(a)
    return pa is not None and pa == packed(b)
