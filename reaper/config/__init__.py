"""Loading the configuration: /etc/idle-reaper/config.yaml, checked to be safe, parsed by config.parse.

The reaper reads the config afresh on every tick, so an edit applies without a restart. Parsing it means
importing yaml and humanfriendly, about 25 ms, most of a quiet tick; so a tick keeps what it parsed in the
state dir, keyed by the file's identity (device, inode, size, mtime and ctime: any write changes ctime), and
the next tick uses that while the file is unchanged.
"""

import ipaddress
import os
import stat

from reaper import __version__
from reaper.config.schema import Config
from reaper.errors import ConfigError
from reaper.state import leases

MAX_CONFIG_BYTES = 64 * 1024


def default_path(cli_value, environ):
    from reaper import defaults

    return cli_value or environ.get(defaults.CONFIG_ENV) or defaults.CONFIG_PATH


CACHE_FILE = "config.cache.json"


def load(path, cache_dir=None, keep=False, check_owner=True):
    """Given a config path, return a Config. Raise ConfigError with one line per problem.

    With `cache_dir`, use the parse a tick kept there if the file is unchanged; with `keep` too (the reaper,
    as root), keep this parse there for the next tick.
    """
    fd, st = _open(path, check_owner)
    try:
        key = _cache_key(path, st)
        cached = _cached(cache_dir, key, path) if cache_dir else None
        if cached is not None:
            return cached
        text = _read(path, fd)
    finally:
        os.close(fd)
    from reaper.config import parse

    config = parse.parse(path, text)
    if cache_dir and keep and os.geteuid() == 0:
        _keep(cache_dir, key, config)
    return config


def _open(path, check_owner):
    """Open the config and check it is a regular file of a sane size that only root can change."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (create it with at least 'inactivity_duration: off')") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot open: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path}: not a regular file")
        if st.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {st.st_size} bytes is too large for a config file (at most {MAX_CONFIG_BYTES})")
        if check_owner:
            _check_safe(path, st)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _read(path, fd):
    try:
        data = os.read(fd, MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None


def _cache_key(path, st):
    return [os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, __version__]


def _cached(cache_dir, key, path):
    """Return the Config kept for exactly this file, or None. Only a root-owned, unshared cache is trusted."""
    cache = os.path.join(cache_dir, CACHE_FILE)
    try:
        st = os.lstat(cache)
        if not stat.S_ISREG(st.st_mode) or st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
            return None
        kept = leases.read_json(cache)
        if not isinstance(kept, dict) or kept.get("key") != key:
            return None
        c = kept["config"]
        config = Config(
            path=path,
            inactivity_duration=c["inactivity_duration"],
            min_session=c["min_session"],
            services=tuple(c["services"]),
            ignore_users=frozenset(c["ignore_users"]),
            ignore_networks=tuple(ipaddress.ip_network(n) for n in c["ignore_networks"]),
            ignore_keys=frozenset(c["ignore_keys"]),
            action=tuple(c["action"]),
            dstack=c["dstack"],
            metrics=c.get("metrics"),
            max_inhibit=c["max_inhibit"],
            may_inhibit=c["may_inhibit"] if isinstance(c["may_inhibit"], str) else tuple(c["may_inhibit"]),
            max_duration=c["max_duration"],
            max_duration_grace=c["max_duration_grace"],
            notice=c["notice"],
            pre_action_timeout=c["pre_action_timeout"],
        )
    except (OSError, leases.StateError, KeyError, TypeError, ValueError):
        return None
    optional = (config.inactivity_duration, config.max_duration, config.max_duration_grace)
    ints = (config.min_session, config.pre_action_timeout, *(n for n in optional if n is not None))
    texts = (*config.services, *config.ignore_users, *config.ignore_keys, *config.action)
    if not all(type(n) is int for n in ints) or not all(type(t) is str for t in texts):
        return None
    if type(config.dstack) is not bool or type(config.notice) is not bool:
        return None
    if type(config.metrics) not in (str, type(None)):
        return None
    if config.max_inhibit is not None and type(config.max_inhibit) is not int:
        return None
    who = config.may_inhibit
    if not (who in ("everyone", "root") or (type(who) is tuple and who and all(type(g) is str for g in who))):
        return None
    return config


def _keep(cache_dir, key, config):
    """Keep a parsed config for the next tick. A failure only costs the next tick a parse."""
    kept = {
        "key": key,
        "config": {
            "inactivity_duration": config.inactivity_duration,
            "min_session": config.min_session,
            "services": list(config.services),
            "ignore_users": sorted(config.ignore_users),
            "ignore_networks": [str(n) for n in config.ignore_networks],
            "ignore_keys": sorted(config.ignore_keys),
            "action": list(config.action),
            "dstack": config.dstack,
            "metrics": config.metrics,
            "max_inhibit": config.max_inhibit,
            "may_inhibit": config.may_inhibit if isinstance(config.may_inhibit, str) else list(config.may_inhibit),
            "max_duration": config.max_duration,
            "max_duration_grace": config.max_duration_grace,
            "notice": config.notice,
            "pre_action_timeout": config.pre_action_timeout,
        },
    }
    try:
        leases.write_json(os.path.join(cache_dir, CACHE_FILE), kept)
    except OSError:
        pass


def _check_safe(path, st):
    """Refuse a config that someone other than root (or the caller) could change, like sshd's StrictModes.

    Whoever can write it chooses what the reaper runs as root. Each directory up to / must be owned by root
    or the caller and not writable by others, unless it is sticky (/tmp), where others can't swap entries.
    """
    trusted = {0, os.geteuid()}
    if st.st_uid not in trusted or st.st_mode & 0o022:
        raise ConfigError(
            f"{path}: unsafe: owned by uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):04o};"
            " it must be owned by root and writable by nobody else"
        )
    directory = os.path.dirname(os.path.abspath(path))
    while True:
        dst = os.stat(directory)
        if dst.st_uid not in trusted or (dst.st_mode & 0o022 and not dst.st_mode & stat.S_ISVTX):
            raise ConfigError(
                f"{path}: unsafe: directory {directory} is owned by uid {dst.st_uid} with mode"
                f" {stat.S_IMODE(dst.st_mode):04o}; it must be owned by root and writable by nobody else"
            )
        parent = os.path.dirname(directory)
        if parent == directory:
            return
        directory = parent
