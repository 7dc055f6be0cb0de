"""The observation step that `status` and `reap` share: the state, the live evidence, and the decision.

`observe` only reads (no lock), for status and dry runs; `reap` reads the state under the lock itself and then
calls `look` the same way, so both see the same evidence and decide alike.
"""

from typing import NamedTuple

from reaper import clock, decision, defaults
from reaper.evidence import activity, ssh
from reaper.state import leases


class Paths(NamedTuple):
    config: str
    state_dir: str
    proc: str = defaults.PROC
    motd_dir: str | None = None  # where the login notice goes; None: nowhere


def look(paths, cfg, state, problem, now, views=True):
    """Given this boot's state (None if unusable, with `problem` saying why), gather the live evidence of
    every kind and decide. Return (evidence, Decision); evidence.notes holds what the sources said."""
    evidence = ssh.gather(state["leases"] if state else [], paths.proc)
    activities, evidence.notes = activity.gather_all(paths, cfg, now)
    result = decision.decide(cfg, now, clock.boot_started(paths.proc), state, evidence, problem, views, activities)
    return evidence, result


class Observation(NamedTuple):
    decision: object
    state: dict | None  # this boot's state, None if unusable
    problem: str | None  # why the state is unusable
    evidence: object
    file_missing: bool


def observe(paths, cfg):
    """Read the state without locking, look at the live system, and decide. Changes nothing."""
    now = clock.now()
    boot = clock.boot_key(paths.proc)
    try:
        raw, problem = leases.read_state(paths.state_dir), None
        state = leases.current(raw, boot)
        state["merged"] = leases.merge_pending(paths.state_dir, state)
    except leases.StateError as e:
        raw, state, problem = None, None, f"state file unusable: {e}"
    evidence, result = look(paths, cfg, state, problem, now)
    return Observation(result, state, problem, evidence, raw is None and problem is None)
