"""Durations in dstack's grammar: off, false, whole seconds, "90s", "30m", "2h", "1d", "1w", "1h30m", "2 hours"."""

ALLOWED = 'off, false, a whole number of seconds, or a duration such as 90s, 30m, 2h, 1d, 1w, 1h30m or "2 hours"'
_SUBSECOND = {"ns", "us", "ms", "nanosecond", "microsecond", "millisecond"}


class DurationError(ValueError):
    """The value is not a duration we accept; the message says why."""


def parse(value):
    """Given a YAML value, return whole seconds (> 0), or None for off. Raise DurationError if invalid.

    humanfriendly reads each "<number><unit>" part; it has no compound form, so "1h30m" is split here.
    """
    if value is False:
        return None
    if value is True:
        raise DurationError("true is not a duration")
    if isinstance(value, int):
        return _positive(value, str(value))
    if not isinstance(value, str):
        raise DurationError(f"{type(value).__name__} is not a duration")
    text = value.strip()
    if text.lower() in ("off", "false"):
        return None
    import humanfriendly  # only when a config is parsed, which a tick does only when the file changed
    from humanfriendly.text import tokenize

    if text.startswith("-"):
        raise DurationError(f"{value!r} is negative; use off to disable")
    tokens = tokenize(text)
    if not tokens:
        raise DurationError("empty duration")
    if len(tokens) == 1 and isinstance(tokens[0], (int, float)):
        return _positive(tokens[0], value)
    pairs = list(zip(tokens[::2], tokens[1::2], strict=False))
    if len(tokens) % 2 or not all(isinstance(n, (int, float)) and isinstance(u, str) for n, u in pairs):
        raise DurationError(f"{value!r} is not a duration")
    total = 0.0
    for number, unit in pairs:
        if unit.lower().rstrip("s") in _SUBSECOND or unit.lower() in _SUBSECOND:
            raise DurationError(f"{value!r}: units below a second are not allowed")
        try:
            total += humanfriendly.parse_timespan(f"{number} {unit}")
        except humanfriendly.InvalidTimespan:
            raise DurationError(f"{value!r}: unknown unit {unit!r}") from None
    return _positive(total, value)


def _positive(seconds, shown):
    if seconds != int(seconds):
        raise DurationError(f"{shown!r} is not a whole number of seconds")
    if seconds == 0:
        raise DurationError(f"{shown!r} is zero; use off to disable")
    if seconds < 0:
        raise DurationError(f"{shown!r} is negative; use off to disable")
    return int(seconds)


def format_seconds(seconds):
    """Given seconds, return a short form such as "2h", "1h30m" or "45s"; None gives "off"."""
    if seconds is None:
        return "off"
    seconds = int(seconds)  # floor: "9s" for 9.6 s, never a rounded-up "10s" that reads as long enough
    if seconds <= 0:
        return "0s"
    parts = []
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
