"""`idle-reaper inhibit`: keep the machine up on purpose, for any user the config allows.

    inhibit --for 4h [--why TEXT]          hold for that long; returns at once and prints the id
    inhibit [--why TEXT] -- COMMAND ...    run the command and hold while it runs; its exit status is ours
    inhibit --pid PID [--why TEXT]         hold while that process (of this user's) runs
    inhibit --list [--json]                every inhibitor that holds
    inhibit --release ID                   end one of one's own (root: anyone's) now

Each inhibitor is a file of its holder's in the inhibitors directory (reaper.state.inhibitors), which the
tick reads (reaper.evidence.inhibitors). `-- COMMAND`: the command is forked and waits until its file is
written, so the hold follows the command's own pid and start time; this process waits for it, passes on
the signals it gets (those the terminal sends the whole foreground group reach the command by themselves),
and writes the end the moment it exits. If this process is killed (SIGKILL), the hold still follows the
command, and ends when a tick sees it gone.
"""

import json
import os
import signal
import sys
import time
from datetime import UTC, datetime

from reaper import clock, config
from reaper.config import durations
from reaper.errors import EXIT_USAGE, ReaperError
from reaper.escape import escape
from reaper.evidence import inhibitors as evidence
from reaper.log import logger
from reaper.state import inhibitors as files

# Signals passed on to the command. SIGCHLD is waited for with them; job control (SIGTSTP, SIGCONT) acts on
# the whole process group, this process and the command alike.
FORWARDED = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2,
             signal.SIGWINCH, signal.SIGALRM)  # fmt: skip
# The command could not be run: as env(1) and the shells say.
EXIT_CANNOT_RUN = 126
EXIT_NOT_FOUND = 127


def _wall(boottime, now_boot):
    if boottime is None:
        return None
    return datetime.fromtimestamp(time.time() - (now_boot - boottime), tz=UTC).astimezone()


def _iso(boottime, now_boot):
    dt = _wall(boottime, now_boot)
    return None if dt is None else dt.isoformat(timespec="seconds")


def _clock(boottime, now_boot):
    return _wall(boottime, now_boot).strftime("%H:%M:%S %Z (%Y-%m-%d)")


def _record(how, why, since, until=None, pid=None, pid_start=None, ended=None, boot=None):
    return {"format": files.FORMAT, "boot": boot, "how": how, "why": why, "since": since, "until": until,
            "pid": pid, "pid_start": pid_start, "ended": ended}  # fmt: skip


def _check_why(why):
    if why is not None and len(why) > files.MAX_WHY:
        raise ReaperError(f"--why: at most {files.MAX_WHY} characters", EXIT_USAGE)
    return why


def _may(cfg, paths):
    uid = os.geteuid()
    why_not = evidence.may_inhibit(cfg, uid)
    if why_not:
        raise ReaperError(f"you may not hold an inhibitor: {why_not} ({cfg.path})")
    if uid == 0:
        try:
            files.ensure_dir(paths.state_dir)
        except (OSError, files.InhibitorError) as e:
            raise ReaperError(f"the inhibitors directory: {e}") from None
    try:
        own = files.count_own(paths.state_dir, uid)
    except (OSError, files.InhibitorError) as e:
        raise ReaperError(f"the inhibitors directory: {e}") from None
    if own >= files.MAX_PER_USER:
        raise ReaperError(f"you hold {own} inhibitors already, the most one user may (release one: --list)")


def _create(paths, record):
    """Write a new inhibitor; return (id, inode)."""
    for _ in range(5):
        ident = files.new_id()
        try:
            return ident, files.write(paths.state_dir, ident, record)
        except files.InhibitorError as e:
            if "exists already" not in str(e):
                raise ReaperError(f"cannot hold an inhibitor: {e}") from None
        except OSError as e:
            raise ReaperError(f"cannot hold an inhibitor: {e.filename or files.dir_path(paths.state_dir)}:"
                              f" {e.strerror}") from None  # fmt: skip
    raise ReaperError("cannot hold an inhibitor: no free id")


def _cap_warning(cfg, seconds):
    if cfg.max_inhibit is not None and seconds > cfg.max_inhibit:
        logger.warning(f"max_inhibit is {durations.format_seconds(cfg.max_inhibit)}: it holds for that long, not"
                       f" {durations.format_seconds(seconds)}")  # fmt: skip


def hold_for(paths, cfg, seconds, why):
    _may(cfg, paths)
    now = clock.now()
    _cap_warning(cfg, seconds)
    record = _record("for", why, now, until=now + seconds, boot=clock.boot_key(paths.proc))
    ident, _ = _create(paths, record)
    end = now + seconds if cfg.max_inhibit is None else now + min(seconds, cfg.max_inhibit)
    logger.info(f"inhibitor {ident} holds the machine up until {_clock(end, now)}; end it sooner with:"
                f" idle-reaper inhibit --release {ident}")  # fmt: skip
    print(ident)
    return 0


def hold_pid(paths, cfg, pid, why):
    _may(cfg, paths)
    start = evidence.runs(pid, paths.proc) if pid > 0 else None
    if start is None:
        raise ReaperError(f"--pid {pid}: no such process")
    owner = evidence.process_uid(pid, paths.proc)
    if os.geteuid() != 0 and owner != os.geteuid():
        raise ReaperError(f"--pid {pid}: not a process of yours (only root may follow another user's)")
    now = clock.now()
    record = _record("pid", why, now, pid=pid, pid_start=start, boot=clock.boot_key(paths.proc))
    ident, _ = _create(paths, record)
    cap = "" if cfg.max_inhibit is None else f", at most until {_clock(now + cfg.max_inhibit, now)} (max_inhibit)"
    logger.info(f"inhibitor {ident} holds the machine up while pid {pid} runs{cap}; a tick notices its end within"
                " a minute")  # fmt: skip
    print(ident)
    return 0


def _child(command, go, old_mask):
    """In the forked child: wait until the inhibitor is written, then become the command."""
    try:
        os.close(go[1])
        ready = os.read(go[0], 1)
        os.close(go[0])
        if ready != b"g":
            os._exit(EXIT_CANNOT_RUN)  # the parent gave up (it could not write the inhibitor)
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)  # Python ignores these; the command must not inherit that
        for sig in FORWARDED:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        try:
            os.execvp(command[0], command)  # noqa: S606 - the user's own command, as they gave it
        except OSError as e:
            os.write(2, f"idle-reaper: {escape(command[0])}: {e.strerror}\n".encode())
            os._exit(EXIT_NOT_FOUND if isinstance(e, FileNotFoundError) else EXIT_CANNOT_RUN)
    finally:
        os._exit(EXIT_CANNOT_RUN)


def _wait(child):
    """Wait for the child, passing on what signals this process gets. Return its wait status."""
    waited = (*FORWARDED, signal.SIGCHLD)
    while True:
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid == child:
            return status
        info = signal.sigwaitinfo(waited)
        if info.si_signo == signal.SIGCHLD:
            continue
        # si_code > 0: the kernel sent it (the terminal's ^C, ^\, a resize, a hangup), to the whole foreground
        # process group, which the command is in too. <= 0: a process sent it to us (kill, sigqueue, tgkill).
        if info.si_code <= 0:
            try:
                os.kill(child, info.si_signo)
            except ProcessLookupError:
                pass


def hold_command(paths, cfg, command, why):
    _may(cfg, paths)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, (*FORWARDED, signal.SIGCHLD))
    go = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:
        _child(command, go, old_mask)
    os.close(go[0])
    try:
        start = clock.process_start_ticks(child, paths.proc)
        now = clock.now()
        record = _record("command", why, now, pid=child, pid_start=start, boot=clock.boot_key(paths.proc))
        ident, ino = _create(paths, record)
    except BaseException:
        os.close(go[1])  # the child exits without running the command
        os.waitpid(child, 0)
        raise
    logger.info(f"inhibitor {ident} holds the machine up while {escape(' '.join(command), 120)} runs (pid {child})")
    os.write(go[1], b"g")
    os.close(go[1])
    status = _wait(child)
    ended = clock.now()
    try:
        files.write(paths.state_dir, ident, dict(record, ended=ended), replace_ino=ino)
    except (OSError, files.InhibitorError) as e:
        logger.warning(f"could not record the end of inhibitor {ident} ({e}); a tick notices it within a minute")
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def release(paths, cfg, ident):
    if not files.valid_id(ident):
        raise ReaperError(f"--release {escape(ident, 40)}: not an inhibitor id (12 hex digits, see --list)", EXIT_USAGE)
    boot = clock.boot_key(paths.proc)
    try:
        got = files.read_own(paths.state_dir, ident, boot)
    except files.InhibitorError as e:
        raise ReaperError(str(e)) from None
    if got is None:
        raise ReaperError(f"no inhibitor {ident} (see idle-reaper inhibit --list)")
    uid = os.geteuid()
    if got.uid != uid and uid != 0:
        names = {}
        who = evidence.user_name(got.uid, names)
        raise ReaperError(f"inhibitor {ident} is {escape(who, 32)}'s: only they or root may release it")
    try:
        if isinstance(got, files.Entry) and got.record.get("ended") is None:
            owner = None
            if got.uid != uid:
                import pwd

                try:
                    owner = (got.uid, pwd.getpwuid(got.uid).pw_gid)
                except KeyError:
                    owner = (got.uid, got.uid)
            ended = dict(got.record, ended=clock.now())
            files.write(paths.state_dir, ident, ended, replace_ino=got.ino, owner=owner)
        else:
            files.remove(paths.state_dir, [got.name])
    except (OSError, files.InhibitorError) as e:
        raise ReaperError(f"cannot release inhibitor {ident}: {e}") from None
    logger.info(f"released inhibitor {ident}")
    return 0


def _entry_json(a, now, own_uid_name):
    return {**a.as_json(lambda t: _iso(t, now)), "mine": a.user == own_uid_name}


def list_all(paths, cfg, as_json):
    now = clock.now()
    found, notes = evidence.gather(paths, cfg, now)
    lasting = sorted((a for a in found if a.end(now) is None), key=lambda a: (a.since, a.id))
    me = evidence.user_name(os.geteuid(), {})
    if as_json:
        out = {"inhibitors": [_entry_json(a, now, me) for a in lasting], "notes": notes}
        sys.stdout.write(json.dumps(out, indent=2 if sys.stdout.isatty() else None) + "\n")
        return 0
    if not lasting:
        print("No inhibitors hold.")
    for a in lasting:
        ends = f"until {_clock(a.until, now)}" + (" (max_inhibit)" if a.capped else "") if a.until else ""
        follows = f"while pid {a.pid} runs" if a.pid else ""
        what = "; ".join(x for x in (ends, follows) if x) or "until released"
        print(f"{a.id}  {escape(a.user, 32):12} since {_clock(a.since, now)}, {what}"
              + (f"  - {escape(a.why, 200)}" if a.why else ""))  # fmt: skip
    for note in notes:
        print(f"Note: {escape(note, 300)}")
    return 0


def handle(args, paths):
    cfg = config.load(paths.config, cache_dir=paths.state_dir)
    command = list(args.argv or ())
    chosen = [name for name, given in (("--for", args.for_ is not None), ("--pid", args.pid is not None),
              ("--list", args.list), ("--release", args.release is not None), ("-- COMMAND", bool(command)))
              if given]  # fmt: skip
    if len(chosen) != 1:
        raise ReaperError(
            "inhibit: give one of --for DURATION, --pid PID, -- COMMAND, --list or --release ID"
            + (f" (not {' and '.join(chosen)})" if chosen else ""),
            EXIT_USAGE,
        )
    if args.json and not args.list:
        raise ReaperError("inhibit: --json goes with --list", EXIT_USAGE)
    why = _check_why(args.why)
    if args.list:
        return list_all(paths, cfg, args.json)
    if args.release is not None:
        return release(paths, cfg, args.release)
    if args.for_ is not None:
        try:
            seconds = durations.parse(args.for_)
        except durations.DurationError as e:
            raise ReaperError(
                f"--for {escape(args.for_, 40)}: {e} (allowed: {durations.ALLOWED})", EXIT_USAGE
            ) from None
        if seconds is None:
            raise ReaperError("--for: give a duration such as 30m or 4h", EXIT_USAGE)
        return hold_for(paths, cfg, seconds, why)
    if args.pid is not None:
        return hold_pid(paths, cfg, args.pid, why)
    return hold_command(paths, cfg, command, why)
