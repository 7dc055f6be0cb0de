"""Logging for the reaper: to the journal under the identifier "idle-reaper", and to stderr for a person.

Under systemd, stderr is the journal (JOURNAL_STREAM says so): lines go there with a "<priority>" prefix that
journald reads. Run by hand, lines go to stderr and also to syslog (/dev/log), so the journal has them either way.
"""

import logging
import os
import sys

from reaper import defaults

logger = logging.getLogger("idle-reaper")

_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def stderr_is_journal(stream=None):
    """True if stderr is connected to journald, per the JOURNAL_STREAM variable systemd sets."""
    stream = stream or sys.stderr
    value = os.environ.get("JOURNAL_STREAM", "")
    if ":" not in value:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return value == f"{st.st_dev}:{st.st_ino}"


class _JournalPrefixFormatter(logging.Formatter):
    def format(self, record):
        return f"<{_SYSLOG_PRIORITY.get(record.levelno, 6)}>{super().format(record)}"


class _SyslogHandler(logging.Handler):
    """Writes through the C syslog module: no socket code of our own, and it drops silently without /dev/log."""

    def __init__(self):
        super().__init__()
        import syslog

        self._syslog = syslog
        syslog.openlog(defaults.SYSLOG_IDENT, syslog.LOG_PID, syslog.LOG_DAEMON)

    def emit(self, record):
        try:
            self._syslog.syslog(_SYSLOG_PRIORITY.get(record.levelno, 6), self.format(record))
        except Exception:  # noqa: BLE001 - logging must never break a tick
            self.handleError(record)


def setup(verbose=False, to_syslog=True):
    """Configure the "idle-reaper" logger once per process."""
    logger.handlers.clear()
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    stream = logging.StreamHandler(sys.stderr)
    if stderr_is_journal():
        stream.setFormatter(_JournalPrefixFormatter("%(message)s"))
        logger.addHandler(stream)
        return
    stream.setFormatter(logging.Formatter("idle-reaper: %(message)s"))
    logger.addHandler(stream)
    if to_syslog:
        logger.addHandler(_SyslogHandler())
