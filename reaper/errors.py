"""One error type with an exit code; only main() turns it into a message and an exit status.

Exit codes (also in the man page):
    0  done
    1  failed: the action failed, or something unexpected broke
    2  usage: bad command line
    3  config: the config file is invalid or unsafe
    4  skipped: the evidence was unclear (state unknown, lock busy, an unrecorded session), so nothing ran
"""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_SKIPPED = 4


class ReaperError(Exception):
    """An error the user can act on. Its message says what is wrong and what to do."""

    exit_code = EXIT_FAILED

    def __init__(self, message, exit_code=None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(ReaperError):
    """The config file is missing, invalid or unsafe. One line per problem: file, line, key, allowed values."""

    exit_code = EXIT_CONFIG
