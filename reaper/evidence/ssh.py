"""Evidence from the live system: which leases are still live, and which SSH sessions exist right now.

A lease is live while its sshd monitor runs with the same start time (a reused pid has another), or while its
TCP connection is still ESTABLISHED (a SIGKILLed monitor leaves the connection running).

Separately, and independently of the state file, the SSH sessions that exist right now are found from the
kernel: ESTABLISHED connections to a port a root sshd listens on, which have logged in (ssh_sessions says how
that is told). Connections that never logged in (a stranger at the banner) are not sessions at all.
The reaper refuses to act while such a session is not explained by a lease.
"""

import pwd
from typing import NamedTuple

from reaper import clock, defaults
from reaper.evidence import system


class LiveSession(NamedTuple):
    """An authenticated SSH connection seen in the kernel, and the sshd processes serving it."""

    client: str
    client_port: int
    server: str
    server_port: int
    uid: int
    user: str | None
    pid: int  # the oldest sshd process holding the connection: the per-connection monitor
    pid_start: int
    container: bool = False  # served by an sshd in a container on this machine

    @property
    def tuple(self):
        return (self.client, self.client_port, self.server, self.server_port)


class Evidence:
    """What the live system says: ESTABLISHED connections, which leases are live, the SSH sessions now."""

    def __init__(self, established, live, sessions=(), checked=False, why_unchecked=None, index=None):
        self.established = established
        self.live = live  # one bool per lease of the state, in order
        self.sessions = list(sessions)  # LiveSession
        self.checked = checked  # True if the live sessions could be read completely
        self.why_unchecked = why_unchecked
        self.index = index  # a LeaseIndex of the same leases, if gather() built one
        self.notes = []  # what the other sources of evidence said (observe.look fills it)


def lease_tuple(lease):
    """Return the lease's (client, client_port, server, server_port), normalized, or None."""
    if lease.get("client") is None or lease.get("server") is None:
        return None
    return (
        system.normalize_ip(lease["client"]),
        lease.get("client_port"),
        system.normalize_ip(lease["server"]),
        lease.get("server_port"),
    )


def lease_live(lease, established, proc=defaults.PROC, start_of=None, conn=False):
    """True if the lease's monitor process is the same process still, or its connection is ESTABLISHED.

    `start_of(pid)` returns a process's start time; by default it reads /proc (gather() passes a cached one).
    `conn` is the lease's lease_tuple(), if the caller has it already.
    """
    if (lease_tuple(lease) if conn is False else conn) in established:  # a set lookup first
        return True
    pid, start = lease.get("pid"), lease.get("pid_start")
    if pid:
        running = start_of(pid) if start_of else clock.process_start_ticks(pid, proc)
        # Without a recorded start time a reused pid can't be told apart; keeping it live is the safe side.
        if running is not None and (start is None or running == start):
            return True
    return False


def _user_name(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _privsep_uid(name="sshd"):
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def _logged_in_title(text):
    """True if sshd's title says its connection is logged in: "sshd: root", "sshd: root@notty",
    "sshd-session: root@pts/0". Before that it reads "sshd: [accepted]" or "sshd: root [priv]".

    Only sshd, running as root, sets the title of its own root process, so it is evidence where no other is
    left: a root login of an sshd whose listener already had loginuid 0 (started from a root shell), or in a
    container without pam_loginuid.
    """
    _, sep, rest = text.partition(": ")
    rest = rest.strip()
    return bool(sep) and bool(rest) and "[" not in rest


def ssh_sessions(sockets, processes, inodes_of, privsep_uid, title_of=lambda pid: ""):
    """Given sockets, sshd processes and a pid -> socket inodes reader, return the authenticated SSH sessions.

    A connection is a session only if a real sshd serves it and it has logged in: it is ESTABLISHED on a port
    that an sshd running as root listens on, no process of it runs as the privilege-separation user (that is
    still authenticating), and either an sshd process of it runs as the user (the session's own child), or
    its root monitor (a child of the listener, or orphaned by the listener's restart) has a loginuid that its
    listener doesn't (pam_loginuid sets it when the session opens), or the monitor's title says it is logged
    in (a root login). A connection at
    the banner, in key exchange or after a failed login is none of these; nor is anything a user runs,
    whatever its name. Pure but for `inodes_of` (which may raise PermissionError) and `title_of`.
    """
    holders = {}
    for p in processes:
        for inode in inodes_of(p.pid):
            holders.setdefault(inode, []).append(p)
    sshd_pids = {p.pid for p in processes}
    listeners = {}  # pid -> Process, of root sshds holding a listening socket
    ports = set()
    for s in sockets:
        if s.state == system.TCP_LISTEN:
            for p in holders.get(s.inode, ()):
                if p.uid == 0:
                    listeners[p.pid] = p
                    ports.add(s.local_port)
    out = []
    for s in sockets:
        if s.state != system.TCP_ESTABLISHED or s.local_port not in ports:
            continue
        procs = holders.get(s.inode, [])
        if not procs or (privsep_uid is not None and any(p.uid == privsep_uid for p in procs)):
            continue  # not served by sshd (an outgoing ssh from here, say), or still authenticating
        # The monitor is a root sshd that its listener forked, or one orphaned by a restart of the listener
        # (its parent is then init, not an sshd): a session outlives `systemctl restart ssh`.
        monitors = [p for p in procs if p.uid == 0 and (p.ppid in listeners or p.ppid not in sshd_pids)]
        monitor = min(monitors, key=lambda p: (p.start, p.pid)) if monitors else None
        children = [p for p in procs if p.uid != 0]
        inherited = listeners[monitor.ppid].logged_in if monitor and monitor.ppid in listeners else None
        if children:
            uid = children[0].uid
        elif monitor is None:
            continue
        elif monitor.logged_in is not None and monitor.logged_in != inherited:
            uid = monitor.logged_in
        elif _logged_in_title(title_of(monitor.pid)):
            uid = 0
        else:
            continue  # at the banner, in key exchange, or failed to log in
        held_by = monitor or min(children, key=lambda p: (p.start, p.pid))  # the monitor was killed
        out.append(
            LiveSession(
                s.remote,
                s.remote_port,
                s.local,
                s.local_port,
                uid,
                _user_name(uid),
                held_by.pid,
                held_by.start,
                any(p.container for p in procs),
            )  # fmt: skip
        )
    return out


def gather(leases, proc=defaults.PROC):
    """Given the leases, return the Evidence from the live system.

    Finding the SSH sessions means reading every process's executable and sshd's sockets. It is skipped when
    every ESTABLISHED connection to a listening port is a lease's own: then there is no session the state
    doesn't explain (a connection still at the login prompt is not a lease's, so it makes the check run).
    """
    sockets = system.tcp_sockets(proc)
    established = system.established_tuples(sockets)
    starts = {}

    def start_of(pid):
        if pid not in starts:
            starts[pid] = clock.process_start_ticks(pid, proc)
        return starts[pid]

    index = LeaseIndex(leases)
    live = [
        lease_live(lease, established, proc, start_of, conn) for lease, conn in zip(leases, index.conns, strict=True)
    ]
    evidence = Evidence(established, live, index=index)
    listening = {s.local_port for s in sockets if s.state == system.TCP_LISTEN}
    known = index.by_conn
    if all(s.tuple in known for s in sockets if s.state == system.TCP_ESTABLISHED and s.local_port in listening):
        evidence.checked = True
        return evidence
    try:
        processes = system.sshd_processes(proc)
        evidence.sessions = ssh_sessions(
            sockets,
            processes,
            lambda pid: system.socket_inodes(pid, proc),
            _privsep_uid(),
            lambda pid: system.title(pid, proc),
        )
        evidence.checked = True
    except PermissionError:
        evidence.why_unchecked = "reading sshd's processes and sockets needs root (CAP_SYS_PTRACE)"
    return evidence


class LeaseIndex:
    """The leases by their connection and by their monitor process, built once, for matching live sessions."""

    def __init__(self, leases):
        self.by_conn = {}
        self.by_process = {}
        self.conns = []  # each lease's lease_tuple(), in order
        for lease in leases:
            conn = lease_tuple(lease)
            self.conns.append(conn)
            if conn is not None:
                self.by_conn.setdefault(conn, lease)
            if lease.get("pid") is not None:
                self.by_process.setdefault((lease["pid"], lease.get("pid_start")), lease)

    def explaining(self, session):
        """Return the lease that records this live session, or None."""
        return self.by_conn.get(session.tuple) or self.by_process.get((session.pid, session.pid_start))
