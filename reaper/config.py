"""The configuration: /etc/idle-reaper/config.yaml, strictly checked, with errors that point at file and line.

SCHEMA below is the single source for the checks, the defaults, the sample config the package ships and the
reference in README.md and the man page (tests keep those in step with it).
"""

import ipaddress
import os
import re
import stat
from typing import NamedTuple

import yaml

from reaper import durations
from reaper.errors import ConfigError

MAX_CONFIG_BYTES = 64 * 1024
POWEROFF = ("systemctl", "poweroff")
_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")


class Config(NamedTuple):  # NamedTuples here and elsewhere: `dataclasses` imports `inspect`, 7 ms a tick
    path: str
    inactivity_duration: int | None  # seconds, None when off
    min_session: int = 10
    services: tuple = ("sshd",)
    ignore_users: frozenset = frozenset()
    ignore_networks: tuple = ()
    ignore_keys: frozenset = frozenset()
    action: tuple = POWEROFF
    dstack: bool = False  # read from a dstack dev-environment file

    @property
    def action_name(self):
        return "poweroff" if self.action == POWEROFF else None


class Option(NamedTuple):
    key: str  # dotted path, e.g. ignore.users
    sample: str  # YAML for the sample config
    help: str
    allowed: str


SCHEMA = (
    Option(
        "inactivity_duration",
        "off",
        "Power off once no counted SSH session has been open for this long. Required.",
        durations.ALLOWED,
    ),
    Option(
        "min_session",
        "10s",
        "Sessions shorter than this are not activity (the control plane's quick probes, say).",
        "off (every session counts) or a duration as for inactivity_duration",
    ),
    Option("services", "[sshd]", "PAM services whose sessions count.", "a non-empty list of PAM service names"),
    Option("ignore.users", "[]", "Accounts whose sessions never count.", "a list of user names"),
    Option(
        "ignore.networks",
        "[]",
        "Client networks whose sessions never count.",
        "a list of IPv4 or IPv6 networks in CIDR form, e.g. 10.0.0.5/32 or fd00::/8",
    ),
    Option(
        "ignore.keys",
        "[]",
        "SSH public keys whose sessions never count (needs ExposeAuthInfo yes in sshd_config).",
        "a list of key fingerprints as ssh-keygen -lf prints them: SHA256:<43 characters>",
    ),
    Option(
        "action",
        "poweroff",
        "What to run when the machine has been idle for inactivity_duration.",
        'poweroff, or a command as a list run without a shell, e.g. ["/usr/local/bin/stop-me", "--now"]',
    ),
)
_ALLOWED = {o.key: o.allowed for o in SCHEMA}
_TOP_KEYS = ("inactivity_duration", "min_session", "services", "ignore", "action")
_IGNORE_KEYS = ("users", "networks", "keys")


class _Errors:
    """Collects one line per problem: "FILE:LINE: KEY: what is wrong; allowed: ..."."""

    def __init__(self, path):
        self.path = path
        self.lines = []

    def add(self, node, key, message, allowed=None):
        where = f"{self.path}:{node.start_mark.line + 1}" if node is not None else self.path
        tail = f" (allowed: {allowed})" if allowed else ""
        self.lines.append(f"{where}: {key}: {message}{tail}" if key else f"{where}: {message}{tail}")


def default_path(cli_value, environ):
    from reaper import defaults

    return cli_value or environ.get(defaults.CONFIG_ENV) or defaults.CONFIG_PATH


def load(path, check_owner=True):
    """Given a config path, return a Config. Raise ConfigError with one line per problem."""
    text = _read(path, check_owner)
    errors = _Errors(path)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        hint = "; YAML does not allow tabs for indentation, use spaces" if "\\t" in problem or "tab" in problem else ""
        raise ConfigError(f"{path}{line}: not valid YAML: {problem}{hint}") from None
    if root is None:
        raise ConfigError(
            f"{path}: inactivity_duration: required, and the file is empty (allowed: {durations.ALLOWED})"
        )
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{path}:{root.start_mark.line + 1}: the top level must be a mapping of keys")
    top = _mapping(root, "", errors)
    if "type" in top:
        config = _from_dstack(path, top, errors)
    else:
        config = _from_own(path, top, errors)
    if errors.lines:
        raise ConfigError("\n".join(errors.lines))
    return config


def _read(path, check_owner):
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
        data = os.read(fd, MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None


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


def _mapping(node, prefix, errors):
    """Given a MappingNode, return {key: value node}; report duplicate and non-string keys."""
    seen = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != "tag:yaml.org,2002:str":
            errors.add(key_node, prefix.rstrip("."), f"keys must be plain names, not {key_node.tag.split(':')[-1]}")
            continue
        key = key_node.value
        if key in seen:
            errors.add(key_node, prefix + key, f"duplicate key (first at line {seen[key][0].start_mark.line + 1})")
            continue
        seen[key] = (key_node, value_node)
    return seen


def _scalar(node):
    """Given a ScalarNode, return its value as YAML 1.1 (safe) reads it."""
    return yaml.SafeLoader("").construct_object(node)


def _from_dstack(path, top, errors):
    _, type_node = top["type"]
    if not isinstance(type_node, yaml.ScalarNode) or type_node.value != "dev-environment":
        shown = type_node.value if isinstance(type_node, yaml.ScalarNode) else "a " + type_node.id
        errors.add(
            type_node, "type", f"{shown!r} is not accepted", "dev-environment (a dstack dev-environment configuration)"
        )
        return None
    seconds = None
    if "inactivity_duration" in top:
        seconds = _duration(top["inactivity_duration"][1], "inactivity_duration", errors)
    return Config(path=path, inactivity_duration=seconds, dstack=True)


def _from_own(path, top, errors):
    for key, (key_node, _) in top.items():
        if key not in _TOP_KEYS:
            errors.add(key_node, key, "unknown key", ", ".join(_TOP_KEYS))
    if "inactivity_duration" not in top:
        errors.add(None, "inactivity_duration", "required", durations.ALLOWED)
        inactivity = None
    else:
        inactivity = _duration(top["inactivity_duration"][1], "inactivity_duration", errors)
    values = {}
    if "min_session" in top:
        values["min_session"] = _duration(top["min_session"][1], "min_session", errors) or 0
    if "services" in top:
        services = _string_list(top["services"][1], "services", errors)
        if services is not None and not top["services"][1].value:
            errors.add(top["services"][1], "services", "must name at least one PAM service", _ALLOWED["services"])
        elif services:
            values["services"] = tuple(services)
    if "ignore" in top:
        _ignore(top["ignore"][1], errors, values)
    if "action" in top:
        action = _action(top["action"][1], errors)
        if action:
            values["action"] = action
    return Config(path=path, inactivity_duration=inactivity, **values)


def _duration(node, key, errors):
    if not isinstance(node, yaml.ScalarNode):
        errors.add(node, key, f"a {node.id} is not a duration", _ALLOWED[key])
        return None
    value = _scalar(node)
    if node.tag == "tag:yaml.org,2002:float":
        value = str(node.value)
    try:
        return durations.parse(value)
    except durations.DurationError as e:
        errors.add(node, key, str(e), _ALLOWED[key])
        return None


def _string_items(node, key, errors):
    """Given a SequenceNode of strings, return [(item node, text)], or None if it is not a list."""
    if not isinstance(node, yaml.SequenceNode):
        errors.add(node, key, f"must be a list, not a {_kind(node)}", _ALLOWED[key])
        return None
    out = []
    for item in node.value:
        if not isinstance(item, yaml.ScalarNode) or item.tag != "tag:yaml.org,2002:str" or not item.value:
            errors.add(item, key, f"each entry must be a non-empty string, not {_kind(item)}", _ALLOWED[key])
            continue
        out.append((item, item.value))
    return out


def _string_list(node, key, errors):
    items = _string_items(node, key, errors)
    return None if items is None else [text for _, text in items]


def _kind(node):
    if isinstance(node, yaml.ScalarNode):
        return f"{node.tag.split(':')[-1]} {node.value!r}"
    return node.id


def _ignore(node, errors, values):
    if not isinstance(node, yaml.MappingNode):
        errors.add(node, "ignore", f"must be a mapping, not a {_kind(node)}", "users, networks, keys")
        return
    sub = _mapping(node, "ignore.", errors)
    for key, (key_node, _) in sub.items():
        if key not in _IGNORE_KEYS:
            errors.add(key_node, f"ignore.{key}", "unknown key", ", ".join(_IGNORE_KEYS))
    if "users" in sub:
        users = _string_list(sub["users"][1], "ignore.users", errors)
        values["ignore_users"] = frozenset(users or ())
    if "networks" in sub:
        nets = []
        for item, text in _string_items(sub["networks"][1], "ignore.networks", errors) or ():
            try:
                nets.append(ipaddress.ip_network(text, strict=True))
            except ValueError as e:
                errors.add(item, "ignore.networks", f"{text!r}: {e}", _ALLOWED["ignore.networks"])
        values["ignore_networks"] = tuple(nets)
    if "keys" in sub:
        keys = []
        for item, text in _string_items(sub["keys"][1], "ignore.keys", errors) or ():
            if _FINGERPRINT.fullmatch(text):
                keys.append(text)
            else:
                errors.add(item, "ignore.keys", f"{text!r} is not a SHA256 key fingerprint", _ALLOWED["ignore.keys"])
        values["ignore_keys"] = frozenset(keys)


def _action(node, errors):
    allowed = _ALLOWED["action"]
    if isinstance(node, yaml.ScalarNode):
        if node.tag == "tag:yaml.org,2002:str" and node.value == "poweroff":
            return POWEROFF
        errors.add(node, "action", f"{node.value!r} is not an action", allowed)
        return None
    argv = _string_list(node, "action", errors)
    if argv is None:
        return None
    if not argv:
        errors.add(node, "action", "the command list is empty", allowed)
        return None
    if not os.path.isabs(argv[0]):
        errors.add(node, "action", f"{argv[0]!r}: the program must be an absolute path", allowed)
        return None
    return tuple(argv)


def reference_markdown():
    """Return the config reference as a Markdown table, for README.md (a test keeps the two in step)."""
    rows = ["| key | default | meaning | allowed |", "|---|---|---|---|"]
    for o in SCHEMA:
        default = "(required)" if o.key == "inactivity_duration" else f"`{o.sample}`"
        rows.append(f"| `{o.key}` | {default} | {o.help} | {o.allowed} |")
    return "\n".join(rows)
