"""Medians, percentiles and how the table shows them."""

import math


def percentile(values, p):
    """Given numbers and p in [0, 100], return the p-th percentile (linear interpolation between ranks)."""
    data = sorted(values)
    if not data:
        return math.nan
    k = (len(data) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def median(values):
    return percentile(values, 50)


def ms(seconds, digits=None):
    """Format seconds as milliseconds with a sensible number of digits."""
    value = seconds * 1000
    if digits is None:
        digits = 0 if value >= 100 else 1
    return f"{value:.{digits}f}"


def spread(values, unit=ms):
    """Return "median (p25-p75 a-b, n=N)" for a list of seconds (or other values with `unit`)."""
    if not values:
        return "-"
    return f"{unit(median(values))} ({unit(percentile(values, 25))}-{unit(percentile(values, 75))}, n={len(values)})"


def ratio(a, b):
    return a / b if b else math.nan


def fmt_ratio(value):
    return "-" if value is None or math.isnan(value) else f"{value:.2f}x"


def bootstrap_ratio(a, b, resamples=2000, seed=1):
    """Return a 95% bootstrap interval (low, high) of median(a) / median(b)."""
    import random

    rng = random.Random(seed)  # noqa: S311 - reproducible orders, not secrets
    ratios = []
    for _ in range(resamples):
        ra = [a[rng.randrange(len(a))] for _ in a]
        rb = [b[rng.randrange(len(b))] for _ in b]
        ratios.append(ratio(median(ra), median(rb)))
    return percentile(ratios, 2.5), percentile(ratios, 97.5)
