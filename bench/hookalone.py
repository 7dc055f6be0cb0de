"""Row 2: the hook alone, open then close, each run as pam_exec runs it, against the same interpreter doing nothing.

pam_exec forks, and execs the hook with the PAM items and sshd's PAM environment as its whole environment (no
PATH, no HOME), cwd /, umask 022, and waits for it. Here a spawner plays the sshd monitor: it is the hook's
parent, stays alive past the close (so the close finds the lease the open wrote), and holds the server end of
a real ESTABLISHED loopback connection, the one SSH_CONNECTION names, as sshd's monitor holds its client's: the
hook reads its parent's sockets and finds it there.
"""

import base64
import json
import os
import random
import socket
import struct

from bench import HOOK_ARGV, NOOP_ARGV, NOOP_SHOWN, stats
from bench.proc import Spawner, remove, tmpfs_dir
from bench.table import Row, met

PASS_ARGV = NOOP_ARGV
TARGET_OPEN = 1.5


def fake_auth_info(seed=0):
    """Return an SSH_AUTH_INFO_0 value as sshd sets it: a well-formed ed25519 public key blob, then a newline."""
    rng = random.Random(seed)  # noqa: S311 - reproducible orders, not secrets
    blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + rng.randbytes(32)
    return f"publickey ssh-ed25519 {base64.b64encode(blob).decode()}\n"


def pam_env(pam_type, user="nobody", port=40000, service="sshd", server_port=22):
    """The environment pam_exec gives the hook for one SSH session (RECIPES.md: what the hook sees)."""
    return {
        "PAM_TYPE": pam_type,
        "PAM_USER": user,
        "PAM_SERVICE": service,
        "PAM_RHOST": "127.0.0.1",
        "PAM_TTY": "ssh",
        "SSH_CONNECTION": f"127.0.0.1 {port} 127.0.0.1 {server_port}",
        "SSH_AUTH_INFO_0": fake_auth_info(port),
    }


class Session:
    """A real ESTABLISHED loopback connection: this process keeps the client end, `monitor` (a Spawner that
    holds the server end, as sshd's monitor does) starts the hooks. close() ends both."""

    def __init__(self):
        with socket.create_server(("127.0.0.1", 0)) as listener:
            self.client = socket.create_connection(listener.getsockname())
            server, _ = listener.accept()
        self.port, self.server_port = self.client.getsockname()[1], server.getsockname()[1]
        with server:
            self.monitor = Spawner(hold=[server])  # it has its own copy; ours is closed

    def env(self, pam_type):
        return pam_env(pam_type, port=self.port, server_port=self.server_port)

    def close(self):
        self.monitor.close()
        self.client.close()


def hook_argv(state_dir):
    return [*HOOK_ARGV, "--state-dir", state_dir]


def read_state(state_dir):
    try:
        with open(os.path.join(state_dir, "state.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def run(quick=False, seed=6):
    """Return the Rows of the hook alone: open and close against the same interpreter doing nothing, interleaved."""
    rounds = 5 if quick else 200
    rng = random.Random(seed)  # noqa: S311 - reproducible orders, not secrets
    state_dir = os.path.join(tmpfs_dir("irb-hook-"), "state")
    times = {"pass": [], "open": [], "close": []}
    problems = []
    session = Session()
    try:
        for i in range(rounds + 3):  # the first 3 rounds warm the page cache and are not counted
            order = ["open", "close"]
            for _ in range(2):  # two do-nothing runs per round, at random places around the open and the close
                order.insert(rng.randrange(len(order) + 1), "pass")
            for what in order:
                argv = PASS_ARGV if what == "pass" else hook_argv(state_dir)
                env = session.env("open_session" if what == "pass" else f"{what}_session")
                done = session.monitor.run(argv, env=env, cwd="/", umask=0o022)
                if done.returncode != 0:
                    problems.append(f"{what} exited {done.returncode}")
                if i >= 3:
                    times[what].append(done.seconds)
                if what != "pass":
                    state = read_state(state_dir) or {"leases": []}
                    want = 1 if what == "open" else 0
                    if len(state["leases"]) != want:
                        problems.append(f"round {i}: {len(state['leases'])} leases after the {what}, not {want}")
                    elif want and state["leases"][0].get("conn") is None:
                        problems.append(f"round {i}: the open did not find the connection its parent holds")
        state = read_state(state_dir)
        closed = [r for r in (state or {}).get("closed", []) if r.get("opened") is not None and r.get("end") == "hook"]
        if not closed:
            problems.append("no closed session recorded by the hook: it did not do its work")
    finally:
        session.close()
        remove(os.path.dirname(state_dir))
    base = stats.median(times["pass"])
    open_ratio = stats.ratio(stats.median(times["open"]), base)
    close_ratio = stats.ratio(stats.median(times["close"]), base)
    notes = tuple(problems[:5])
    against = f"{NOOP_SHOWN}, same env: {stats.spread(times['pass'])} ms"
    return [
        Row(
            "2a",
            "hook alone: open_session, as pam_exec runs it",
            against,
            f"{stats.spread(times['open'])} ms",
            stats.fmt_ratio(open_ratio),
            f"<= {TARGET_OPEN}x",
            met(open_ratio <= TARGET_OPEN and not problems),
            notes,
        ),
        Row(
            "2b",
            "hook alone: close_session (off the login path)",
            f"the same runs of {NOOP_SHOWN}",
            f"{stats.spread(times['close'])} ms",
            stats.fmt_ratio(close_ratio),
            "- (not a login delay)",
        ),
    ]
