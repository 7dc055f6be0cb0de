"""The config's keys: SCHEMA is the single source for the checks, the defaults, the sample config the package
ships and the reference in README.md and the man page (tests keep those in step with it)."""

from typing import NamedTuple

from reaper.config import durations

POWEROFF = ("systemctl", "poweroff")


class Config(NamedTuple):  # NamedTuples here and elsewhere: `dataclasses` imports `inspect`, 7 ms a tick
    path: str
    inactivity_duration: int | None  # seconds, None when off
    min_session: int = 10
    services: tuple = ("sshd",)
    ignore_users: frozenset = frozenset()
    ignore_networks: tuple = ()
    ignore_keys: frozenset = frozenset()
    action: tuple = POWEROFF
    dstack: bool = False  # read from a dstack dev-environment file
    max_inhibit: int | None = 86400  # seconds an inhibitor holds at most, None when off
    may_inhibit: str | tuple = "everyone"  # "everyone", "root", or a tuple of group names
    max_duration: int | None = None  # seconds from boot, None when off
    max_duration_grace: int | None = 1800  # seconds past max_duration a connected user gets, None: no limit
    notice: bool = True  # write the login notice
    pre_action_timeout: int = 60  # seconds each pre-action hook may take
    metrics: str | None = None  # the Prometheus textfile the tick writes, None when off

    @property
    def action_name(self):
        return "poweroff" if self.action == POWEROFF else None


class Option(NamedTuple):
    key: str  # dotted path, e.g. ignore.users
    sample: str  # YAML for the sample config
    help: str
    allowed: str


SCHEMA = (
    Option(
        "inactivity_duration",
        "off",
        "Power off once no counted SSH session has been open for this long. Required.",
        durations.ALLOWED,
    ),
    Option(
        "min_session",
        "10s",
        "Sessions shorter than this are not activity (the control plane's quick probes, say).",
        "off (every session counts) or a duration as for inactivity_duration",
    ),
    Option("services", "[sshd]", "PAM services whose sessions count.", "a non-empty list of PAM service names"),
    Option("ignore.users", "[]", "Accounts whose sessions never count.", "a list of user names"),
    Option(
        "ignore.networks",
        "[]",
        "Client networks whose sessions never count.",
        "a list of IPv4 or IPv6 networks in CIDR form, e.g. 10.0.0.5/32 or fd00::/8",
    ),
    Option(
        "ignore.keys",
        "[]",
        "SSH public keys whose sessions never count (sshd tells the hook the key; ExposeAuthInfo is not needed).",
        "a list of key fingerprints as ssh-keygen -lf prints them: SHA256:<43 characters>",
    ),
    Option(
        "action",
        "poweroff",
        "What to run when the machine has been idle for inactivity_duration.",
        'poweroff, or a command as a list run without a shell, e.g. ["/usr/local/bin/stop-me", "--now"]',
    ),
    Option(
        "max_inhibit",
        "24h",
        "The longest one inhibitor (idle-reaper inhibit) holds the machine up, from when it began, so a forgotten"
        " one can't keep it up for weeks; its end then counts as activity.",
        "off (no limit) or a duration as for inactivity_duration",
    ),
    Option(
        "may_inhibit",
        "everyone",
        "Who may hold an inhibitor. Files of anyone else in the inhibitors directory are refused.",
        "everyone, root, or a list of group names whose members (and root) may, e.g. [developers]",
    ),
    Option(
        "max_duration",
        "off",
        "A hard cap on how long the machine runs, counted from its boot: once reached the action runs, whatever"
        " inactivity_duration says (connected users get max_duration_grace first). dstack's max_duration.",
        "off or a duration as for inactivity_duration, e.g. 12h",
    ),
    Option(
        "max_duration_grace",
        "30m",
        "Once max_duration is reached, how long the action waits for counted sessions to end; when it is over"
        " the action runs anyway. off: wait for the last session however long.",
        "off (never cut a connected user off) or a duration as for inactivity_duration",
    ),
    Option(
        "notice",
        "on",
        "Show the policy and the state at every interactive SSH login (a file in /run/motd.d that pam_motd shows).",
        "on or off",
    ),
    Option(
        "pre_action_timeout",
        "60s",
        "How long each executable in /etc/idle-reaper/pre-action.d/ may run before the action; one that takes"
        " longer is stopped, logged, and the action still runs.",
        "a duration as for inactivity_duration (not off)",
    ),
    Option(
        "metrics",
        "off",
        "A Prometheus textfile that each tick keeps up to date, for node_exporter's textfile collector.",
        "off, or an absolute path ending in .prom, e.g. /var/lib/prometheus/node-exporter/idle-reaper.prom",
    ),
)
ALLOWED = {o.key: o.allowed for o in SCHEMA}
TOP_KEYS = (
    "inactivity_duration", "min_session", "services", "ignore", "action", "max_inhibit", "may_inhibit",
    "max_duration", "max_duration_grace", "notice", "pre_action_timeout", "metrics",
)  # fmt: skip
IGNORE_KEYS = ("users", "networks", "keys")


def reference_markdown():
    """Return the config reference as a Markdown table, for README.md (a test keeps the two in step)."""
    rows = ["| key | default | meaning | allowed |", "|---|---|---|---|"]
    for o in SCHEMA:
        default = "(required)" if o.key == "inactivity_duration" else f"`{o.sample}`"
        rows.append(f"| `{o.key}` | {default} | {o.help} | {o.allowed} |")
    return "\n".join(rows)
