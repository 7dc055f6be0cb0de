"""Every path and tunable the program uses, in one place, so tests can point it all at a temp dir."""

CONFIG_PATH = "/etc/idle-reaper/config.yaml"
CONFIG_ENV = "IDLE_REAPER_CONFIG"

STATE_DIR = "/run/idle-reaper"
STATE_DIR_ENV = "IDLE_REAPER_STATE_DIR"
STATE_FILE = "state.json"
LOCK_FILE = "state.lock"

DIR_MODE = 0o755
STATE_MODE = 0o644
LOCK_MODE = 0o600

# The open hook is on the login path: it doesn't wait for the lock at all. If another writer holds it, the
# open goes to a pending file of its own (folded in by the next writer), so 50 logins at once don't queue.
HOOK_LOCK_TIMEOUT = 0.0
# No login waits for the close hook (the client has gone), so it may wait longer rather than lose a close.
HOOK_CLOSE_LOCK_TIMEOUT = 5.0
# The reaper can wait a little longer, then it skips the tick.
REAPER_LOCK_TIMEOUT = 2.0

# Closed sessions kept per boot, so the state (which every login reads and writes) stays small whatever the
# number of distinct clients; the latest counted one is always kept (leases.cap_closed).
MAX_CLOSED = 1000
MAX_CLOSED_NO_POLICY = 5000

# The login notice: pam_motd shows the files in /run/motd.d at every interactive login (Debian's sshd stack).
# Only a reaper on the machine's own state dir writes it (a --state-dir elsewhere is a test or a dry look);
# IDLE_REAPER_MOTD_DIR points it elsewhere.
MOTD_DIR = "/run/motd.d"
MOTD_DIR_ENV = "IDLE_REAPER_MOTD_DIR"
NOTICE_FILE = "idle-reaper"
NOTICE_MODE = 0o644  # pam_motd reads it with the user's credentials

# Pre-action hooks: executables in this directory next to the config (/etc/idle-reaper/pre-action.d).
PRE_ACTION_DIR_NAME = "pre-action.d"

SYSLOG_IDENT = "idle-reaper"

PROC = "/proc"
# systemd writes the container manager's name here when it runs in a container (clock.boot_key).
CONTAINER_FILE = "/run/systemd/container"

# What the reaper saw happen, kept across boots (reaper.actions.history); StateDirectory= of the unit.
HISTORY_DIR = "/var/lib/idle-reaper"
HISTORY_DIR_ENV = "IDLE_REAPER_HISTORY_DIR"
