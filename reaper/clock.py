"""Boot-relative time and the identity of this boot.

Every decision uses CLOCK_BOOTTIME, never the wall clock, so NTP steps or `date -s` can't move a deadline.
"Boot" is when this system's PID 1 started, not when the kernel did: in a container the kernel, its boot id
and CLOCK_BOOTTIME are the host's. /proc/PID/stat gives start times in clock ticks of that same clock.
Imported by the PAM hook, so it uses nothing beyond os and time.
"""

import os
import time

from reaper import defaults, monitor

CLK_TCK = os.sysconf("SC_CLK_TCK")


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


def boot_key(proc=defaults.PROC):
    """Return a string naming this boot: the boot id and the start of PID 1 in this PID namespace.

    The PID 1 part tells two starts of one container apart, which share the host kernel's boot id.
    """
    return f"{boot_id(proc)}/{process_start_ticks(1, proc)}"


def boot_started(proc=defaults.PROC):
    """Return when this system's PID 1 started, in CLOCK_BOOTTIME seconds."""
    return process_start_ticks(1, proc) / CLK_TCK
