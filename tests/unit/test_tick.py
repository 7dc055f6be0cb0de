"""What a tick remembers between runs: since when the evidence has been unclear, warned about once."""

from reaper import decision
from reaper.commands import reap

UNKNOWN = decision.Decision(decision.UNKNOWN, "state file unusable", 0.0, None, False)
IDLE = decision.Decision(decision.IDLE, "idle since boot", 5.0, 10.0, False)


def test_an_unclear_spell_is_remembered_warned_about_once_when_it_lasts_and_once_when_it_ends(monkeypatch):
    warnings = []
    monkeypatch.setattr(reap.logger, "warning", warnings.append)
    memory = {}
    assert reap._note_unclear(memory, UNKNOWN, 100.0) and memory["unclear_since"] == 100.0
    assert not reap._note_unclear(memory, UNKNOWN, 100.0 + reap.UNCLEAR_WARN_AFTER - 1)
    assert warnings == []
    assert reap._note_unclear(memory, UNKNOWN, 100.0 + reap.UNCLEAR_WARN_AFTER)
    assert not reap._note_unclear(memory, UNKNOWN, 100.0 + reap.UNCLEAR_WARN_AFTER + 60)
    assert len(warnings) == 1 and "unclear for 10m" in warnings[0]
    assert reap._note_unclear(memory, IDLE, 2000.0) and memory["unclear_since"] is None
    assert len(warnings) == 2 and "clear again" in warnings[1]


def test_a_short_unclear_spell_is_not_warned_about(monkeypatch):
    warnings = []
    monkeypatch.setattr(reap.logger, "warning", warnings.append)
    memory = {}
    reap._note_unclear(memory, UNKNOWN, 100.0)
    reap._note_unclear(memory, IDLE, 130.0)
    assert warnings == [] and memory["unclear_since"] is None
