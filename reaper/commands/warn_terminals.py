"""`idle-reaper warn-terminals --message TEXT PID...`: write a warning on the terminals of these SSH sessions.

Internal: the tick runs it in a transient unit (reaper.actions.warn), since its own unit may open no pty.
"""

from reaper.actions import warn


def handle(args, paths):
    return warn.handle_terminals(args.pids, args.message)
