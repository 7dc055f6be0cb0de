"""The pam_exec session hook: record each SSH session's open and close as a lease in the state file.

pam_exec runs it as root under `/usr/bin/python3 -I -S` (isolated, and without `site`, which it doesn't need),
once at open_session and once at close_session, with the PAM items in its environment and the per-connection
sshd monitor as its parent. The open runs on the login path (a login waits for it), so this module imports
only what it must, and it never waits for the lock: if another writer holds it, the open goes to a pending
file of its own. It always exits 0. Its own errors go to syslog.

The modules on its path (this one, clock, evidence.monitor, state.leases) use `posix`, not `os`: under -S
nothing has imported os, and importing it costs about 2.7 ms, a sixth of the interpreter's own start
(BENCHMARKS.md, row 2a).
"""

import posix
import sys

from reaper import clock, defaults
from reaper.escape import escape
from reaper.evidence import monitor
from reaper.state import leases


def parse_args(argv):
    """Given the hook's arguments, return (state dir, config path): `--state-dir DIR`, `--config PATH`.

    The environment is not consulted: it comes from PAM, and a login must not choose where root writes.
    """
    options = {"--state-dir": defaults.STATE_DIR, "--config": defaults.CONFIG_PATH}
    args = list(argv)
    while args:
        arg = args.pop(0)
        name, eq, value = arg.partition("=")
        if name in options and (eq or args):
            options[name] = value if eq else args.pop(0)
        else:
            raise ValueError(f"unknown argument {escape(arg)!s}; usage: pam-session [--state-dir DIR] [--config PATH]")
    return options["--state-dir"], options["--config"]


def key_fingerprint(auth_info):
    """Given SSH_AUTH_INFO_0, return the SHA256 fingerprint of the first public key used, or None."""
    if not auth_info:
        return None
    for line in auth_info.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "publickey":
            import binascii

            try:
                from _sha256 import sha256  # the builtin, without hashlib's OpenSSL load
            except ImportError:
                from hashlib import sha256
            try:
                blob = binascii.a2b_base64(parts[2].encode("ascii"))
            except (binascii.Error, UnicodeEncodeError):
                return None
            digest = binascii.b2a_base64(sha256(blob).digest(), newline=False).decode("ascii")
            return "SHA256:" + digest.rstrip("=")
    return None


def parse_connection(conn):
    """Given SSH_CONNECTION ("client port server port"), return (client, client_port, server, server_port)."""
    parts = (conn or "").split(" ")
    if len(parts) != 4:
        return None, None, None, None
    try:
        return parts[0], int(parts[1]), parts[2], int(parts[3])
    except ValueError:
        return None, None, None, None


def _user_of(uid):
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _uid_of(user):
    import pwd

    try:
        return pwd.getpwnam(user).pw_uid
    except (KeyError, ValueError, TypeError):
        return None


def _same_connection(claimed, held):
    return (
        monitor.same_address(claimed[0], held[0])
        and claimed[1] == held[1]
        and monitor.same_address(claimed[2], held[2])
        and claimed[3] == held[3]
    )


def identify(env, pid, opening, proc=defaults.PROC):
    """Given the PAM environment and the session's process (pam_exec's parent), return (record, problems).

    Everything in `env` is untrusted. The launcher passes, of each PAM item (PAM_USER, PAM_RHOST, ...) and
    PAM_TYPE, the value pam_exec set itself, which the PAM application (sshd) chose; PAM environment
    variables (SSH_CONNECTION, SSH_AUTH_INFO_0) a user can replace by close_session, so they are read only at
    open. What the system can tell is taken from it: the user from
    the process's loginuid, the connection from the socket it holds. A value the system contradicts is not
    recorded; `problems` says what was contradicted, escaped, for the log.
    """
    problems = []
    process = monitor.read(pid, proc)
    user = leases.clip(env.get("PAM_USER"))
    uid = _uid_of(user)
    logged_in = process.logged_in if process else None
    if logged_in is not None and process.ppid > 1:
        parent = monitor.read(process.ppid, proc)
        if parent is not None and parent.loginuid == process.loginuid:
            logged_in = None  # inherited from sshd's own start (a root shell), not set by this login
    if logged_in is not None and logged_in != uid:
        problems.append(f"PAM_USER {escape(user)} is not the session's loginuid {logged_in}")
        uid, user = logged_in, _user_of(logged_in)
    hint = leases.clip(env.get("SSH_CONNECTION")) if opening else None
    claimed = parse_connection(hint)
    # The connection SSH_CONNECTION names, if the process holds it: what the scan below finds then, in one
    # lookup. Else the scan: one connection held is the session's; of several, the one SSH_CONNECTION names.
    # A close needs neither: it is matched by its process, and its record keeps what the open found.
    conn = monitor.held_connection(pid, claimed, proc) if process and hint is not None else None
    if conn is None and opening:
        held = monitor.connections(pid, proc) if process else []
        matching = [c for c in held if _same_connection(claimed, c)]
        conn = held[0] if len(held) == 1 else matching[0] if len(matching) == 1 else None
    if hint is not None and not (conn and _same_connection(claimed, conn)):
        seen = "not the session's socket" if conn else "not confirmed by the session's socket"
        problems.append(f"SSH_CONNECTION {escape(hint)} is {seen}")
    client, client_port, server, server_port = conn or (None, None, None, None)
    # PAM_RHOST is the item sshd set (a name, with UseDNS); an address that isn't the socket's gives way to it.
    rhost = leases.clip(env.get("PAM_RHOST"))
    if client and rhost is not None and monitor.is_ip(rhost) and not monitor.same_address(rhost, client):
        problems.append(f"PAM_RHOST {escape(rhost)} is not the session's client {escape(client)}")
        rhost = client
    record = {
        "user": user,
        "uid": uid,
        "service": leases.clip(env.get("PAM_SERVICE")),
        "rhost": rhost,
        "tty": leases.clip(env.get("PAM_TTY")),
        "conn": None if conn is None else f"{client} {client_port} {server} {server_port}",
        "client": client,
        "client_port": client_port,
        "server": server,
        "server_port": server_port,
        "key": key_fingerprint(env.get("SSH_AUTH_INFO_0")) if opening else None,
        "pid": pid,
        "pid_start": process.start if process else clock.process_start_ticks(pid, proc),
        "source": "hook",
    }
    return record, problems


def record(pam_type, env, state_dir, proc=defaults.PROC, config_path=defaults.CONFIG_PATH):
    """Record an open or a close. Return a line for the log, or None for a PAM type we don't handle.

    A close is matched to its open by the session's process alone (pid and start time): nothing the PAM
    environment says at close is believed, and the record keeps what the open found.
    """
    if pam_type not in ("open_session", "close_session"):
        return None
    now = clock.now()
    boot = clock.boot_key(proc)
    opening = pam_type == "open_session"
    lease, problems = identify(env, posix.getppid(), opening, proc)
    lease["opened"] = now
    lease["boot"] = boot
    leases.ensure_dir(state_dir)
    timeout = defaults.HOOK_LOCK_TIMEOUT if opening else defaults.HOOK_CLOSE_LOCK_TIMEOUT
    what = "session opened" if opening else "session closed"
    shown = lease
    try:
        with leases.FlockLock(state_dir, timeout):
            state = leases.load(state_dir, boot)
            if opening:
                leases.add_lease(state, lease)
            else:
                found = leases.close_lease(state, lease, now, "hook")
                if found is None:
                    what += " (its open was not recorded)"
                else:
                    shown, problems = found, []  # what the open found stands; nothing at close is needed
                cap_closed(state, state_dir, config_path)
            leases.commit(state_dir, state)
    except (leases.LockTimeout, leases.StateError) as e:
        # Don't lose the event: the next writer folds it in (and sets an unusable state file aside).
        name = leases.write_pending(state_dir, "open" if opening else "close", lease, now)
        what += f" (recorded in {name}: {e})"
    line = (
        f"{what}: user {escape(shown['user'])} service {escape(shown['service'])}"
        f" from {escape(shown['client'] or shown['rhost'])} port {shown['client_port']} pid {shown['pid']}"
    )
    if problems:
        line += "; not believed: " + "; ".join(problems)
    return line


def cap_closed(state, state_dir, config_path):
    """Keep the closed records within bounds, never losing the latest counted activity under the policy.

    Only a close adds a closed record, and no login waits for the close hook, so the policy is read here (with
    the reaper's cache of it) when, and only when, the cap is reached.
    """
    if len(state["closed"]) <= defaults.MAX_CLOSED:
        return
    import site

    site.main()  # the hook runs without site (-S); the config's parser needs Debian's dist-packages (yaml)
    from reaper import config, policy  # yaml, humanfriendly, ipaddress: not for the login path

    try:
        cfg = config.load(config_path, cache_dir=state_dir)
    except Exception as e:  # noqa: BLE001 - a broken config: keep more rather than guess what counts
        log(4, f"hook: the closed sessions are capped without the policy: {type(e).__name__}: {escape(e)}")
        leases.cap_closed(state, None)
        return
    leases.cap_closed(state, lambda record: policy.counts_closed(cfg, record))


def log(priority, message):
    import syslog

    syslog.openlog(defaults.SYSLOG_IDENT, syslog.LOG_PID, syslog.LOG_AUTHPRIV)
    syslog.syslog(priority, message)


def main(argv=None, environ=None):
    """Run the hook. Always return 0: a session hook must never fail or block a login."""
    if environ is None:  # what os.environ would hold: posix.environ is bytes
        environ = {
            k.decode(errors="surrogateescape"): v.decode(errors="surrogateescape") for k, v in posix.environ.items()
        }
    env = environ
    try:
        state_dir, config_path = parse_args(sys.argv[1:] if argv is None else argv)
        line = record(env.get("PAM_TYPE"), env, state_dir, config_path=config_path)
        if line:
            log(6, line)  # LOG_INFO
    except BaseException as e:  # noqa: BLE001 - anything at all must not fail the login
        try:
            log(3, f"hook: {escape(env.get('PAM_TYPE'))} not recorded: {type(e).__name__}: {escape(e)}")  # LOG_ERR
        except BaseException:  # noqa: BLE001, S110 - nowhere left to report to
            pass
    return 0
