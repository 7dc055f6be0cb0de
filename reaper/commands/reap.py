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

from reaper import actions, clock, config, decision, defaults, observe, policy
from reaper.config.durations import format_seconds
from reaper.errors import EXIT_FAILED, EXIT_OK, EXIT_SKIPPED, ReaperError
from reaper.evidence import activity, ssh
from reaper.log import logger
from reaper.state import inhibitors, leases

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


def evaluate(paths, cfg, outbox=None):
    """Hold the lock, read the state and the live system, decide, and write back what the tick learned:
    stale leases ended, missed sessions recorded, a change of decision logged. Return the Decision.

    A warning due to connected users is marked as sent here and appended to `outbox` as (left, pids), for
    the caller to write once the lock is released.
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
            if result.blocked_kind == decision.LOGGING_IN and actions.under_systemd():
                # A login between pam_loginuid and the hook: every login has that moment, so the timer's
                # ticks don't log it (a person running reap by hand still reads why nothing ran).
                level = logger.debug
            level(decision.summary(result))
            memory["last"], memory["since"] = key, now
            changed = True
        changed |= _note_unclear(memory, result, now)
        changed |= _remember_end(memory, result, now)
        activity.tidy_all(paths, result.activities, now)
        changed |= _update_notice(paths, cfg, result, memory)
        changed |= _due_warnings(cfg, state, result, memory, outbox)
        events, moved = _history_events(memory, cfg, state, result, now, boot, paths)
        changed |= moved
        memory["tick"] = now
        if changed or problem or raw is None or state["merged"]:
            leases.commit(paths.state_dir, state)
        _append_history(paths, events, boot, now)
        _export_metrics(paths, cfg, state, result, now)
    return result


def _warned_sessions(cfg, state):
    """The live leases whose users are warned: every session that is not ignored (a young one too)."""
    return [lease for lease in state["leases"] if lease.get("pid") and policy.ignore_reason(cfg, lease) is None]


def _due_warnings(cfg, state, result, memory, outbox):
    """Mark the warnings due now as sent (per session: its pid and open time) and queue them in outbox.
    Return True if the memory changed."""
    if outbox is None or result.blocked_kind != "grace" or result.grace_seconds_left is None:
        return False
    from reaper.actions import warn

    lead_times = warn.leads()
    left = result.grace_seconds_left
    before = memory.get("warned") or {}
    live = {f"{lease['pid']}/{lease.get('opened')}": lease["pid"] for lease in _warned_sessions(cfg, state)}
    sent, due = {}, []
    for key, pid in live.items():  # sessions that ended are forgotten
        sent[key] = list(before.get(key, ()))
        reached = warn.due(lead_times, left, sent[key])
        if reached:
            sent[key] = sorted(set(sent[key]) | set(reached))
            due.append(pid)
    if due:
        outbox.append((left, due))
    if sent == before:
        return False
    memory["warned"] = sent
    return True


def _next_warning(cfg, result):
    """Seconds until the next lead time of the warnings, while waiting in the grace; else None."""
    if result.blocked_kind != "grace" or result.grace_seconds_left is None:
        return None
    from reaper.actions import warn

    return warn.next_wake(warn.leads(), result.grace_seconds_left)


def _send_warnings(cfg, outbox):
    from reaper.actions import notice, warn

    for left, pids in outbox:
        text = warn.message(cfg, left, notice.clock(time.time(), "%H:%M:%S %Z")(left))
        try:
            from reaper import actions

            outcome = warn.send(pids, text, in_unit=actions.under_systemd())
            logger.warning(f"warned {len(pids)} session(s) that the action runs in {format_seconds(round(left))}"
                           f" (max_duration): {outcome}")  # fmt: skip
        except (OSError, ReaperError) as e:
            logger.error(f"could not warn the connected users: {e}")


def _pre_action_dir(paths):
    """The hooks' directory: pre-action.d next to the config (/etc/idle-reaper/pre-action.d)."""
    return os.path.join(os.path.dirname(os.path.abspath(paths.config)), defaults.PRE_ACTION_DIR_NAME)


def _run_pre_action_hooks(paths, cfg, result):
    """Run the pre-action hooks, if there are any. Return True if any ran (or was skipped)."""
    from reaper import actions
    from reaper.actions import pre_action

    directory = _pre_action_dir(paths)
    found, skipped = pre_action.hooks(directory)
    if not found and not skipped:
        return False
    from datetime import UTC, datetime

    if result.cause == decision.MAX_DURATION:
        due_at = clock.boot_started(paths.proc) + cfg.max_duration
    else:
        due_at = result.idle_since + (cfg.inactivity_duration or 0)
    deadline = datetime.fromtimestamp(time.time() - (clock.now() - due_at), tz=UTC).astimezone()
    env = pre_action.environment(result, deadline.isoformat(timespec="seconds"))
    pre_action.run_all(directory, env, cfg.pre_action_timeout, actions.under_systemd(), logger)
    return True


def _logins_since(paths, cfg, since):
    """Given a CLOCK_BOOTTIME instant, return for each live session opened since then that is not ignored the
    seconds until it has been open for min_session (at least 0)."""
    seen = observe.observe(paths, cfg)
    if seen.state is None:
        return []
    now = clock.now()
    waits = []
    for lease, live in zip(seen.state["leases"], seen.evidence.live, strict=True):
        opened = lease.get("opened")
        if live and opened is not None and opened >= since and policy.ignore_reason(cfg, lease) is None:
            waits.append(max(0.0, opened + cfg.min_session - now))
    return waits


def _notice_wait(paths, cfg, result):
    """While a new session is younger than min_session, the seconds until the first one counts: then the
    state turns active, and the login notice says so without waiting for the timer. None otherwise."""
    if not result.new_sessions or paths.motd_dir is None or not cfg.notice:
        return None
    waits = [w for w in _logins_since(paths, cfg, 0.0) if w > 0]
    return min(waits) if waits else None


def _update_notice(paths, cfg, result, memory):
    """Write the login notice if its text changed (actions.notice). A failure is logged once, not every tick,
    and never stops the tick. Return True if the memory changed."""
    if paths.motd_dir is None:
        return False
    from reaper.actions import notice

    try:
        if notice.write(paths.motd_dir, notice.text(cfg, result, notice.clock(time.time()))):
            logger.debug("login notice updated")
        error = None
    except OSError as e:
        error = f"cannot write the login notice in {paths.motd_dir}: {e.strerror}"
    if error == memory.get("notice_error"):
        return False
    if error:
        logger.warning(error)
    memory["notice_error"] = error
    return True


# What a tick does besides deciding: the history log and the metrics. Each is failsafe: a failure is logged
# and the tick goes on (the decision and the action never depend on them).


def _history_events(memory, cfg, state, result, now, boot, paths):
    from reaper.actions import history

    try:
        return history.observe(memory, cfg, state, result, now, boot, clock.boot_started(paths.proc))
    except Exception as e:  # noqa: BLE001 - the history must never fail a tick
        logger.error(f"history: could not work out what happened: {type(e).__name__}: {e}")
        return [], False


def _append_history(paths, events, boot, now):
    if not events:
        return
    from reaper.actions import history

    where = history.directory(paths.state_dir)
    try:
        history.append(where, events, boot, now, time.time())
    except Exception as e:  # noqa: BLE001 - the history must never fail a tick
        logger.error(f"history: could not append to {where}: {type(e).__name__}: {e}")


def _export_metrics(paths, cfg, state, result, now):
    if cfg.metrics is None:
        return
    from reaper.actions import metrics

    try:
        counts = metrics.session_counts(cfg, state["leases"], now)
        text = metrics.render(cfg, result, state["reaper"], counts, now, time.time(), clock.boot_started(paths.proc))
        metrics.write(cfg.metrics, text)
    except Exception as e:  # noqa: BLE001 - a failing metrics write is logged, never fails the tick
        logger.error(f"metrics: could not write {cfg.metrics}: {type(e).__name__}: {e}")


def _remember_end(memory, result, now):
    """Remember the latest end of any other kind of activity, which idleness is measured from, so its source
    may forget it (an inhibitor released, a mosh client gone). Return True if the memory changed."""
    changed = False
    latest = decision.last_end(result.activities, now, memory.get("activity_end"))
    if latest is not None and latest != tuple((memory.get("activity_end") or {}).values()):
        memory["activity_end"] = {"at": latest[0], "what": latest[1]}
        changed = True
    # What lasts now, so that the next tick notices one that no source reports any more (decision.vanished).
    lasting = {f"{a.kind} {a.id}": a.describe() for a in result.activities if a.end(now) is None}
    if lasting != (memory.get("lasting") or {}):
        memory["lasting"] = lasting
        changed = True
    return changed


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


def _record_action(paths, cfg, result, when, error=None):
    """Remember that the action ran for this idle period (or failed), in the state, the history and the
    metrics."""
    boot = clock.boot_key(paths.proc)
    with _StateLock(paths.state_dir, paths.proc):
        state = leases.load(paths.state_dir, boot)
        memory = state["reaper"]
        if error is None:
            memory["acted_for"] = result.idle_since
            memory["acted_at"] = when
            memory["actions_ok"] = memory.get("actions_ok", 0) + 1
            if result.cause == decision.MAX_DURATION:
                memory["acted_cap"] = True  # the cap acts once per boot
        else:
            memory["action_failed_at"] = when
            memory["actions_failed"] = memory.get("actions_failed", 0) + 1
            _append_history(paths, [{"ev": "action_failed", "b": when, "error": error}], boot, when)
        leases.commit(paths.state_dir, state)
        _export_metrics(paths, cfg, state, result, when)


def _history_of_action(paths, cfg, result):
    """Log the action with its reason before it runs: a poweroff may end this process before it returns."""
    from reaper.actions import history

    now = clock.now()
    event = history.action_event(now, cfg.action, decision.summary(result))
    _append_history(paths, [event], clock.boot_key(paths.proc), now)


def _stamp(state_dir):
    """What changes when a hook records a session (the state file's identity and the pending files) or when an
    inhibitor begins or ends (the inhibitors directory's mtime: every file is created, replaced or deleted
    by a rename or an unlink in it)."""
    try:
        st = os.stat(leases.state_path(state_dir))
        names = sorted(n for n in os.listdir(state_dir) if n.startswith(leases.PENDING_PREFIX))
    except OSError:
        return None
    try:
        held = os.stat(inhibitors.dir_path(state_dir)).st_mtime_ns
    except OSError:
        held = None
    return (st.st_ino, st.st_mtime_ns, st.st_size, tuple(names), held)


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
        outbox = []
        result = observe.observe(paths, cfg).decision if dry_run else evaluate(paths, cfg, outbox)
        decided_at = time.monotonic()
        if outbox:
            _send_warnings(cfg, outbox)
        if result.act:
            if dry_run:
                logger.info(f"dry run: would run {list(cfg.action)} now ({decision.summary(result)})")
                return EXIT_OK
            hooks_started = clock.now()
            if _run_pre_action_hooks(paths, cfg, result):
                # Decide again: someone may have logged in, or the config changed, while the hooks ran.
                cfg = config.load(paths.config, cache_dir=paths.state_dir, keep=True)
                result = evaluate(paths, cfg)
                if not result.act:
                    logger.warning(f"not running the action after the pre-action hooks: {decision.summary(result)}")
                    return EXIT_SKIPPED if decision.unclear(result) else EXIT_OK
                # A login during the hooks may be younger than min_session, which alone would not hold the
                # action this late: it holds it until it counts.
                young = _logins_since(paths, cfg, hooks_started)
                if young:
                    logger.warning("not running the action: a session opened during the pre-action hooks;"
                                   " deciding again once it has been open for min_session")  # fmt: skip
                    sleep(max(young) + WAKE_SLACK)
                    continue
            logger.warning(f"running the action {list(cfg.action)}: {decision.summary(result)}")
            from reaper import actions

            _history_of_action(paths, cfg, result)
            try:
                output = actions.run(cfg.action, in_unit=cfg.action_name is None and actions.under_systemd())
            except ReaperError as e:
                logger.error(f"{e}; the next tick tries again")
                try:
                    _record_action(paths, cfg, result, clock.now(), error=str(e))
                except ReaperError as busy:
                    logger.error(f"the failure was not recorded: {busy}")
                raise ReaperError(str(e), EXIT_FAILED) from None
            logger.info(f"the action finished{': ' + output if output else ''}")
            _record_action(paths, cfg, result, clock.now())
            return EXIT_OK
        if dry_run:
            logger.info(f"dry run: {decision.summary(result)}")
        if decision.unclear(result):
            return EXIT_SKIPPED
        next_check = result.next_check
        for soon in (_next_warning(cfg, result), None if dry_run else _notice_wait(paths, cfg, result)):
            if soon is not None:
                next_check = soon if next_check is None else min(next_check, soon)
        if next_check is None or time.monotonic() + next_check > give_up:
            return EXIT_OK
        next_check = max(0.0, next_check - (time.monotonic() - decided_at))  # writing warnings takes a moment
        if _sleep_watching(paths.state_dir, next_check + WAKE_SLACK, sleep):
            give_up = max(give_up, time.monotonic() + wait)


def handle(args, paths):
    return reap(paths, dry_run=args.dry_run, wait=args.wait)
