"""A small process that runs commands for the benchmark and times them: `python3 -I -S bench/spawner.py`.

Why: a child's peak RSS (wait4's ru_maxrss) counts the memory of the process it was forked from, and the
benchmark itself holds megabytes of state. This process stays small, so the peak it passes on is far below
that of any command measured. It also times each command itself, from fork to reaping, so talking to it costs
nothing in the figures. It inherits its network namespace from whoever starts it.

Protocol: one JSON object a line on stdin {"argv", "env", "cwd", "umask", "stdout", "stderr"} (paths or null),
one JSON object a line on stdout {"seconds", "maxrss_kb", "returncode"}. Standalone: stdlib only, no imports
from the checkout.
"""

import json
import os
import sys
import time


def run(spec):
    out = os.open(spec.get("stdout") or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(spec.get("stderr") or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    devnull = os.open(os.devnull, os.O_RDONLY)
    env = spec.get("env")
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: only syscalls, then exec
        try:
            os.dup2(devnull, 0)
            os.dup2(out, 1)
            os.dup2(err, 2)
            if spec.get("cwd"):
                os.chdir(spec["cwd"])
            if spec.get("umask") is not None:
                os.umask(spec["umask"])
            os.execve(spec["argv"][0], spec["argv"], os.environ if env is None else env)  # noqa: S606
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - start
    for fd in (out, err, devnull):
        os.close(fd)
    return {"seconds": seconds, "maxrss_kb": usage.ru_maxrss, "returncode": os.waitstatus_to_exitcode(status)}


def main():
    # Sockets handed down to be held (Spawner(hold=...)) stay here, not in the commands run: as sshd's monitor
    # holds its session's connection and the hook pam_exec starts does not.
    for name in os.listdir("/proc/self/fd"):
        if int(name) > 2:
            try:
                os.set_inheritable(int(name), False)
            except OSError:
                pass  # the directory's own fd, closed by now
    for line in sys.stdin:
        sys.stdout.write(json.dumps(run(json.loads(line))) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
