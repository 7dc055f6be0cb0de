"""The login notice: one or two lines that every interactive SSH login shows, written by the tick.

Nothing runs on the login path for it. The tick writes the text into /run/motd.d/idle-reaper when it changes,
and Debian's sshd PAM stack shows it (`pam_motd.so noupdate` reads /etc/motd, /run/motd.d and
/usr/lib/motd.d, with the user's credentials: the file is 0644). The text holds no ticking seconds, only
wall-clock times to the minute, so it changes with the decision and not at every tick. A notice describes the
state before the login that reads it: the login itself is activity, which the next tick counts.
"""

import os

from reaper import decision, defaults
from reaper.config.durations import format_seconds

KEEP_UP = "idle-reaper inhibit --for 2h"


def text(cfg, d, clock_at):
    """Given the config, the Decision and clock_at(seconds from now) -> "HH:MM TZ", return the notice (lines
    ending in a newline), or None when there is nothing to show (notice off, or no policy that acts)."""
    if not cfg.notice or (cfg.inactivity_duration is None and cfg.max_duration is None):
        return None
    return f"{_policy(cfg, d, clock_at)}\n{_now(cfg, d, clock_at)}\n"


def _policy(cfg, d, clock_at):
    act = "powers off" if cfg.action_name == "poweroff" else "is stopped"
    parts = []
    if cfg.inactivity_duration is not None:
        parts.append(f"after {format_seconds(cfg.inactivity_duration)} with nobody connected over SSH")
    if cfg.max_duration is not None:
        cap = f"{format_seconds(cfg.max_duration)} after it started"
        if d.cap_seconds_left:
            cap += f" (at {clock_at(d.cap_seconds_left)})"
        grace = cfg.max_duration_grace
        later = f"at most {format_seconds(grace)} later" if grace is not None else "once the last one leaves"
        parts.append(f"{cap} in any case ({later} if someone is connected)")
    return f"idle-reaper: this machine {act} {' and '.join(parts)}."


def _now(cfg, d, clock_at):
    keep = f"Keep it up: {KEEP_UP}; details: idle-reaper status."
    if d.cause == decision.MAX_DURATION and d.cap_seconds_left == 0:
        if d.grace_seconds_left:
            latest = clock_at(d.grace_seconds_left)
            return f"Now: max_duration reached; it stops at {latest} at the latest: save your work."
        if d.blocked_kind == "grace":
            return "Now: max_duration reached; it stops once the last user leaves: save your work."
        return "Now: max_duration reached; it stops as soon as nobody is connected: save your work."
    if cfg.max_duration is not None:
        keep = f"Keep it up (until max_duration): {KEEP_UP}; details: idle-reaper status."
    if d.state == decision.ACTIVE:
        return f"Now: in use ({d.connected} connected); the countdown starts when the last one leaves. {keep}"
    if d.state == decision.IDLE:
        if d.seconds_until_action:
            when = clock_at(d.seconds_until_action)
            return f"Now: idle, set to stop at {when} unless someone connects (this login counts). {keep}"
        return f"Now: idle past its deadline ({d.blocked or 'stopping'}). {keep}"
    if d.state == decision.INHIBITED:
        return f"Now: kept up by an inhibitor (idle-reaper inhibit --list shows it). {keep}"
    if d.state == decision.DISABLED:
        return f"Now: no idle shutdown (inactivity_duration is off). {keep}"
    return "Now: unknown, so nothing is stopped until the reaper can tell (see idle-reaper status)."


def clock(now_wall, form="%H:%M %Z"):
    """Return clock_at for text(): seconds from now as local wall-clock time, to the minute (display only)."""
    import time  # time.strftime, not datetime: every tick calls this, and datetime costs an import

    def clock_at(seconds):
        return time.strftime(form, time.localtime(now_wall + seconds))

    return clock_at


def write(motd_dir, content):
    """Make the notice file hold `content` (remove it for None). Return True if the file changed.

    Atomic: a temp file in the same directory, fsync, rename; mode 0644 whatever the umask. Raise OSError.
    """
    path = os.path.join(motd_dir, defaults.NOTICE_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == content:
                return False
    except FileNotFoundError:
        if content is None:
            return False
    if content is None:
        os.unlink(path)
        return True
    from reaper.state.leases import replace_file

    replace_file(path, content.encode("utf-8"), defaults.NOTICE_MODE)
    return True
