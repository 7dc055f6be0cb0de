"""Row 3's inside part: N PAM sessions opened at once, then closed at once, through a real PAM stack.

Run by bench/crowd.py, with the venv's python (python-pam), in a mount namespace where /etc/pam.d holds the
benchmark's services. It forks one process per session; each authenticates, waits at a barrier, times
pam_open_session (pam_exec running the hook, with the session process as its parent, as sshd's monitor is), waits
at a second barrier, times pam_close_session, and stays alive until the round is over. Between the phases the
conductor reads the state file to check that every open and every close was recorded exactly once.

Argument: JSON {"sessions", "rounds": [service, ...], "state_dir", "hook_service"}. Prints JSON results.
"""

import ctypes
import json
import os
import sys
import time

import pam


def session(i, service, barriers, report):
    """The body of one forked session process. Never returns."""
    code = 1
    try:
        p = pam.pam()
        env = {"SSH_CONNECTION": f"127.0.0.1 {20000 + i} 127.0.0.1 22"}
        user = f"irb-crowd{i:02d}"
        p.authenticate(user, "", service=service, call_end=False, env=env)
        p.pam_set_item(p.handle, pam.PAM_RHOST, ctypes.c_char_p(b"127.0.0.1"))
        p.pam_set_item(p.handle, pam.PAM_TTY, ctypes.c_char_p(b"ssh"))
        os.write(report, json.dumps({"i": i, "phase": "ready"}).encode() + b"\n")
        for phase, barrier in zip(("open", "close"), barriers[:2], strict=True):
            os.read(barrier, 1)  # returns at EOF: when the conductor closes its end, all go at once
            start = time.perf_counter()
            rc = p.open_session() if phase == "open" else p.close_session()
            seconds = time.perf_counter() - start
            os.write(report, json.dumps({"i": i, "phase": phase, "s": seconds, "rc": rc}).encode() + b"\n")
        p.end()
        os.read(barriers[2], 1)  # alive until the round is over
        code = 0
    finally:
        os._exit(code)


def read_state(state_dir):
    """Return (the state as a reader sees it, how many events wait in pending files).

    A hook that can't get the lock in time writes its event to a pending file, which the next writer folds in
    and readers fold in memory (reaper/state/leases.py); so this reads through the reaper's own reader when it has one.
    """
    pending = sum(1 for n in os.listdir(state_dir) if n.startswith("pending.")) if os.path.isdir(state_dir) else 0
    try:
        from reaper import clock
        from reaper.state import leases

        if hasattr(leases, "load"):
            return leases.load(state_dir, clock.boot_key()), pending
    except ImportError:
        pass
    try:
        with open(os.path.join(state_dir, "state.json")) as f:
            return json.load(f), pending
    except FileNotFoundError:
        return {"leases": [], "closed": []}, pending


def collect(reader, n, phase):
    got = {}
    while len(got) < n:
        line = reader.readline()
        if not line:
            raise RuntimeError(f"a session process died before reporting {phase}")
        msg = json.loads(line)
        if msg["phase"] == phase:
            got[msg["i"]] = msg
    return got


def one_round(n, service, state_dir, check):
    barriers = [os.pipe() for _ in range(3)]
    report_r, report_w = os.pipe()
    pids = []
    for i in range(n):
        pid = os.fork()
        if pid == 0:
            os.close(report_r)
            for _, w in barriers:
                os.close(w)
            session(i, service, [r for r, _ in barriers], report_w)
        pids.append(pid)
    os.close(report_w)
    for r, _ in barriers:
        os.close(r)
    reader = os.fdopen(report_r)
    problems = []
    pending = 0
    collect(reader, n, "ready")
    os.close(barriers[0][1])
    opened = collect(reader, n, "open")
    if check:
        state, waiting = read_state(state_dir)
        problems += check_open(state, n, pids)
        pending += waiting
    os.close(barriers[1][1])
    closed = collect(reader, n, "close")
    if check:
        state, waiting = read_state(state_dir)
        problems += check_close(state, n)
        pending += waiting
    os.close(barriers[2][1])
    for pid in pids:
        os.waitpid(pid, 0)
    reader.close()
    bad_rc = [m for m in list(opened.values()) + list(closed.values()) if m["rc"] != 0]
    if bad_rc:
        problems.append(f"{len(bad_rc)} PAM calls failed")
    return [m["s"] for m in opened.values()], [m["s"] for m in closed.values()], problems, pending


def check_open(state, n, pids):
    """Every session has exactly one lease, with its own process as the pid."""
    seen = [(lease.get("user"), lease.get("pid")) for lease in state["leases"]]
    want = {(f"irb-crowd{i:02d}", pid) for i, pid in enumerate(pids)}
    problems = []
    if len(seen) != len(set(seen)):
        problems.append(f"duplicated leases after the opens: {len(seen) - len(set(seen))}")
    if set(seen) - want:
        problems.append(f"unexpected leases after the opens: {len(set(seen) - want)}")
    if want - set(seen):
        problems.append(f"lost opens: {len(want - set(seen))} of {n} sessions have no lease")
    return problems


def check_close(state, n):
    """No lease is left, and every session's close found its open (none was recorded with an unknown open)."""
    problems = []
    if state["leases"]:
        problems.append(f"leftover leases after the closes: {len(state['leases'])}")
    orphans = [r for r in state["closed"] if r.get("opened") is None]
    if orphans:
        problems.append(f"closes that found no open: {len(orphans)}")
    users = {r.get("user") for r in state["closed"]}
    missing = {f"irb-crowd{i:02d}" for i in range(n)} - users
    if missing:
        problems.append(f"sessions with no closed record: {len(missing)}")
    return problems


def main():
    spec = json.loads(sys.argv[1])
    results = []
    for service in spec["rounds"]:
        check = service == spec["hook_service"]
        opens, closes, problems, pending = one_round(spec["sessions"], service, spec["state_dir"], check)
        results.append({"service": service, "open": opens, "close": closes, "problems": problems, "pending": pending})
    sys.stdout.write(json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
