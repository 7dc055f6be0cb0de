"""Boot-relative time and the identity of this boot.

Every decision uses CLOCK_BOOTTIME, never the wall clock, so NTP steps or `date -s` can't move a deadline.
"Boot" is when this system's PID 1 started, not when the kernel did: in a container the kernel, its boot id
and CLOCK_BOOTTIME are the host's. /proc/PID/stat gives start times in clock ticks of that same clock.
Imported by the PAM hook, so it uses nothing beyond posix and time (see reaper/hook.py).
"""

import posix
import time

from reaper import defaults
from reaper.evidence import monitor

CLK_TCK = posix.sysconf("SC_CLK_TCK")


def now():
    """Return seconds since the kernel booted, counting suspend (CLOCK_BOOTTIME)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def process_start_ticks(pid, proc=defaults.PROC):
    """Given a pid, return its start time in clock ticks since kernel boot, or None if it is gone."""
    fields = monitor.stat_fields(pid, proc)
    return None if fields is None else int(fields[19])


def boot_id(proc=defaults.PROC):
    """Return the kernel's boot id as this mount namespace shows it (nspawn overlays its own)."""
    with open(f"{proc}/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def boot_key(proc=defaults.PROC, container_file=defaults.CONTAINER_FILE):
    """Return a string naming this boot, the same for the hook (in sshd's context) and the reaper (in its
    sandbox): the start of PID 1 in this PID namespace, and what tells this kernel's boots or this
    container's starts apart.

    On metal or in a VM that is the kernel's boot id. In a container (systemd writes container_file there)
    the kernel is the host's, and what a process reads as the boot id depends on its /proc: nspawn mounts a
    container's own over it, and a unit with ProtectProc= or ProtectKernelTunables= gets a fresh /proc that
    shows the host's. There it is the PID namespace (this process's, which is PID 1's), which every /proc
    of the container shows alike; PID 1's start tells two starts of one container apart.
    """
    start = process_start_ticks(1, proc)
    if _exists(container_file):
        return f"pidns:{posix.stat(f'{proc}/self/ns/pid').st_ino}/{start}"
    return f"{boot_id(proc)}/{start}"


def boot_started(proc=defaults.PROC):
    """Return when this system's PID 1 started, in CLOCK_BOOTTIME seconds."""
    return process_start_ticks(1, proc) / CLK_TCK


def _exists(path):
    try:
        posix.stat(path)
    except OSError:
        return False
    return True
