"""The state file: one JSON document of leases (open sessions) and closed sessions, written atomically.

Writers hold an exclusive flock on the lock file; readers never lock, because every write is a temp file in
the same directory, fsynced, then renamed over the old one. The PAM hook imports this on the login path,
so it uses only posix, fcntl, _signal and the `_json`-based codec (see reaper/hook.py for why not os).

A hook that can't have the lock (an open never waits for it; a close waits up to 5 s) doesn't lose its
event: it writes it atomically to its own `pending.*.json` file, without the lock. The next writer folds pending
events into the state under the lock, and readers fold them in memory. The state lists the pending files it
already holds ("merged") until they are deleted, so no event is applied twice.

Layout (format 1):
    {"format": 1, "boot": "<boot id>/<pid 1 start>",
     "leases": [lease, ...],           # sessions opened and not yet closed
     "closed": [lease + {"closed": t, "end": "hook"|"stale"}, ...],
     "lost": t or null,                # when earlier state was found unreadable and set aside
     "merged": ["pending...json"],     # pending files already folded in, not yet deleted
     "reaper": {...}}                  # the reaper's memory between ticks
"""

import _signal  # the C half of `signal`, loaded at interpreter start; `signal` itself imports enum
import _stat
import fcntl
import posix

from reaper import defaults
from reaper.state import statejson

FORMAT = 1
# A client can put anything into PAM_RHOST, PAM_USER or SSH_CONNECTION; nothing longer than this is stored.
MAX_FIELD = 1024
# At most this many unreadable state files are kept aside; /run is memory.
KEEP_BAD = 5


class StateError(Exception):
    """The state file exists but can't be used: unreadable, corrupt, of another format, or unsafe."""


class LockTimeout(Exception):
    """Another process held the lock for longer than we may wait."""


def state_path(state_dir):
    return f"{state_dir}/{defaults.STATE_FILE}"


def lock_path(state_dir):
    return f"{state_dir}/{defaults.LOCK_FILE}"


PENDING_PREFIX = "pending."


def empty_state(boot):
    return {"format": FORMAT, "boot": boot, "leases": [], "closed": [], "lost": None, "merged": [], "reaper": {}}


def clip(value):
    """Return a string field cut to MAX_FIELD characters, or None."""
    if value is None:
        return None
    return value[:MAX_FIELD]


# --- reading --------------------------------------------------------------------------------------------


_STR = (str, type(None))
_INT = (int, type(None))  # exact types: a bool is not an int here
_NUM = (int, float, type(None))
# Every field of a record and the exact types it may hold (all may be null). Checked on every read, so
# a value of the wrong type makes the file unusable instead of breaking the code that meets it later.
_FIELDS = {
    "user": _STR, "uid": _INT, "service": _STR, "rhost": _STR, "tty": _STR, "conn": _STR, "client": _STR,
    "client_port": _INT, "server": _STR, "server_port": _INT, "key": _STR, "pid": _INT, "pid_start": _INT,
    "opened": _NUM, "boot": _STR, "source": _STR, "closed": _NUM, "end": _STR,
}  # fmt: skip


_KIND_NAME = {_STR: "text", _INT: "int", _NUM: "number"}


def _check_shape(state):
    """Check the whole document against the format, so no later code meets a value of the wrong type."""
    if not isinstance(state, dict):
        raise StateError("the top level is not a JSON object")
    if state.get("format") != FORMAT:
        raise StateError(f"format {state.get('format')!r} is not the supported format {FORMAT}")
    if not isinstance(state.get("boot"), str):
        raise StateError("'boot' is missing or not a string")
    for key in ("leases", "closed"):
        records = state.get(key)
        if not isinstance(records, list):
            raise StateError(f"'{key}' is not a list")
        checked = set()  # records share a few shapes (field names and types): check each shape once
        for i, r in enumerate(records):
            if type(r) is not dict:
                raise StateError(f"{key}[{i}] is not an object")
            shape = (tuple(r), tuple(map(type, r.values())))
            if shape not in checked:
                _check_record(r, f"{key}[{i}]")
                checked.add(shape)
            if key == "closed" and r.get("closed") is None:
                raise StateError(f"closed[{i}] has no 'closed' time")
    if type(state.get("lost")) not in _NUM:
        raise StateError("'lost' is not a number")
    merged = state.setdefault("merged", [])
    if not isinstance(merged, list) or not all(isinstance(n, str) for n in merged):
        raise StateError("'merged' is not a list of names")
    if not isinstance(state.get("reaper", {}), dict):
        raise StateError("'reaper' is not an object")
    state.setdefault("reaper", {})
    return state


def _check_record(r, where):
    if type(r) is not dict:
        raise StateError(f"{where} is not an object")
    for field, value in r.items():
        kind = _FIELDS.get(field, _STR)
        if type(value) not in kind:
            raise StateError(f"{where}.{field} is {type(value).__name__}, not {_KIND_NAME[kind]}")


def read_json(path):
    """Return the parsed JSON of a regular file. Raise StateError if it can't be opened, read or parsed."""
    try:
        fd = posix.open(path, posix.O_RDONLY | posix.O_NOFOLLOW | posix.O_CLOEXEC | posix.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise StateError(f"{path}: cannot open: {e.strerror}") from None
    try:
        st = posix.fstat(fd)
        if not _stat.S_ISREG(st.st_mode):
            raise StateError(f"{path}: not a regular file")
        chunks = []
        while True:
            chunk = posix.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError as e:
        raise StateError(f"{path}: cannot read: {e.strerror}") from None
    finally:
        posix.close(fd)
    try:
        return statejson.loads(b"".join(chunks).decode("ascii"))
    except (UnicodeDecodeError, statejson.DecodeError) as e:
        raise StateError(f"{path}: not valid JSON: {e}") from None


def read_state(state_dir):
    """Given the state dir, return the state, or None if there is no state file (normal after boot).

    Never locks. Raise StateError if the file is there but unusable.
    """
    path = state_path(state_dir)
    try:
        value = read_json(path)
    except FileNotFoundError:
        return None
    try:
        return _check_shape(value)
    except StateError as e:
        raise StateError(f"{path}: {e}") from None


# --- the directory, the lock, atomic writes -------------------------------------------------------------


def ensure_dir(state_dir):
    """Create the state dir if missing, and refuse one that others could write to or swap."""
    try:
        posix.mkdir(state_dir, defaults.DIR_MODE)
    except FileExistsError:
        pass
    st = posix.lstat(state_dir)
    if not _stat.S_ISDIR(st.st_mode):
        raise StateError(f"{state_dir}: not a directory")
    if st.st_uid != posix.geteuid() or st.st_mode & 0o022:
        raise StateError(f"{state_dir}: unsafe: must be owned by uid {posix.geteuid()} and not writable by others")
    if _stat.S_IMODE(st.st_mode) != defaults.DIR_MODE:
        posix.chmod(state_dir, defaults.DIR_MODE)


def open_lock_file(state_dir):
    """Open (creating if needed) the lock file with mode 0600 and return its fd."""
    fd = posix.open(
        lock_path(state_dir), posix.O_RDWR | posix.O_CREAT | posix.O_NOFOLLOW | posix.O_CLOEXEC, defaults.LOCK_MODE
    )
    try:
        st = posix.fstat(fd)
        if not _stat.S_ISREG(st.st_mode):
            raise StateError(f"{lock_path(state_dir)}: not a regular file")
        if _stat.S_IMODE(st.st_mode) != defaults.LOCK_MODE:
            posix.fchmod(fd, defaults.LOCK_MODE)
    except BaseException:
        posix.close(fd)
        raise
    return fd


class _Expired(Exception):
    pass


def _expire(signum, frame):
    raise _Expired


class FlockLock:
    """A plain flock on the lock file: the same lock filelock takes, without importing filelock.

    The hook uses it; the reaper takes the same lock through filelock. It blocks in flock() itself, bounded by
    a SIGALRM timer, so a released lock passes straight to the next waiter: polling with sleeps made 50 logins
    at once queue up behind idle gaps. Main thread only (signals).
    """

    def __init__(self, state_dir, timeout):
        self.state_dir = state_dir
        self.timeout = timeout
        self.fd = None

    def __enter__(self):
        fd = open_lock_file(self.state_dir)
        try:
            self._wait(fd)
        except BaseException:
            posix.close(fd)  # if the timer fired just after flock() returned, this drops the lock again
            raise
        self.fd = fd
        return self

    def _wait(self, fd):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if self.timeout <= 0:
                raise LockTimeout(f"{lock_path(self.state_dir)} is held by another process") from None
        previous = _signal.signal(_signal.SIGALRM, _expire)
        try:
            _signal.setitimer(_signal.ITIMER_REAL, self.timeout)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except _Expired:
            raise LockTimeout(f"{lock_path(self.state_dir)} is held by another process") from None
        finally:
            _signal.setitimer(_signal.ITIMER_REAL, 0)
            _signal.signal(_signal.SIGALRM, previous)

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        posix.close(self.fd)
        self.fd = None


def write_state(state_dir, state):
    """Replace the state file atomically: temp file, fsync, rename. The caller holds the lock."""
    write_json(state_path(state_dir), state)


def write_json(final, value):
    """Replace `final` with `value` as JSON atomically: a temp file beside it, fsync, rename; mode 0644."""
    replace_file(final, statejson.dumps(value).encode("ascii"), defaults.STATE_MODE)


def replace_file(final, data, mode, sync=True):
    """Replace `final` with the bytes `data` atomically: a temp file beside it (written whole, then fsynced
    unless `sync` is False), then a rename. A reader sees the old file or the new one, whole."""
    tmp = f"{final}.{posix.getpid()}.tmp"
    fd = posix.open(tmp, posix.O_WRONLY | posix.O_CREAT | posix.O_TRUNC | posix.O_NOFOLLOW | posix.O_CLOEXEC, mode)
    try:
        posix.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[posix.write(fd, view) :]
        if sync:
            posix.fsync(fd)
    except BaseException:
        posix.close(fd)
        posix.unlink(tmp)
        raise
    posix.close(fd)
    posix.rename(tmp, final)


def remove_stale_temps(state_dir, now_wall):
    """Delete temp files left by writers killed mid-write. The caller holds the lock, so no state temp file
    is in use; writers of pending files and of the config cache hold no lock, so theirs go only once a minute
    old.
    """
    prefix = defaults.STATE_FILE + "."
    for name in posix.listdir(state_dir):
        if not name.endswith(".tmp"):
            continue
        path = f"{state_dir}/{name}"
        try:
            if name.startswith(prefix) or now_wall - posix.lstat(path).st_mtime > 60:
                posix.unlink(path)
        except FileNotFoundError:
            pass


# --- pending events: written without the lock when it can't be had in time ------------------------------


def write_pending(state_dir, op, record, at):
    """Record an "open" or "close" at CLOCK_BOOTTIME `at` in a file of its own, atomically, without the lock."""
    name = f"{PENDING_PREFIX}{int(at * 1e9):020d}.{posix.getpid()}.json"
    write_json(f"{state_dir}/{name}", {"format": FORMAT, "op": op, "at": at, "record": record})
    return name


def _read_pending(path):
    event = read_json(path)
    if not isinstance(event, dict) or event.get("format") != FORMAT or event.get("op") not in ("open", "close"):
        raise StateError(f"{path}: not a pending event of format {FORMAT}")
    if type(event.get("at")) not in _NUM or event.get("at") is None:
        raise StateError(f"{path}: no time")
    _check_record(event.get("record"), f"{path}: record")
    return event


def merge_pending(state_dir, state):
    """Fold pending events into `state` (in memory), oldest first, skipping those it already holds.

    Return the names of every pending file whose event `state` now holds, for commit() to delete. Unusable
    pending files are returned too (and so deleted by a writer): nothing can be made of them.
    """
    try:
        names = sorted(n for n in posix.listdir(state_dir) if n.startswith(PENDING_PREFIX) and n.endswith(".json"))
    except FileNotFoundError:
        return []
    held = set(state.get("merged") or ())
    out = []
    closed_any = False
    for name in names:
        out.append(name)
        if name in held:
            continue
        try:
            event = _read_pending(f"{state_dir}/{name}")
        except FileNotFoundError:
            out.pop()  # a writer just folded and deleted it
            continue
        except StateError:
            continue
        record = event["record"]
        if record.get("boot") != state["boot"]:
            continue
        if event["op"] == "open":
            add_lease(state, record)
        else:
            close_lease(state, record, event["at"], "hook", fold=False)
            closed_any = True
    if closed_any:
        fold_closed(state)
    return out


def load(state_dir, boot):
    """The reader's view: this boot's state, pending events folded in. Raise StateError if unusable."""
    state = current(read_state(state_dir), boot)
    state["merged"] = merge_pending(state_dir, state)
    return state


def commit(state_dir, state):
    """Write the state (caller holds the lock), then delete the pending files it now holds."""
    write_state(state_dir, state)
    for name in state.get("merged") or ():
        try:
            posix.unlink(f"{state_dir}/{name}")
        except FileNotFoundError:
            pass


def set_aside(state_dir, why_time):
    """Rename an unusable state file out of the way (kept for a person to look at) and return its new name.

    Only the newest KEEP_BAD such files are kept. The caller holds the lock.
    """
    final = state_path(state_dir)
    bad = f"{final}.bad-{int(why_time)}"
    posix.rename(final, bad)
    prefix = defaults.STATE_FILE + ".bad-"
    kept = sorted(
        (n for n in posix.listdir(state_dir) if n.startswith(prefix)),
        key=lambda n: posix.lstat(f"{state_dir}/{n}").st_mtime,
    )
    for name in kept[:-KEEP_BAD]:
        path = f"{state_dir}/{name}"
        if _stat.S_ISDIR(posix.lstat(path).st_mode):
            continue
        posix.unlink(path)
    return bad


# --- changes writers make -------------------------------------------------------------------------------


def current(state, boot):
    """Return the state with anything from another boot dropped; a missing state becomes an empty one."""
    if state is None or state["boot"] != boot:
        return empty_state(boot)
    state["leases"] = [lease for lease in state["leases"] if lease.get("boot") == boot]
    state["closed"] = [rec for rec in state["closed"] if rec.get("boot") == boot]
    return state


def same_session(a, b):
    """True if two records name the same PAM session: the same process (pid and start time) and service.

    One sshd monitor process runs one PAM session, and nothing else about a close can be believed: the PAM
    environment at close_session is the user's to write.
    """
    return (
        a.get("pid") == b.get("pid")
        and a.get("pid_start") == b.get("pid_start")
        and a.get("service") == b.get("service")
    )


def add_lease(state, lease):
    """Add an open session. A lease the reaper recorded from the live system for the same process gives way:
    a tick that ran between pam_loginuid and this hook saw the session logged in but not yet recorded, and
    the hook's record (service, key, open time) is the one the policy must judge."""
    pid, start = lease.get("pid"), lease.get("pid_start")
    if pid is not None:
        state["leases"] = [
            r
            for r in state["leases"]
            if not (r.get("source") == "live" and (r.get("pid"), r.get("pid_start")) == (pid, start))
        ]
    state["leases"].append(lease)


def close_lease(state, probe, when, end, fold=True):
    """Move the lease matching `probe` to the closed records; return that lease, or None if none matched.

    A close with no matching open (its open hook failed, or the state was lost) is still recorded, with an
    unknown open time, because the session it ends was real. `fold=False` leaves folding to the caller, who
    closes many at once.
    """
    for i, lease in enumerate(state["leases"]):
        if same_session(lease, probe):
            record = state["leases"].pop(i)
            found = record
            break
    else:
        record = dict(probe, opened=None)
        found = None
    record["closed"] = when
    record["end"] = end
    state["closed"].append(record)
    if fold:
        fold_closed(state)
    return found


def end_leases(state, live_flags, when):
    """End, as of `when`, every lease whose flag is False (its session is gone): one pass, one fold.

    Return how many ended.
    """
    kept = []
    for lease, is_live in zip(state["leases"], live_flags, strict=True):
        if is_live:
            kept.append(lease)
        else:
            state["closed"].append(dict(lease, closed=when, end="stale"))
    ended = len(state["leases"]) - len(kept)
    if ended:
        state["leases"] = kept
        fold_closed(state)
    return ended


def _duration(record):
    if record.get("opened") is None:
        return float("inf")
    return record["closed"] - record["opened"]


def _counting_class(record):
    """Everything the policy may judge a closed session by, except its length."""
    return tuple(record.get(k) for k in ("service", "user", "uid", "client", "rhost", "key"))


def fold_closed(state):
    """Drop closed records that can never be the latest counted activity, whatever the policy.

    The policy judges a closed session by its class (service, user, client, key) and its length, against
    min_session. Within a class, a record that ended no later and lasted no longer than another counts only
    when that other one counts too, and is never later, so it can go. What is left per class is the
    Pareto front of (end, length): short in practice, and the latest counted activity is always in it.
    """
    by_class = {}
    for record in state["closed"]:
        by_class.setdefault(_counting_class(record), []).append(record)
    kept = []
    for records in by_class.values():
        records.sort(key=lambda r: (r["closed"], _duration(r)), reverse=True)
        longest = -1.0
        for record in records:  # newest first: keep each one that lasted longer than everything newer
            if _duration(record) > longest:
                kept.append(record)
                longest = _duration(record)
    kept.sort(key=lambda r: r["closed"])
    state["closed"] = kept


def cap_closed(state, counts):
    """Keep at most MAX_CLOSED closed records: the newest, and the latest one that `counts` (a predicate of
    the current policy), which is what idleness is measured from. Without a policy (`counts` None: the
    config is unusable, so nothing acts on the state), keep up to MAX_CLOSED_NO_POLICY newest instead.

    Return how many were dropped. The records are in order of their close (fold_closed sorts them).
    """
    closed = state["closed"]
    limit = defaults.MAX_CLOSED if counts is not None else defaults.MAX_CLOSED_NO_POLICY
    if len(closed) <= limit:
        return 0
    closed.sort(key=lambda r: r["closed"])
    kept = closed[-limit:]
    if counts is not None and not any(counts(r) for r in kept):
        latest = next((r for r in reversed(closed[:-limit]) if counts(r)), None)
        if latest is not None:
            kept = [latest, *closed[-(limit - 1) :]]
    state["closed"] = kept
    return len(closed) - len(kept)
