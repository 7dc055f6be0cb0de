"""What keeps the machine up besides recorded SSH sessions: one shape for every other kind of evidence.

Each kind is a module of reaper.evidence named in SOURCES, with

    gather(paths, cfg, now) -> (list of Activity, list of notes)

which only reads (status calls it too), and optionally `tidy(paths, activities, now)`, which the tick calls
under the state lock after it has remembered what ended (to remove what a source no longer needs). Adding a
kind is one module and one line here; the decision sees only Activity records.
"""

import importlib
from typing import NamedTuple

# Counts like a session: the machine is active while it lasts.
ACTIVE = "active"
# Holds the machine up on purpose: the state is "inhibited" while it lasts.
INHIBIT = "inhibit"

# The modules of reaper.evidence that report activities, in the order status shows them.
SOURCES = ("inhibitors", "logind", "mosh")


class Activity(NamedTuple):
    kind: str  # which source: "inhibitor", "logind", "mosh", ...
    id: str  # unique within its kind
    holds: str  # ACTIVE or INHIBIT
    user: str | None
    why: str | None  # as its owner wrote it: escape before showing
    since: float | None  # CLOCK_BOOTTIME it began
    until: float | None = None  # when it stops by itself (a time limit, or the max_inhibit cap), if known
    pid: int | None = None  # the process it lasts as long as, if any
    ended: float | None = None  # when it ended, if it has: then only its end matters
    capped: bool = False  # `until` is the max_inhibit cap

    def end(self, now):
        """Return when it ended (its own end, or its time limit if that has passed), or None if it lasts."""
        if self.ended is not None:
            return self.ended
        if self.until is not None and self.until <= now:
            return self.until
        return None

    def as_json(self, iso):
        """As `status --json` and `inhibit --list --json` show it; iso(t) gives a CLOCK_BOOTTIME instant's text."""
        return {
            "kind": self.kind,
            "id": self.id,
            "user": self.user,
            "why": self.why,
            "since": iso(self.since),
            "until": iso(self.until),
            "capped": self.capped,
            "pid": self.pid,
        }

    def describe(self):
        if self.user is None and self.since is None and self.why:
            return self.why  # one the tick remembered lasting, now gone (decision.vanished)
        return f"{self.kind} {self.id} of {self.user or '?'}"


def gather_all(paths, cfg, now, sources=None):
    """Return (activities, notes) from every source. A source that breaks is a note, not a crash: its kind is
    then unknown for this tick, which `notes` says."""
    activities, notes = [], []
    for name in SOURCES if sources is None else sources:
        try:
            module = importlib.import_module(f"reaper.evidence.{name}")
            found, said = module.gather(paths, cfg, now)
        except Exception as e:  # noqa: BLE001 - one source must not take the others down
            notes.append(f"{name}: could not be read: {type(e).__name__}: {e}")
            continue
        activities.extend(found)
        notes.extend(said)
    return activities, notes


def tidy_all(paths, activities, now, sources=None):
    """Let each source that wants to clean up after the tick remembered its ends."""
    for name in SOURCES if sources is None else sources:
        module = importlib.import_module(f"reaper.evidence.{name}")
        tidy = getattr(module, "tidy", None)
        if tidy is not None:
            tidy(paths, [a for a in activities if a.kind == module.KIND], now)
