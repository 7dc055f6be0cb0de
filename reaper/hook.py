"""The pam_exec session hook: record each SSH session's open and close as a lease in the state file.

pam_exec runs it as root under `/usr/bin/python3 -I -S` (isolated, and without `site`, which it doesn't need),
once at open_session and once at close_session, with the PAM items in its environment and the per-connection
sshd monitor as its parent. The open runs on the login path (a login waits for it), so this module imports
only what it must, and it never waits for the lock: if another writer holds it, the open goes to a pending
file of its own. It always exits 0. Its own errors go to syslog.
"""

import os
import sys

from reaper import clock, defaults, leases
from reaper.escape import escape


def parse_args(argv):
    """Given the hook's arguments, return the state dir. Only `--state-dir DIR` is taken.

    The environment is not consulted: it comes from PAM, and a login must not choose where root writes.
    """
    state_dir = defaults.STATE_DIR
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--state-dir" and args:
            state_dir = args.pop(0)
        elif arg.startswith("--state-dir="):
            state_dir = arg.split("=", 1)[1]
        else:
            raise ValueError(f"unknown argument {escape(arg)!s}; usage: pam-session [--state-dir DIR]")
    return state_dir


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


def lease_from_env(env, now, boot):
    """Given the PAM environment, return the lease record for this session."""
    pid = os.getppid()
    user = leases.clip(env.get("PAM_USER"))
    uid = None
    if user:
        import pwd

        try:
            uid = pwd.getpwnam(user).pw_uid
        except (KeyError, ValueError):
            pass
    conn = leases.clip(env.get("SSH_CONNECTION"))
    client, client_port, server, server_port = parse_connection(conn)
    return {
        "user": user,
        "uid": uid,
        "service": leases.clip(env.get("PAM_SERVICE")),
        "rhost": leases.clip(env.get("PAM_RHOST")),
        "tty": leases.clip(env.get("PAM_TTY")),
        "conn": conn,
        "client": client,
        "client_port": client_port,
        "server": server,
        "server_port": server_port,
        "key": key_fingerprint(env.get("SSH_AUTH_INFO_0")),
        "pid": pid,
        "pid_start": clock.process_start_ticks(pid),
        "opened": now,
        "boot": boot,
        "source": "hook",
    }


def record(pam_type, env, state_dir):
    """Record an open or a close. Return a line for the log, or None for a PAM type we don't handle."""
    if pam_type not in ("open_session", "close_session"):
        return None
    now = clock.now()
    boot = clock.boot_key()
    lease = lease_from_env(env, now, boot)
    leases.ensure_dir(state_dir)
    opening = pam_type == "open_session"
    timeout = defaults.HOOK_LOCK_TIMEOUT if opening else defaults.HOOK_CLOSE_LOCK_TIMEOUT
    what = "session opened" if opening else "session closed"
    try:
        with leases.FlockLock(state_dir, timeout):
            state = leases.load(state_dir, boot)
            if opening:
                leases.add_lease(state, lease)
            elif not leases.close_lease(state, lease, now, "hook"):
                what += " (its open was not recorded)"
            leases.commit(state_dir, state)
    except (leases.LockTimeout, leases.StateError) as e:
        # Don't lose the event: the next writer folds it in (and sets an unusable state file aside).
        name = leases.write_pending(state_dir, "open" if opening else "close", lease, now)
        what += f" (recorded in {name}: {e})"
    return (
        f"{what}: user {escape(lease['user'])} service {escape(lease['service'])}"
        f" from {escape(lease['rhost'])} ({escape(lease['conn'])}) pid {lease['pid']}"
    )


def log(priority, message):
    import syslog

    syslog.openlog(defaults.SYSLOG_IDENT, syslog.LOG_PID, syslog.LOG_AUTHPRIV)
    syslog.syslog(priority, message)


def main(argv=None, environ=None):
    """Run the hook. Always return 0: a session hook must never fail or block a login."""
    env = os.environ if environ is None else environ
    try:
        state_dir = parse_args(sys.argv[1:] if argv is None else argv)
        line = record(env.get("PAM_TYPE"), env, state_dir)
        if line:
            log(6, line)  # LOG_INFO
    except BaseException as e:  # noqa: BLE001 - anything at all must not fail the login
        try:
            log(3, f"hook: {escape(env.get('PAM_TYPE'))} not recorded: {type(e).__name__}: {escape(e)}")  # LOG_ERR
        except BaseException:  # noqa: BLE001, S110 - nowhere left to report to
            pass
    return 0
