"""`python -m bench [--quick] [--rows 1,2,...]`: run the benchmarks of issue 6 and print the table.

Full mode takes about 35 minutes (row 8's 10,000 sessions, one after another, about 20 of them) and boots
throwaway machines with systemd-nspawn for rows 6 and 7, with the .deb built from this tree (or --deb PATH, or
$IDLE_REAPER_DEB). --quick runs every row but 6 and 7 with tiny counts, in seconds, to check that the
benchmarks still run (tests/integration/test_bench_smoke.py); its figures mean nothing.
Needs root: it runs sshds, makes test users, mounts namespaces and boots machines.
"""

import argparse
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime

from bench import REPO, SYSTEM_PYTHON, VENV_PYTHON, table
from bench.table import ERROR, NO, NOT_RUN, QUICK, YES, Row

ROWS = ("1", "2", "3", "4", "5", "6", "7", "8")


def get_parser():
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts, no nspawn: a smoke test of the benchmarks")
    parser.add_argument("--rows", default=",".join(ROWS), help="which rows to run, e.g. 1,2 (default: all)")
    parser.add_argument("--idle-minutes", type=float, default=5.0, help="how long row 7 watches an idle machine")
    parser.add_argument("--deb", help="the .deb for rows 6 and 7 (default: built from this tree, as measured)")
    parser.add_argument("--growth", type=int, help="how many sessions row 8 runs (default: 10,000; --quick: 20)")
    return parser


def _out(argv):
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except OSError as e:
        return f"({e.strerror})"
    return (done.stdout + done.stderr).strip().splitlines()[0] if (done.stdout + done.stderr).strip() else "?"


def _version(python, module):
    return _out([python, "-I", "-c", f"import {module}; print({module}.__version__)"])


def machine():
    """Return lines describing this machine and the software measured."""
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/etc/debian_version") as f:
        debian = f.read().strip()
    if (REPO / ".git").exists():
        dirty = _out(["git", "-C", str(REPO), "status", "--porcelain", "--", "reaper", "hooks"])
        code = _out(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
        code += " with uncommitted changes in reaper/ or hooks/" if dirty and dirty != "?" else ""
    else:
        code = f"{REPO} (not a git checkout)"
    return [
        f"date: {datetime.now(tz=UTC).isoformat(timespec='seconds')}",
        f"machine: {cpu}, {os.cpu_count()} cores, kernel {os.uname().release}, Debian {debian},"
        f" load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the start",
        f"python: Debian {_out([SYSTEM_PYTHON, '--version'])}; filelock {_version(SYSTEM_PYTHON, 'filelock')},"
        f" yaml {_version(SYSTEM_PYTHON, 'yaml')}, humanfriendly {_version(SYSTEM_PYTHON, 'humanfriendly')}"
        f" (Debian); venv: filelock {_version(VENV_PYTHON, 'filelock')}, yaml {_version(VENV_PYTHON, 'yaml')} (PyPI)",
        f"{_out(['ssh', '-V'])}; {_out(['systemd-nspawn', '--version'])}",
        f"code: {code}",
    ]


def _progress(message):
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _error_row(key, what, exc_text):
    return Row(key, what, "-", "-", "-", "-", ERROR, (exc_text.strip().splitlines()[-1],))


def _measure(key, what, fn, quick):
    _progress(f"row {key}: {what}")
    start = time.monotonic()
    try:
        rows = fn(quick=quick)
    except Exception:  # noqa: BLE001 - one broken row must not hide the others
        text = traceback.format_exc()
        print(text, file=sys.stderr)
        rows = [_error_row(key, what, text)]
    _progress(f"row {key}: done in {time.monotonic() - start:.0f} s")
    return rows


def main(argv=None):
    args = get_parser().parse_args(argv)
    wanted = {r.strip() for r in args.rows.split(",") if r.strip()}
    if os.geteuid() != 0:
        print("python -m bench needs root: it runs sshds, makes test users, mounts namespaces", file=sys.stderr)
        return 2
    if args.deb:
        os.environ["IDLE_REAPER_DEB"] = os.path.abspath(args.deb)
    from bench import crowd, growth, hookalone, login, scale, system
    from bench.proc import close_default

    header = machine()
    rows = []
    image_cm = image = watch = None
    system_rows = {"6", "7"} & wanted
    system_error = None
    deb_dir = tempfile.mkdtemp(prefix="irb-deb-")
    if system_rows and not args.quick:
        _progress("rows 6-7: building the .deb of this tree and the machine image (cached rootfs + the .deb)")
        try:
            h = system.harness()
            deb = os.environ.get("IDLE_REAPER_DEB") or h.build_deb(deb_dir)  # the package of this very tree
            image_cm = h.Image.build(deb)
            image = image_cm.__enter__()
        except Exception:  # noqa: BLE001 - rows 6 and 7 say why
            system_error = traceback.format_exc()
            print(system_error, file=sys.stderr)
            image_cm = None
        if image is not None and "7" in wanted:
            _progress(f"row 7: an idle machine is watched for {args.idle_minutes:g} min while the other rows run")
            watch = system.IdleWatch(image, args.idle_minutes)
    try:
        plan = (
            ("1", "SSH logins against three PAM stacks", login.run),
            ("2", "the hook alone, as pam_exec runs it", hookalone.run),
            ("3", "the hook under contention", crowd.run),
            ("4", "reap and status at 0 to 10,000 leases", scale.run),
            (
                "8",
                "growth: sessions from distinct addresses through the real hook",
                functools.partial(growth.run, sessions=args.growth),
            ),  # fmt: skip
        )
        for key, what, fn in plan:
            if key in wanted or (key == "4" and "5" in wanted):
                got = _measure(key, what, fn, args.quick)
                rows.extend(r for r in got if r.key[0] in wanted or r.met == ERROR)
        close_default()
        if "6" in wanted:
            what = "deadline precision on booted machines"
            if args.quick:
                rows.append(Row("6", what, "-", "-", "-", "-", NOT_RUN, ("--quick boots no machine",)))
            elif image is None:
                rows.append(_error_row("6", what, system_error or "no image"))
            else:
                _progress(f"row 6: {what}, {len(system.DEADLINE_RUNS)} machines at once")
                start = time.monotonic()
                rows.extend(system.deadline_rows(system.run_deadlines(image)))
                _progress(f"row 6: done in {time.monotonic() - start:.0f} s")
        if "7" in wanted:
            what = "wake-ups while idle"
            if args.quick:
                rows.append(Row("7", what, "-", "-", "-", "-", NOT_RUN, ("--quick boots no machine",)))
            elif watch is None:
                rows.append(_error_row("7", what, system_error or "no image"))
            else:
                _progress("row 7: waiting for the idle watch to end")
                rows.extend(watch.rows())
    finally:
        if watch is not None:
            watch.stop()  # its machine must be gone before the image goes
        if image_cm is not None:
            image_cm.__exit__(None, None, None)
        shutil.rmtree(deb_dir, ignore_errors=True)
    header.append(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")
    title = "idle-reaper benchmarks (issue 6)"
    if args.quick:
        title += " -- QUICK MODE: tiny counts, the figures mean nothing and no target is judged"
        for row in rows:
            if row.met in (YES, NO):
                row.met = QUICK

    rows.sort(key=lambda r: int(r.key[0]))  # in the order of the rows (8 runs before 6 and 7); stable within
    print("\n".join([title, "", *header, ""]))
    print(table.render(rows))
    return 1 if any(r.met == ERROR for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
