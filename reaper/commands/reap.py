"""`idle-reaper reap`: one tick of the reaper, which the systemd timer (and path unit) runs.

A tick reads the config afresh, takes the state lock (filelock, the same flock the hook takes), ends leases
whose session is gone, records live SSH sessions the hook missed, decides, logs any change of decision, and
runs the action once when it is due. With `--wait`, a tick that finds the action due within that many
seconds sleeps until then and decides again, so the action lands on the deadline without a timer that fires
every second. While it sleeps it watches the state: a session that opens or closes meanwhile would have
started a tick of its own (idle-reaper.path) but for this one running, so it decides again at once, and
the wait counts afresh from there.
"""

import os
import time

from reaper import clock, config, decision, defaults, observe, policy
from reaper.config.durations import format_seconds
from reaper.errors import EXIT_FAILED, EXIT_OK, EXIT_SKIPPED, ReaperError
from reaper.evidence import ssh
from reaper.log import logger
from reaper.state import leases

# After the deadline, sleep this much longer so a check right at the boundary doesn't see 0.0001 s left.
WAKE_SLACK = 0.05
# While waiting for a deadline, look this often for a session opening or closing.
WATCH_INTERVAL = 0.5
# Evidence unclear for this long deserves a warning in the journal (shorter spells are normal).
UNCLEAR_WARN_AFTER = 600


def _lock_holder(lock_file, proc):
    """Return the pid holding a flock on the lock file, from /proc/locks, or None."""
    try:
        st = os.stat(lock_file)
        with open(f"{proc}/locks") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].endswith(f":{st.st_ino}"):
                    return int(fields[4])
    except (OSError, ValueError):
        pass
    return None


def file_lock(path, timeout):
    """Given the lock file's path, return a filelock.FileLock on it that keeps the file's mode 0600.

    filelock 3.10 and later set the file's mode at every attempt to take the lock, before they have it: to
    0644 unless told otherwise, so trixie's 3.18 would leave the file open to every user while a tick waits
    for the lock. Bookworm's 3.9 takes no mode and leaves the file's alone. Asked, not tried: a FileLock
    whose __init__ fails complains on stderr from its __del__.
    """
    import filelock

    init = filelock.FileLock.__init__.__code__
    if "mode" in init.co_varnames[: init.co_argcount + init.co_kwonlyargcount]:
        return filelock.FileLock(path, timeout=timeout, mode=defaults.LOCK_MODE)
    return filelock.FileLock(path, timeout=timeout)


class _StateLock:
    """The reaper's lock: filelock on the lock file, which is created first with mode 0600."""

    def __init__(self, state_dir, proc):
        import filelock

        self.state_dir = state_dir
        self.proc = proc
        os.close(leases.open_lock_file(state_dir))
        self.lock = file_lock(leases.lock_path(state_dir), defaults.REAPER_LOCK_TIMEOUT)
        self.timeout_error = filelock.Timeout

    def __enter__(self):
        try:
            self.lock.acquire()
        except self.timeout_error:
            holder = _lock_holder(leases.lock_path(self.state_dir), self.proc)
            who = f" (held by pid {holder})" if holder else ""
            raise ReaperError(
                f"skipping this tick: the state lock was busy for {defaults.REAPER_LOCK_TIMEOUT:g}s{who}",
                EXIT_SKIPPED,
            ) from None
        os.chmod(leases.lock_path(self.state_dir), defaults.LOCK_MODE)  # filelock versions differ in the mode
        return self

    def __exit__(self, *exc):
        self.lock.release()


def _adopt(state, evidence, boot):
    """Record live SSH sessions the state doesn't explain, so their end is noticed. Return True if any."""
    added = False
    # gather()'s index: the leases ended since (stale) can't explain a live session, so it still serves.
    index = evidence.index or ssh.LeaseIndex(state["leases"])
    for session in evidence.sessions:
        if index.explaining(session) is None:
            state["leases"].append(
                {
                    "user": session.user, "uid": session.uid, "service": None, "rhost": session.client,
                    "tty": None, "conn": None, "client": session.client, "client_port": session.client_port,
                    "server": session.server, "server_port": session.server_port, "key": None,
                    "pid": session.pid, "pid_start": session.pid_start,
                    "opened": session.pid_start / clock.CLK_TCK, "boot": boot, "source": "live",
                }
            )  # fmt: skip
            added = True
    return added


def evaluate(paths, cfg):
    """Hold the lock, read the state and the live system, decide, and write back what the tick learned:
    stale leases ended, missed sessions recorded, a change of decision logged. Return the Decision.
    """
    now = clock.now()
    boot = clock.boot_key(paths.proc)
    if os.geteuid() != 0:
        raise ReaperError("reap needs root: it writes the state and may power the machine off (try --dry-run)")
    try:
        leases.ensure_dir(paths.state_dir)
        lock = _StateLock(paths.state_dir, paths.proc)
    except PermissionError as e:
        raise ReaperError(f"reap needs root (or --dry-run): {e.filename}: {e.strerror}") from None
    except leases.StateError as e:
        raise ReaperError(f"refusing to use the state dir: {e}", EXIT_SKIPPED) from None
    with lock:
        problem = None
        try:
            raw = leases.read_state(paths.state_dir)
        except leases.StateError as e:
            bad = leases.set_aside(paths.state_dir, time.time())
            problem = f"state file unusable ({e}); kept as {bad}, rebuilt from the live system"
            logger.error(problem)
            raw = None
        state = leases.current(raw, boot)
        if problem:
            state["lost"] = now
        state["merged"] = leases.merge_pending(paths.state_dir, state)
        leases.remove_stale_temps(paths.state_dir, time.time())
        evidence, result = observe.look(paths, cfg, state, problem, now, views=False)
        changed = leases.end_leases(state, evidence.live, now) > 0  # first seen dead: now
        changed |= leases.cap_closed(state, lambda record: policy.counts_closed(cfg, record)) > 0
        changed |= _adopt(state, evidence, boot)
        memory = state["reaper"]
        key = decision.change_key(result)
        if memory.get("last") != key:
            level = logger.warning if result.state == decision.UNKNOWN or result.blocked else logger.info
            level(decision.summary(result))
            memory["last"], memory["since"] = key, now
            changed = True
        changed |= _note_unclear(memory, result, now)
        memory["tick"] = now
        if changed or problem or raw is None or state["merged"]:
            leases.commit(paths.state_dir, state)
    return result


def _note_unclear(memory, result, now):
    """Remember since when the evidence has been unclear. A tick that skips is normal for a moment (a lock
    held, a session between its login and its hook); one that lasts UNCLEAR_WARN_AFTER is logged at warning
    level once, and once more when it ends. Return True if the memory changed."""
    since = memory.get("unclear_since")
    if decision.unclear(result):
        if since is None:
            memory["unclear_since"] = now
            return True
        if now - since >= UNCLEAR_WARN_AFTER and not memory.get("unclear_warned"):
            logger.warning(f"the evidence has been unclear for {format_seconds(now - since)}, so nothing acts: "
                           f"{result.blocked or result.reason}")  # fmt: skip
            memory["unclear_warned"] = True
            return True
        return False
    if since is None:
        return False
    if memory.pop("unclear_warned", False):
        logger.warning(f"the evidence is clear again after {format_seconds(now - since)}")
    memory["unclear_since"] = None
    return True


def _record_action(paths, idle_since, when):
    with _StateLock(paths.state_dir, paths.proc):
        state = leases.load(paths.state_dir, clock.boot_key(paths.proc))
        state["reaper"]["acted_for"] = idle_since
        state["reaper"]["acted_at"] = when
        leases.commit(paths.state_dir, state)


def _stamp(state_dir):
    """What changes when a hook records a session: the state file's identity and the pending files."""
    try:
        st = os.stat(leases.state_path(state_dir))
        names = sorted(n for n in os.listdir(state_dir) if n.startswith(leases.PENDING_PREFIX))
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size, tuple(names))


def _sleep_watching(state_dir, seconds, sleep):
    """Sleep `seconds`, or less if the state changes meanwhile. Return True if it changed."""
    before = _stamp(state_dir)
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        sleep(min(WATCH_INTERVAL, left))
        if _stamp(state_dir) != before:
            return True
    return False


def reap(paths, dry_run=False, wait=0.0, sleep=time.sleep):
    """Run one tick (more with `wait`). Return the exit code. Raise ReaperError or ConfigError on failure."""
    give_up = time.monotonic() + max(0.0, wait)
    while True:
        cfg = config.load(paths.config, cache_dir=paths.state_dir, keep=not dry_run)
        result = observe.observe(paths, cfg).decision if dry_run else evaluate(paths, cfg)
        if result.act:
            if dry_run:
                logger.info(f"dry run: would run {list(cfg.action)} now ({decision.summary(result)})")
                return EXIT_OK
            logger.warning(f"running the action {list(cfg.action)}: {decision.summary(result)}")
            from reaper import actions  # subprocess: only a tick that acts needs it, not every tick

            try:
                output = actions.run(cfg.action, in_unit=cfg.action_name is None and actions.under_systemd())
            except ReaperError as e:
                logger.error(f"{e}; the next tick tries again")
                raise ReaperError(str(e), EXIT_FAILED) from None
            logger.info(f"the action finished{': ' + output if output else ''}")
            _record_action(paths, result.idle_since, clock.now())
            return EXIT_OK
        if dry_run:
            logger.info(f"dry run: {decision.summary(result)}")
        if decision.unclear(result):
            return EXIT_SKIPPED
        if result.next_check is None or time.monotonic() + result.next_check > give_up:
            return EXIT_OK
        if _sleep_watching(paths.state_dir, result.next_check + WAKE_SLACK, sleep):
            give_up = max(give_up, time.monotonic() + wait)


def handle(args, paths):
    return reap(paths, dry_run=args.dry_run, wait=args.wait)
