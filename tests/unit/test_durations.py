import pytest

from reaper.config import durations


@pytest.mark.parametrize(
    "value, seconds",
    [
        (False, None),
        ("off", None),
        ("OFF", None),
        ("false", None),
        (90, 90),
        (1, 1),
        ("90", 90),
        ("90s", 90),
        ("30m", 1800),
        ("2h", 7200),
        ("1d", 86400),
        ("1w", 604800),
        ("1h30m", 5400),
        ("1h 30m", 5400),
        ("2 hours", 7200),
        ("10 minutes", 600),
        ("1.5h", 5400),
        (" 2h ", 7200),
    ],
)
def test_accepts_dstack_and_human_forms(value, seconds):
    assert durations.parse(value) == seconds


@pytest.mark.parametrize(
    "value, fragment",
    [
        (0, "zero; use off"),
        ("0", "zero; use off"),
        ("0s", "zero; use off"),
        (-5, "negative"),
        ("-5m", "negative"),
        (True, "true is not a duration"),
        ("abc", "not a duration"),
        ("2 parsecs", "unknown unit"),
        ("1.5s", "whole number"),
        ("500ms", "below a second"),
        ("", "empty"),
        (1.5, "float is not a duration"),
        ([], "list is not a duration"),
        ("h", "not a duration"),
    ],
)
def test_rejects_with_a_reason(value, fragment):
    with pytest.raises(durations.DurationError, match=fragment):
        durations.parse(value)


@pytest.mark.parametrize(
    "seconds, text",
    [(None, "off"), (0, "0s"), (45, "45s"), (60, "1m"), (5400, "1h30m"), (90061, "1d1h1m1s"), (9.9, "9s")],
)
def test_format_seconds_is_short_and_floors(seconds, text):
    assert durations.format_seconds(seconds) == text
