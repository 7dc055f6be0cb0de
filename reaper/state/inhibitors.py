"""The inhibitors directory: one small JSON file per inhibitor (`idle-reaper inhibit`), owned by its holder.

`<state dir>/inhibitors` is owned by root with mode 1777, like /tmp: anyone may create a file in it, the
kernel stamps each file with its creator's uid, and the sticky bit lets only that owner (or root) rename,
replace or delete it. So whose an inhibitor is comes from fstat(), never from the file's content, and no
user can forge, extend or release another's. The state file and its lock stay root's alone.

Everything in here is the user's to write, so a reader trusts nothing else: it opens each file with
O_NOFOLLOW | O_NONBLOCK (a symlink or a FIFO is refused, never followed or waited on), takes only regular
files of one link, at most MAX_FILE_BYTES, writable by their owner alone, and at most MAX_PER_USER files of
each user (MAX_TOTAL in all). What it refuses it says why, and the tick deletes it (tidy).

A file is written whole: a temp file in the same directory (`.ID.*.tmp`, which readers skip), fsync, rename.

Layout (format 1), CLOCK_BOOTTIME seconds:
    {"format": 1, "boot": "<boot key>", "how": "for" | "command" | "pid", "why": text or null,
     "since": t, "until": t or null, "pid": n or null, "pid_start": ticks or null, "ended": t or null}
"""

import os
import stat

from reaper.state import statejson

DIR_NAME = "inhibitors"
DIR_MODE = 0o1777
FILE_MODE = 0o644
FORMAT = 1
SUFFIX = ".json"
ID_BYTES = 6  # 12 hex digits
MAX_FILE_BYTES = 4096
MAX_WHY = 500  # characters (and the file must still be at most MAX_FILE_BYTES)
MAX_PER_USER = 16
MAX_TOTAL = 256
# A temp file changed this long ago (its ctime, which its owner can't set) was left by a writer killed mid-write.
STALE_TEMP = 60
_HEX = frozenset("0123456789abcdef")
_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_STR = (str, type(None))
_INT = (int, type(None))
_NUM = (int, float, type(None))
_FIELDS = {"boot": (str,), "how": _STR, "why": _STR, "since": (int, float), "until": _NUM, "pid": _INT,
           "pid_start": _INT, "ended": _NUM}  # fmt: skip


class InhibitorError(Exception):
    """The inhibitors directory can't be used, or a file in it can't be written."""


def dir_path(state_dir):
    return os.path.join(state_dir, DIR_NAME)


def file_name(ident):
    return ident + SUFFIX


def valid_id(ident):
    return isinstance(ident, str) and len(ident) == 2 * ID_BYTES and set(ident) <= _HEX


def new_id():
    return os.urandom(ID_BYTES).hex()


def _is_temp(name):
    return name.startswith(".") and name.endswith(".tmp")


def ensure_dir(state_dir):
    """Create the inhibitors directory (root: the tick, or root's inhibit), or give it back its mode."""
    path = dir_path(state_dir)
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise InhibitorError(f"{path}: not a directory")
    if st.st_uid != os.geteuid():
        raise InhibitorError(f"{path}: unsafe: owned by uid {st.st_uid}, not {os.geteuid()}")
    if stat.S_IMODE(st.st_mode) != DIR_MODE:
        os.chmod(path, DIR_MODE)  # mkdir's mode went through the umask (the unit's is 0077)


def open_dir(state_dir):
    """Open the inhibitors directory and check it is one only root (or this caller) owns, sticky if others may
    write it. Return its fd, or None if it is missing. Raise InhibitorError if it is unsafe."""
    path = dir_path(state_dir)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise InhibitorError(f"{path}: cannot open: {e.strerror}") from None
    st = os.fstat(fd)
    if st.st_uid not in (0, os.geteuid()) or (st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX):
        os.close(fd)
        raise InhibitorError(
            f"{path}: unsafe: owned by uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):04o}"
            " (it must be root's, and sticky if others may write it)"
        )
    return fd


class Entry:
    """A file read from the directory: its name and id, inode, owner (from fstat) and its checked record."""

    __slots__ = ("name", "id", "ino", "uid", "record")

    def __init__(self, name, ino, uid, record):
        self.name, self.id, self.ino, self.uid, self.record = name, name[: -len(SUFFIX)], ino, uid, record


class Refusal:
    """A file that is not taken as an inhibitor, and why. `delete`: the tick may remove it."""

    __slots__ = ("name", "uid", "why", "delete")

    def __init__(self, name, uid, why, delete=True):
        self.name, self.uid, self.why, self.delete = name, uid, why, delete


def check_record(value, boot):
    """Given a file's parsed JSON, return None if it is a record of this boot, else what is wrong with it."""
    if type(value) is not dict or value.get("format") != FORMAT:
        return f"not an inhibitor of format {FORMAT}"
    for field, kinds in _FIELDS.items():
        if type(value.get(field)) not in kinds:
            return f"{field} is missing or of the wrong type"
    if value["boot"] != boot:
        return "from another boot"
    if value["why"] is not None and len(value["why"]) > MAX_WHY:
        return f"why is longer than {MAX_WHY} characters"
    if (value["pid"] is None) != (value["pid_start"] is None) or (value["pid"] is not None and value["pid"] <= 0):
        return "pid and pid_start must be given together"
    return None


def _read_one(dir_fd, name, lst, boot):
    """Open, check and parse one file whose lstat() is `lst`. Return an Entry or a Refusal."""
    try:
        fd = os.open(name, _OPEN, dir_fd=dir_fd)
    except FileNotFoundError:
        return None  # deleted meanwhile
    except OSError as e:
        return Refusal(name, lst.st_uid, f"cannot open: {e.strerror}")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_ino != lst.st_ino:
            return Refusal(name, st.st_uid, "not a regular file")
        if st.st_nlink != 1:
            return Refusal(name, st.st_uid, f"{st.st_nlink} hard links (an inhibitor has one)")
        if st.st_mode & 0o022:
            return Refusal(name, st.st_uid, "others may write it")
        if st.st_size > MAX_FILE_BYTES:
            return Refusal(name, st.st_uid, f"{st.st_size} bytes is too large (at most {MAX_FILE_BYTES})")
        data = os.read(fd, MAX_FILE_BYTES + 1)
    except OSError as e:
        return Refusal(name, lst.st_uid, f"cannot read: {e.strerror}")
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        return Refusal(name, st.st_uid, f"larger than {MAX_FILE_BYTES} bytes")
    try:
        value = statejson.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, statejson.DecodeError) as e:
        return Refusal(name, st.st_uid, f"not valid JSON: {e}")
    problem = check_record(value, boot)
    if problem:
        return Refusal(name, st.st_uid, problem)
    return Entry(name, st.st_ino, st.st_uid, value)


def scan(state_dir, boot, now_wall=None):
    """Read every inhibitor file. Return (entries, refusals, stale temp names); a missing directory has none.

    Files are taken in name order, at most MAX_PER_USER per owner and MAX_TOTAL in all; only those are
    opened, so a flood costs one lstat() a file. Raise InhibitorError if the directory is unsafe.
    """
    dir_fd = open_dir(state_dir)
    if dir_fd is None:
        return [], [], []
    entries, refusals, stale = [], [], []
    try:
        per_user = {}
        for name in sorted(os.listdir(dir_fd)):
            try:
                lst = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if _is_temp(name):
                if now_wall is not None and now_wall - lst.st_ctime > STALE_TEMP and not stat.S_ISDIR(lst.st_mode):
                    stale.append(name)
                continue
            if stat.S_ISLNK(lst.st_mode):
                refusals.append(Refusal(name, lst.st_uid, "a symbolic link"))
                continue
            if stat.S_ISDIR(lst.st_mode):
                refusals.append(Refusal(name, lst.st_uid, "a directory", delete=False))
                continue
            if not stat.S_ISREG(lst.st_mode):
                refusals.append(Refusal(name, lst.st_uid, "not a regular file (a FIFO, socket or device)"))
                continue
            if not name.endswith(SUFFIX) or not valid_id(name[: -len(SUFFIX)]):
                refusals.append(Refusal(name, lst.st_uid, "not named ID.json"))
                continue
            count = per_user.get(lst.st_uid, 0)
            if count >= MAX_PER_USER:
                refusals.append(Refusal(name, lst.st_uid, f"more than {MAX_PER_USER} inhibitors of one user"))
                continue
            if sum(per_user.values()) >= MAX_TOTAL:
                refusals.append(Refusal(name, lst.st_uid, f"more than {MAX_TOTAL} inhibitors", delete=False))
                continue
            per_user[lst.st_uid] = count + 1  # whether it reads well or not: a flood costs 16 opens a user
            got = _read_one(dir_fd, name, lst, boot)
            if isinstance(got, Entry):
                entries.append(got)
            elif got is not None:
                refusals.append(got)
    finally:
        os.close(dir_fd)
    return entries, refusals, stale


def count_own(state_dir, uid):
    """Return how many files in the directory `uid` owns (what the per-user limit counts)."""
    dir_fd = open_dir(state_dir)
    if dir_fd is None:
        return 0
    try:
        n = 0
        for name in os.listdir(dir_fd):
            if _is_temp(name):
                continue
            try:
                n += os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_uid == uid
            except FileNotFoundError:
                pass
        return n
    finally:
        os.close(dir_fd)


def write(state_dir, ident, record, replace_ino=None, owner=None):
    """Write inhibitor `ident` atomically: a temp file beside it, fsync, rename. Return the new file's inode.

    A new one (replace_ino None) must not exist yet. A rewrite (the end of a command, a release) replaces the
    file only if it is still the inode `replace_ino` (or any, if True) and returns None if it is gone: it was
    released meanwhile and stays so. `owner` (uid, gid): root writing for another user keeps the file theirs.
    """
    dir_fd = open_dir(state_dir)
    if dir_fd is None:
        raise InhibitorError(f"{dir_path(state_dir)}: missing (made at boot by systemd-tmpfiles and by each tick)")
    final = file_name(ident)
    tmp = f".{ident}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    data = statejson.dumps(record).encode("ascii")
    if len(data) > MAX_FILE_BYTES:
        os.close(dir_fd)
        raise InhibitorError(f"inhibitor {ident}: {len(data)} bytes, more than {MAX_FILE_BYTES} (a shorter --why)")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE, dir_fd=dir_fd)
        try:
            os.fchmod(fd, FILE_MODE)
            if owner is not None:
                os.fchown(fd, *owner)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            ino = os.fstat(fd).st_ino
        finally:
            os.close(fd)
        try:
            current = os.stat(final, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            current = None
        if replace_ino is None and current is not None:
            raise InhibitorError(f"inhibitor {ident} exists already")
        if replace_ino is not None and (current is None or (replace_ino is not True and current.st_ino != replace_ino)):
            os.unlink(tmp, dir_fd=dir_fd)
            return None
        os.rename(tmp, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return ino
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise
    finally:
        os.close(dir_fd)


def read_own(state_dir, ident, boot):
    """Return the Entry or Refusal of the file of inhibitor `ident`, or None if there is none."""
    dir_fd = open_dir(state_dir)
    if dir_fd is None:
        return None
    try:
        name = file_name(ident)
        try:
            lst = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(lst.st_mode):
            return Refusal(name, lst.st_uid, "not a regular file")
        return _read_one(dir_fd, name, lst, boot)
    finally:
        os.close(dir_fd)


def remove(state_dir, names):
    """Delete these names from the directory (never following a link). Return how many went."""
    dir_fd = open_dir(state_dir)
    if dir_fd is None:
        return 0
    gone = 0
    try:
        for name in names:
            try:
                os.unlink(name, dir_fd=dir_fd)
                gone += 1
            except (FileNotFoundError, IsADirectoryError, PermissionError):
                pass
    finally:
        os.close(dir_fd)
    return gone
