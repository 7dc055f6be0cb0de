"""Pre-action hooks: the executables in /etc/idle-reaper/pre-action.d/, run in order just before the action.

Names follow run-parts: letters, digits, underscores and hyphens only (so `sync.dpkg-old`, `x~` and
`README.md` are skipped), in C-locale order. A hook must be a regular file owned by root, writable by nobody
else, and executable; anything else is skipped and logged. Each gets `pre_action_timeout`; one that fails or
times out is logged and the others still run. Their environment: IDLE_REAPER_REASON, IDLE_REAPER_CAUSE,
IDLE_REAPER_IDLE_SECONDS and IDLE_REAPER_DEADLINE (ISO 8601 wall time when the action fell due), and PATH.

Under systemd each hook runs as a transient unit, idle-reaper-pre-action-NAME.service, with the sandbox of
idle-reaper-action.service: the network is allowed (a hook may push a workspace somewhere), the filesystem
is writable, /tmp is private, the kernel and the clock are off limits, and it can't gain privileges. Its
output goes to the journal under the identifier idle-reaper. A drop-in for the prefix,
/etc/systemd/system/idle-reaper-pre-action-.service.d/*.conf, gives every hook more or less than that.
"""

import os
import re
import stat
import time

NAME = re.compile(r"[A-Za-z0-9_-]+")
UNIT_PREFIX = "idle-reaper-pre-action-"
# The sandbox of idle-reaper-action.service, for each hook's transient unit.
PROPERTIES = (
    "NoNewPrivileges=yes", "PrivateTmp=yes", "ProtectKernelModules=yes", "ProtectKernelLogs=yes",
    "ProtectClock=yes", "LockPersonality=yes", "RestrictRealtime=yes", "RestrictSUIDSGID=yes",
    "SystemCallArchitectures=native", "SyslogIdentifier=idle-reaper",
)  # fmt: skip
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def hooks(directory):
    """Return ([path of each hook to run, in order], [why each other entry is skipped])."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return [], []
    except OSError as e:
        return [], [f"{directory}: {e.strerror}"]
    run, skipped = [], []
    for name in names:
        path = os.path.join(directory, name)
        if not NAME.fullmatch(name):
            continue  # run-parts skips these silently: backups, dpkg leftovers, READMEs
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            skipped.append(f"{path}: not a regular file")
        elif st.st_uid != 0 or st.st_mode & 0o022:
            skipped.append(f"{path}: unsafe: it must be owned by root and writable by nobody else")
        elif not st.st_mode & 0o100:
            skipped.append(f"{path}: not executable")
        else:
            run.append(path)
    return run, skipped


def environment(result, deadline_iso):
    """The variables a hook gets, from the Decision that made the action due."""
    return {
        "IDLE_REAPER_REASON": result.reason,
        "IDLE_REAPER_CAUSE": result.cause or "",
        "IDLE_REAPER_IDLE_SECONDS": str(int(result.idle_seconds)),
        "IDLE_REAPER_DEADLINE": deadline_iso,
    }


class Outcome:
    """How one hook ended: ok, failed (exit status) or timed out; its output when it ran outside a unit."""

    def __init__(self, path, status, seconds, output=""):
        self.path, self.status, self.seconds, self.output = path, status, seconds, output

    def describe(self):
        return f"pre-action hook {self.path} {self.status} after {self.seconds:.1f}s"


def run_one(path, env, timeout, in_unit):
    """Run one hook within `timeout` seconds; return its Outcome. Never raises for the hook's own failure."""
    import subprocess  # noqa: S404 - argv lists of root-owned executables, no shell

    started = time.monotonic()
    if in_unit:
        unit = UNIT_PREFIX + os.path.basename(path) + ".service"
        argv = ["systemd-run", "--quiet", "--wait", "--collect", "--service-type=exec", f"--unit={unit}",
                f"--property=RuntimeMaxSec={timeout}", *(f"--property={p}" for p in PROPERTIES),
                *(f"--setenv={k}={v}" for k, v in env.items()), f"--setenv=PATH={PATH}", path]  # fmt: skip
        limit, child_env = timeout + 30, None
    else:
        argv, limit, child_env = [path], timeout, {"PATH": PATH, **env}
    try:
        done = subprocess.run(  # noqa: S603 - argv list, shell=False
            argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=limit, check=False, env=child_env
        )
    except subprocess.TimeoutExpired as e:
        output = (e.output or b"") + (e.stderr or b"")
        return Outcome(path, f"timed out (pre_action_timeout {timeout}s)", time.monotonic() - started,
                       output.decode("utf-8", "replace").strip())  # fmt: skip
    except OSError as e:
        return Outcome(path, f"could not start: {e.strerror}", time.monotonic() - started)
    seconds = time.monotonic() - started
    output = (done.stdout + done.stderr).decode("utf-8", "replace").strip()
    if done.returncode == 0:
        return Outcome(path, "finished", seconds, output)
    if in_unit and seconds >= timeout:  # RuntimeMaxSec= stopped it
        return Outcome(path, f"timed out (pre_action_timeout {timeout}s)", seconds, output)
    return Outcome(path, f"failed with exit status {done.returncode}", seconds, output)


def run_all(directory, env, timeout, in_unit, log):
    """Run every hook in order, each within `timeout`; log each one's end (and its output when it ran
    outside a unit; in a unit the output is already in the journal). Return the Outcomes."""
    paths, skipped = hooks(directory)
    for why in skipped:
        log.warning(f"skipping a pre-action hook: {why}")
    outcomes = []
    for path in paths:
        log.info(f"running pre-action hook {path}")
        outcome = run_one(path, env, timeout, in_unit)
        ok = outcome.status == "finished"
        (log.info if ok else log.error)(outcome.describe() + ("" if ok else "; the others still run"))
        for line in outcome.output.splitlines()[-50:]:
            log.info(f"{os.path.basename(path)}: {line}")
        outcomes.append(outcome)
    return outcomes
