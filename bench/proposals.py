"""What the proposed core changes would save: `python -m bench.proposals [--leases N]`.

Each line times a step of a tick as the code in reaper/ does it now, then a prototype of the change proposed in
BENCHMARKS.md, on the state and processes of row 4 (bench/scale.py), in one process, median of a few runs. The
prototypes live here only: nothing in reaper/ is changed.
"""

import argparse
import copy
import os
import statistics
import sys
import time

from bench.netns import NetNs
from bench.proc import remove, tmpfs_dir
from bench.scale import CONFIG, Processes, synthetic_state
from reaper import clock, config, decision, leases, live, policy, system, tick


def median_ms(fn, runs=5):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def line(what, ms):
    print(f"{what:64s} {ms:8.1f} ms")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.proposals", description=__doc__.split("\n\n")[0])
    parser.add_argument("--leases", type=int, default=10000)
    n = parser.parse_args(argv).leases
    work = tmpfs_dir("irb-proposals-")
    ns = NetNs()
    processes = None
    try:
        with ns.entered():
            processes = Processes(n)
        config_path = os.path.join(work, "config.yaml")
        with open(config_path, "w") as f:
            f.write(CONFIG.format(marker=os.path.join(work, "ACTED")))
        cfg = config.load(config_path)
        boot, now = clock.boot_key(), clock.now()
        steady = synthetic_state(n, processes.pids, boot, now)
        stale = synthetic_state(n, processes.pids, boot, now, stale_every=20)
        with ns.entered():
            _compare(cfg, steady, stale, now, n)
    finally:
        if processes:
            processes.close()
        ns.close()
        remove(work)


def _compare(cfg, steady, stale, now, n):
    established = system.established_tuples(system.tcp_sockets())
    leases_ = steady["leases"]
    print(f"{n:,} leases, each with its live process and ESTABLISHED connection\n")

    line("lease_live, as now: the process first (a /proc read each)", median_ms(
        lambda: [live.lease_live(lease, established) for lease in leases_]))  # fmt: skip
    memo = {}

    def normalize(ip):
        if ip not in memo:
            memo[ip] = system.normalize_ip(ip)
        return memo[ip]

    def connection_first(lease):
        key = (normalize(lease["client"]), lease["client_port"], normalize(lease["server"]), lease["server_port"])
        return key in established or clock.process_start_ticks(lease["pid"]) == lease["pid_start"]

    line("  proposed: the connection first, normalize_ip memoized", median_ms(
        lambda: [connection_first(lease) for lease in leases_]))  # fmt: skip
    line("sshd_processes: readlink /proc/PID/exe of every process", median_ms(system.sshd_processes))

    evidence = live.gather(stale["leases"])
    copying = median_ms(lambda: copy.deepcopy(stale), 3)

    def as_now():
        state = copy.deepcopy(stale)
        tick._end_stale(state, live.Evidence(evidence.established, list(evidence.live)), now)

    def one_pass():
        state = copy.deepcopy(stale)
        kept, gone = [], []
        for lease, is_live in zip(state["leases"], evidence.live, strict=True):
            (kept if is_live else gone).append(lease)
        state["leases"] = kept
        state["closed"].extend(dict(lease, closed=now, end="stale") for lease in gone)
        leases.fold_closed(state)

    stale_count = evidence.live.count(False)
    line(f"_end_stale of {stale_count} stale leases, as now: one close_lease each", median_ms(as_now, 3) - copying)
    line("  proposed: one pass, one fold", median_ms(one_pass, 3) - copying)

    probe = live.LiveSession("127.0.0.1", 1, "127.0.0.1", 2, 1000, "x", 1, 1)
    line("explained_by, one live session, as now: a scan (x2 per tick)", median_ms(
        lambda: live.explained_by(probe, leases_)))  # fmt: skip

    def indexes():
        by_tuple = {}
        for lease in leases_:
            if lease.get("client") is not None and lease.get("server") is not None:
                key = (normalize(lease["client"]), lease.get("client_port"), normalize(lease["server"]),
                       lease.get("server_port"))  # fmt: skip
                by_tuple[key] = lease
        by_process = {(lease.get("pid"), lease.get("pid_start")): lease for lease in leases_}
        return by_tuple, by_process

    line("  proposed: two dicts built once per tick, then O(1) a session", median_ms(indexes))

    full = live.gather(leases_)
    line("decide, as now", median_ms(lambda: decision.decide(cfg, now, clock.boot_started(), steady, full, None)))
    line("  ignore_reason for every lease, as now", median_ms(
        lambda: [policy.ignore_reason(cfg, lease) for lease in leases_]))  # fmt: skip
    cache = {}

    def ignore_memo(lease):
        key = (lease.get("service"), lease.get("user"), lease.get("client") or lease.get("rhost"), lease.get("key"))
        if key not in cache:
            cache[key] = policy.ignore_reason(cfg, lease)
        return cache[key]

    line("  proposed: memoized per (service, user, client, key)", median_ms(
        lambda: [ignore_memo(lease) for lease in leases_]))  # fmt: skip
    result = decision.decide(cfg, now, clock.boot_started(), steady, full, None)
    print(f"  the ACTIVE reason (logged, and kept in the state as the change key): {len(result.reason):,} characters")

    import io
    import json

    sessions = [{"user": f"dev{i % 37}", "service": "sshd", "rhost": "127.0.0.1", "tty": "ssh", "pid": i,
                 "opened_seconds_ago": 1234, "counted": True, "reason": None, "client": "127.0.0.1",
                 "client_port": i, "key": "SHA256:" + "x" * 43, "recorded": True, "pending": False}
                for i in range(len(leases_))]  # fmt: skip
    view = {"state": "active", "sessions": sessions}
    line("status --json output, as now: json.dump(indent=2), the Python encoder", median_ms(
        lambda: json.dump(view, io.StringIO(), indent=2), 3))  # fmt: skip
    line("  proposed: json.dumps(view), compact: the C encoder", median_ms(lambda: json.dumps(view), 3))


if __name__ == "__main__":
    sys.exit(main())
