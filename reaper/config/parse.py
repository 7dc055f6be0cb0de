"""Parse the config's YAML into a Config, with errors that point at file, line and key.

Only a config that changed since the last tick is parsed: yaml and humanfriendly cost about 25 ms to import,
and config.load() serves an unchanged file from its cache. Duplicate keys, which PyYAML accepts silently, are
errors here, so the YAML is read as nodes (with their line numbers), not as plain values.
"""

import ipaddress
import os
import re

import yaml

from reaper.config import durations
from reaper.config.schema import ALLOWED, IGNORE_KEYS, POWEROFF, TOP_KEYS, Config
from reaper.errors import ConfigError

_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")


class _Errors:
    """Collects one line per problem: "FILE:LINE: KEY: what is wrong; allowed: ..."."""

    def __init__(self, path):
        self.path = path
        self.lines = []

    def add(self, node, key, message, allowed=None):
        where = f"{self.path}:{node.start_mark.line + 1}" if node is not None else self.path
        tail = f" (allowed: {allowed})" if allowed else ""
        self.lines.append(f"{where}: {key}: {message}{tail}" if key else f"{where}: {message}{tail}")


def parse(path, text):
    """Given the config's path and text, return a Config. Raise ConfigError with one line per problem."""
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
        if key not in TOP_KEYS:
            errors.add(key_node, key, "unknown key", ", ".join(TOP_KEYS))
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
            errors.add(top["services"][1], "services", "must name at least one PAM service", ALLOWED["services"])
        elif services:
            values["services"] = tuple(services)
    if "ignore" in top:
        _ignore(top["ignore"][1], errors, values)
    if "action" in top:
        action = _action(top["action"][1], errors)
        if action:
            values["action"] = action
    if "metrics" in top:
        values["metrics"] = _metrics(top["metrics"][1], errors)
    if "max_inhibit" in top:
        values["max_inhibit"] = _duration(top["max_inhibit"][1], "max_inhibit", errors)
    if "may_inhibit" in top:
        who = _may_inhibit(top["may_inhibit"][1], errors)
        if who is not None:
            values["may_inhibit"] = who
    if "max_duration" in top:
        values["max_duration"] = _duration(top["max_duration"][1], "max_duration", errors)
    if "max_duration_grace" in top:
        values["max_duration_grace"] = _duration(top["max_duration_grace"][1], "max_duration_grace", errors)
    if "notice" in top:
        values["notice"] = _switch(top["notice"][1], "notice", errors)
    if "pre_action_timeout" in top:
        node, before = top["pre_action_timeout"][1], len(errors.lines)
        timeout = _duration(node, "pre_action_timeout", errors)
        if timeout is not None:
            values["pre_action_timeout"] = timeout
        elif len(errors.lines) == before:
            errors.add(node, "pre_action_timeout", "off is not allowed: a hook that hangs must be cut off",
                       ALLOWED["pre_action_timeout"])  # fmt: skip
    return Config(path=path, inactivity_duration=inactivity, **values)


def _switch(node, key, errors):
    """on/off (YAML 1.1 reads both, and true/false, as booleans). Return the bool, or True if invalid."""
    value = _scalar(node) if isinstance(node, yaml.ScalarNode) else None
    if type(value) is not bool:
        errors.add(node, key, f"{_kind(node)} is not on or off", ALLOWED[key])
        return True
    return value


def _duration(node, key, errors):
    if not isinstance(node, yaml.ScalarNode):
        errors.add(node, key, f"a {node.id} is not a duration", ALLOWED[key])
        return None
    value = _scalar(node)
    if node.tag == "tag:yaml.org,2002:float":
        value = str(node.value)
    try:
        return durations.parse(value)
    except durations.DurationError as e:
        errors.add(node, key, str(e), ALLOWED[key])
        return None


def _string_items(node, key, errors):
    """Given a SequenceNode of strings, return [(item node, text)], or None if it is not a list."""
    if not isinstance(node, yaml.SequenceNode):
        errors.add(node, key, f"must be a list, not a {_kind(node)}", ALLOWED[key])
        return None
    out = []
    for item in node.value:
        if not isinstance(item, yaml.ScalarNode) or item.tag != "tag:yaml.org,2002:str" or not item.value:
            errors.add(item, key, f"each entry must be a non-empty string, not {_kind(item)}", ALLOWED[key])
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
        if key not in IGNORE_KEYS:
            errors.add(key_node, f"ignore.{key}", "unknown key", ", ".join(IGNORE_KEYS))
    if "users" in sub:
        users = _string_list(sub["users"][1], "ignore.users", errors)
        values["ignore_users"] = frozenset(users or ())
    if "networks" in sub:
        nets = []
        for item, text in _string_items(sub["networks"][1], "ignore.networks", errors) or ():
            try:
                nets.append(ipaddress.ip_network(text, strict=True))
            except ValueError as e:
                errors.add(item, "ignore.networks", f"{text!r}: {e}", ALLOWED["ignore.networks"])
        values["ignore_networks"] = tuple(nets)
    if "keys" in sub:
        keys = []
        for item, text in _string_items(sub["keys"][1], "ignore.keys", errors) or ():
            if _FINGERPRINT.fullmatch(text):
                keys.append(text)
            else:
                errors.add(item, "ignore.keys", f"{text!r} is not a SHA256 key fingerprint", ALLOWED["ignore.keys"])
        values["ignore_keys"] = frozenset(keys)


def _may_inhibit(node, errors):
    """everyone, root, or a non-empty list of group names."""
    allowed = ALLOWED["may_inhibit"]
    if isinstance(node, yaml.ScalarNode):
        if node.tag == "tag:yaml.org,2002:str" and node.value in ("everyone", "root"):
            return node.value
        errors.add(node, "may_inhibit", f"{node.value!r} is not accepted", allowed)
        return None
    groups = _string_list(node, "may_inhibit", errors)
    if groups is None:
        return None
    if not groups:
        errors.add(node, "may_inhibit", "the list of groups is empty (use root for root only)", allowed)
        return None
    return tuple(groups)


def _action(node, errors):
    allowed = ALLOWED["action"]
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


def _metrics(node, errors):
    allowed = ALLOWED["metrics"]
    if not isinstance(node, yaml.ScalarNode):
        errors.add(node, "metrics", f"a {node.id} is not a path", allowed)
        return None
    value = _scalar(node)
    if value is False or value is None or (isinstance(value, str) and value.lower() == "off"):
        return None
    if not isinstance(value, str) or not os.path.isabs(value) or not value.endswith(".prom"):
        errors.add(node, "metrics", f"{node.value!r} is not an absolute path ending in .prom", allowed)
        return None
    if os.path.basename(value) == ".prom" or "\n" in value:
        errors.add(node, "metrics", f"{node.value!r} names no file", allowed)
        return None
    return os.path.normpath(value)
