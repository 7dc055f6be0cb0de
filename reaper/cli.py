"""The `idle-reaper` command: status, reap, check-config and inhibit. Only main() turns errors into exit codes."""

import argparse
import os
import sys

from reaper import __version__, config, defaults
from reaper.errors import EXIT_CONFIG, EXIT_FAILED, ReaperError

DESCRIPTION = """\
Power off this machine once nobody has had an SSH session on it for inactivity_duration.
A PAM hook records SSH sessions; a systemd timer runs `idle-reaper reap`; `idle-reaper status` shows why."""

EPILOG = """\
exit status:
  0  done
  1  failed: the action failed, or something unexpected broke
  2  bad command line
  3  the config file is invalid or unsafe
  4  skipped: the evidence was unclear (state unknown, lock busy, an unrecorded session); nothing ran

examples:
  idle-reaper status                 where things stand, and why
  idle-reaper status --json          the same for a program (fields in idle-reaper(8))
  idle-reaper check-config           validate /etc/idle-reaper/config.yaml
  idle-reaper reap --dry-run         what the timer's tick would do now
  idle-reaper history --since 7d     what kept this machine up, and how long it sat idle
  idle-reaper inhibit --for 4h --why "training run"   keep the machine up for 4 hours
  idle-reaper inhibit -- make -j8    keep it up while the build runs

See idle-reaper(8)."""


def get_parser():
    parser = argparse.ArgumentParser(
        prog="idle-reaper",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"idle-reaper {__version__}")
    parser.add_argument(
        "--config",
        metavar="PATH",
        help=f"config file (default: ${defaults.CONFIG_ENV} or {defaults.CONFIG_PATH})",
    )
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help=f"state directory (default: ${defaults.STATE_DIR_ENV} or {defaults.STATE_DIR})",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    status = sub.add_parser("status", help="show the policy, the state, the countdown and each session")
    status.add_argument("--json", action="store_true", help="print JSON (a stable interface) instead of text")
    reap = sub.add_parser("reap", help="one tick: decide, log any change, and run the action when due")
    reap.add_argument("--dry-run", action="store_true", help="say what would happen; change nothing, run nothing")
    reap.add_argument(
        "--wait",
        metavar="SECONDS",
        type=float,
        default=0.0,
        help="if the action falls due within SECONDS, wait for it and decide again (the timer uses this)",
    )
    reap.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    sub.add_parser("check-config", help="validate the config file; print each problem and exit 3 if any")
    sub.add_parser("run-action", help="run the configured action now (what idle-reaper-action.service runs)")
    history = sub.add_parser("history", help="what kept this machine up, idle stretches and actions, across boots")
    history.add_argument("--since", metavar="DURATION", help="the period to show, back from now (default: 24h)")
    history.add_argument("--json", action="store_true", help="print JSON (a stable interface) instead of text")
    history.add_argument(
        "--shorter",
        metavar="DURATION",
        help="the shorter inactivity_duration to weigh in the summary (default: half the configured one)",
    )
    history.add_argument(
        "--history-dir",
        metavar="DIR",
        help="the history log's directory (default: $IDLE_REAPER_HISTORY_DIR or /var/lib/idle-reaper)",
    )
    inhibit = sub.add_parser(
        "inhibit",
        help="keep the machine up on purpose: for a while, while a command or a process runs",
        usage="idle-reaper inhibit (--for DURATION | --pid PID | -- COMMAND [ARGS...]) [--why TEXT]\n"
        "       idle-reaper inhibit --list [--json]\n       idle-reaper inhibit --release ID",
    )
    inhibit.add_argument("--for", dest="for_", metavar="DURATION", help="hold for this long (30m, 4h), then end")
    inhibit.add_argument("--pid", type=int, metavar="PID", help="hold while this process of yours runs")
    inhibit.add_argument("--why", metavar="TEXT", help="say why, for status and the journal")
    inhibit.add_argument("--list", action="store_true", help="list the inhibitors that hold")
    inhibit.add_argument("--json", action="store_true", help="with --list: print JSON")
    inhibit.add_argument("--release", metavar="ID", help="end an inhibitor of yours now (root: anyone's)")
    inhibit.add_argument("argv", nargs="*", metavar="COMMAND", help="after --: run it and hold while it runs")
    warn = sub.add_parser("warn-terminals", help="(internal) write a warning on these SSH sessions' terminals")
    warn.add_argument("--message", required=True, help="the text to write")
    warn.add_argument("pids", metavar="PID", type=int, nargs="+", help="the sshd process of each session")
    return parser


def _paths(args):
    from reaper.observe import Paths

    state_dir = args.state_dir or os.environ.get(defaults.STATE_DIR_ENV) or defaults.STATE_DIR
    motd_dir = os.environ.get(defaults.MOTD_DIR_ENV) or (defaults.MOTD_DIR if state_dir == defaults.STATE_DIR else None)
    return Paths(config=config.default_path(args.config, os.environ), state_dir=state_dir, motd_dir=motd_dir)


# Each subcommand is a module of reaper.commands with handle(args, paths) -> exit code, imported only when run.
COMMANDS = {
    "status": "status",
    "reap": "reap",
    "check-config": "check_config",
    "run-action": "run_action",
    "history": "history",
    "inhibit": "inhibit",
    "warn-terminals": "warn_terminals",
}


def main(argv=None):
    from reaper import log

    args = get_parser().parse_args(argv)
    log.setup(
        verbose=getattr(args, "verbose", False), to_syslog=args.command in ("reap", "run-action", "warn-terminals")
    )
    paths = _paths(args)
    try:
        import importlib

        return importlib.import_module(f"reaper.commands.{COMMANDS[args.command]}").handle(args, paths)
    except config.ConfigError as e:
        for line in str(e).splitlines():
            log.logger.error(line)
        return EXIT_CONFIG
    except ReaperError as e:
        log.logger.error(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - one line, not a traceback, for the journal
        debug = os.environ.get("IDLE_REAPER_DEBUG") == "1"
        log.logger.critical(f"unexpected error: {type(e).__name__}: {e}", exc_info=debug)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
