"""Warnings to connected users: a short message on each counted session's terminal before an action that
would run while they are still logged in (today: max_duration once its grace ends).

Lead times: LEADS before the action (30, 5 and 1 minute). Each session gets each lead's warning once; one
that logs in late gets the nearest one at once. A session without a terminal (VS Code Remote-SSH, `ssh -N`,
`ssh host command`) gets no message: there is nowhere to write it.

Finding the terminal: the lease's tty is PAM_TTY, "ssh" for sshd, so the terminal is found from the
session's processes: every descendant of the lease's sshd process whose stdin, stdout or stderr is a pty.
It is opened through /proc/PID/fd/N, never by a path a user could swap, and only if it is a pty (a character
device of the Unix98 pty majors). Root writes to it whatever `mesg` says.

The tick's own unit has PrivateDevices= (no pty can be opened from it), so under systemd the writing runs in a
transient unit (systemd-run) with its own small sandbox: no network, the filesystem read-only, only the
capabilities to read other users' /proc/PID/fd and open their pty, and only ptys as devices.
"""

import os
import stat

from reaper.config.durations import format_seconds

LEADS = (1800, 300, 60)
# Test-only: other lead times, as seconds separated by commas (the system tier sets it in a unit drop-in).
LEADS_ENV = "IDLE_REAPER_WARN_LEADS"
PTY_MAJORS = range(136, 144)  # Unix98 ptys: /dev/pts/N
SENDER_TIMEOUT = 20


def leads(environ=os.environ):
    """Return the lead times in seconds, longest first."""
    raw = environ.get(LEADS_ENV)
    if raw:
        try:
            values = tuple(int(x) for x in raw.split(",") if x.strip())
            if values and all(v > 0 for v in values):
                return tuple(sorted(values, reverse=True))
        except ValueError:
            pass
    return LEADS


def due(lead_times, left, sent):
    """Given the lead times, the seconds left before the action and the leads a session was already warned
    for: return the leads to mark as sent now (all those reached), or () if none is new. One message covers
    them: a session that logs in 3 minutes before the action gets the 5-minute warning only."""
    reached = tuple(lead for lead in lead_times if left <= lead)
    return reached if any(lead not in sent for lead in reached) else ()


def next_wake(lead_times, left, sent=()):
    """Return the seconds until the next lead time is reached (for the tick's sleep), or None."""
    ahead = [left - lead for lead in lead_times if lead < left and lead not in sent]
    return min(ahead) if ahead else None


def message(cfg, left, at):
    """The text for a terminal: what happens, when, and what the user can do. CR LF: the tty may be raw."""
    what = "powers off" if cfg.action_name == "poweroff" else "is stopped"
    when = format_seconds(max(1, round(left)))
    lines = [
        "",
        f"*** idle-reaper: this machine {what} in {when} (at {at}), even with you logged in:",
        f"*** max_duration {format_seconds(cfg.max_duration)} has passed. Save your work and log out: it stops",
        "*** as soon as nobody is connected. Only an admin can postpone it, by raising max_duration",
        "*** in /etc/idle-reaper/config.yaml (idle-reaper inhibit does not hold it off).",
        "",
    ]
    return "\r\n".join(lines)


def _children(proc):
    """Return {ppid: [pid, ...]} of every process."""
    kids = {}
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        try:
            with open(f"{proc}/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        ppid = int(data[data.rindex(b")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(name))
    return kids


def terminals(pids, proc="/proc"):
    """Given the sshd pids of sessions, return [(pid, fd, rdev)]: one way to open each distinct pty that a
    descendant of them has as fd 0, 1 or 2."""
    kids = _children(proc)
    found = {}
    for root in pids:
        todo, seen = [root], set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            todo.extend(kids.get(pid, ()))
            for fd in (0, 1, 2):
                try:
                    st = os.stat(f"{proc}/{pid}/fd/{fd}")
                except OSError:
                    continue
                if stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) in PTY_MAJORS:
                    found.setdefault(st.st_rdev, (pid, fd, st.st_rdev))
    return list(found.values())


def write_terminals(pids, text, proc="/proc"):
    """Write text on the terminal of each session. Return (written, errors): pty names and error lines."""
    written, errors = [], []
    for pid, fd, rdev in terminals(pids, proc):
        name = f"pts/{os.minor(rdev) + (os.major(rdev) - 136) * 256}"
        try:
            out = os.open(f"{proc}/{pid}/fd/{fd}", os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            errors.append(f"{name}: {e.strerror}")
            continue
        try:
            if os.fstat(out).st_rdev != rdev:  # the fd changed between the look and the open
                continue
            os.write(out, text.encode("utf-8"))
            written.append(name)
        except OSError as e:
            errors.append(f"{name}: {e.strerror}")
        finally:
            os.close(out)
    return written, errors


# The transient unit's sandbox: what writing to a pty needs, nothing more.
SENDER_PROPERTIES = (
    "CapabilityBoundingSet=CAP_SYS_PTRACE CAP_DAC_OVERRIDE", "NoNewPrivileges=yes", "ProtectSystem=strict",
    "ProtectHome=yes", "PrivateTmp=yes", "PrivateNetwork=yes", "IPAddressDeny=any", "RestrictAddressFamilies=AF_UNIX",
    "DevicePolicy=closed", "DeviceAllow=char-pts w", "ProtectKernelModules=yes", "ProtectKernelTunables=yes",
    "ProtectKernelLogs=yes", "ProtectClock=yes", "ProtectHostname=yes", "RestrictNamespaces=yes",
    "LockPersonality=yes", "MemoryDenyWriteExecute=yes", "RestrictRealtime=yes", "RestrictSUIDSGID=yes",
    "SystemCallArchitectures=native", "SystemCallFilter=@system-service", "SyslogIdentifier=idle-reaper",
)  # fmt: skip


def send(pids, text, in_unit, program="/usr/bin/idle-reaper"):
    """Warn the sessions of these sshd pids; under systemd, from a transient unit. Return a line for the log.

    Raise OSError or ReaperError if it could not run.
    """
    if not in_unit:
        written, errors = write_terminals(pids, text)
        return _outcome(written, errors)
    from reaper.actions import run_command

    argv = ["systemd-run", "--quiet", "--wait", "--collect", "--pipe", "--service-type=exec"]
    argv += [f"--property={p}" for p in SENDER_PROPERTIES]
    argv += [program, "warn-terminals", "--message", text, *map(str, pids)]
    return run_command(argv, SENDER_TIMEOUT, "writing the warning")


def _outcome(written, errors):
    parts = [f"written on {', '.join(written)}" if written else "no terminal to write on"]
    if errors:
        parts.append(f"failed on {'; '.join(errors)}")
    return "; ".join(parts)


def handle_terminals(pids, text):
    """`idle-reaper warn-terminals`: what the transient unit runs. Print the outcome (the tick logs it)."""
    written, errors = write_terminals(pids, text)
    print(_outcome(written, errors))  # noqa: T201 - read back by the tick through systemd-run --pipe
    return 0
