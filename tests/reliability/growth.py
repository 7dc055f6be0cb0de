"""Sessions from many distinct client addresses, each through the real hook (the launcher, then Python), each
holding a real TCP connection from its own loopback address, as an sshd monitor would.

    /usr/bin/python3 -I growth.py LAUNCHER STATE_DIR CONFIG FIRST COUNT

runs COUNT sessions one after another, the i-th from 127.1.(i // 250).(i % 250 + 1) (FIRST from 127.0.0.2),
and prints JSON: the seconds each open hook took, and the number of closed records after each close. The
process running this is every session's "monitor", so the hook takes each connection from its socket.
"""

import json
import os
import socket
import subprocess
import sys
import time


def source(i):
    return "127.0.0.2" if i == 0 else f"127.1.{i // 250}.{i % 250 + 1}"


def closed_records(state_dir):
    with open(os.path.join(state_dir, "state.json")) as f:
        return len(json.load(f)["closed"])


def main(launcher, state_dir, config, first, count):
    argv = [launcher, "--state-dir", state_dir, "--config", config]
    base = {"PAM_USER": "root", "PAM_SERVICE": "sshd", "PAM_TTY": "ssh"}
    opens, sizes = [], []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        for i in range(first, first + count):
            client = socket.create_connection(listener.getsockname(), source_address=(source(i), 0))
            accepted, _ = listener.accept()
            with client, accepted:
                c, s = client.getsockname(), listener.getsockname()
                env = {**base, "PAM_RHOST": c[0], "SSH_CONNECTION": f"{c[0]} {c[1]} {s[0]} {s[1]}"}
                started = time.monotonic()
                subprocess.run(argv, env={**env, "PAM_TYPE": "open_session"}, check=True)
                opens.append(time.monotonic() - started)
                subprocess.run(argv, env={**env, "PAM_TYPE": "close_session"}, check=True)
                sizes.append(closed_records(state_dir))
    json.dump({"opens": opens, "closed": sizes}, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
