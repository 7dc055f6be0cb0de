"""The package's life in a debootstrapped root, as in an image build (no systemd running): install, reinstall,
upgrade, remove, purge. And once on a booted systemd: a live install starts the timer, runs no reap.

Every test runs once on each supported Debian (bookworm and trixie: the `suite` fixture), with the one .deb that
`make deb` builds. Each gets its own overlay over the suite's cached rootfs (tests/debroot.py), so each starts
from a clean Debian; tests of what an install leaves, or of what comes after it, start from an overlay over that
root with the package installed once per run (`installed`).
"""

import hashlib
import json
import os
import shlex
import subprocess
import time

import pytest

from tests import debroot
from tests.package.conftest import PT_INTERP, PT_LOAD, apt_install, elf_segment_types, put, sh

# What pam_exec runs: the static launcher, which execs `/usr/bin/python3 -I -S` on the Python hook in
# /usr/share/idle-reaper/hooks/pam-session with a fixed environment.
LAUNCHER = "/usr/libexec/idle-reaper/pam-session"
HOOK_LINE = f"session\toptional\tpam_exec.so quiet {LAUNCHER}"
PAM_DIR = "etc/pam.d"
UNIT_DIR = "/usr/lib/systemd/system"
OLD_UNIT_DIRS = ("/lib/systemd/system", "/lib/systemd")  # where bookworm's debhelper put the units
ALL_UNITS = sorted(["idle-reaper.service", "idle-reaper.timer", "idle-reaper.path", "idle-reaper-action.service"])
UNITS = " ".join(f"{UNIT_DIR}/idle-reaper{suffix}" for suffix in (".service", ".timer", ".path"))
TIMER_LINK = "etc/systemd/system/timers.target.wants/idle-reaper.timer"
# What dpkg, apt and debconf keep for themselves (logs, caches, backups of their databases): not ours.
BOOKKEEPING = ("var/log/", "var/cache/apt/", "var/lib/apt/", "var/lib/dpkg/status", "var/cache/debconf/")
NOT_FILES = ("proc", "sys", "dev", "run", "tmp")
LATE_INSTALL = 17  # seconds after boot


def _pam_lines(root):
    """Return {pam.d file: [lines that run the hook]}."""
    found = {}
    for path in sorted((root / PAM_DIR).iterdir()):
        lines = [line for line in path.read_text().splitlines() if "idle-reaper" in line]
        if lines:
            found[path.name] = lines
    return found


def _warnings(output):
    """Return the lines of apt's and dpkg's output that warn (`W: ...`, `dpkg: warning: ...`)."""
    return [line for line in output.splitlines() if line.startswith("W: ") or "warning:" in line]


def _snapshot(root):
    """Return {path: (mode, content hash or link target)} for the whole tree but the API file systems."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel.split(os.sep)[0] in NOT_FILES:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if os.path.islink(path):
                what = os.readlink(path)
            elif os.path.isfile(path) and rel.split(os.sep)[0] in ("etc", "var"):
                with open(path, "rb") as f:
                    what = hashlib.sha256(f.read()).hexdigest()
            else:
                what = None
            out[os.path.relpath(path, root)] = (st.st_mode, what)
    return out


def test_install_adds_the_hook_to_common_session_only(installed, deb):
    assert _pam_lines(installed) == {"common-session": [HOOK_LINE]}


def test_install_in_a_chroot_enables_the_timer_and_runs_no_reap(root, deb):
    (path,) = put(root, deb)
    # One run: nspawn gives /run a fresh tmpfs each time, and tmpfiles made the state dir in this one.
    out = sh(
        root, f"{apt_install(path)} >/dev/null; stat -c '%a %U %G' /run/idle-reaper; ls -A /run/idle-reaper"
    ).stdout
    assert out.splitlines() == ["755 root root", "inhibitors"], "the state dir exists, empty: no tick ran"
    assert (root / TIMER_LINK).resolve(strict=False).name == "idle-reaper.timer"
    wants = [p.name for p in (root / "etc/systemd/system").rglob("idle-reaper*")]
    assert sorted(wants) == ["idle-reaper.path", "idle-reaper.timer"], "the timer and the path unit, not the service"


def test_installed_commands_run_under_debian_python(installed, deb):
    out = sh(
        installed, "idle-reaper --version; idle-reaper check-config; idle-reaper status; idle-reaper status --json"
    )
    lines = out.stdout.splitlines()
    assert lines[0] == f"idle-reaper {deb.version.split('+')[0]}"
    assert lines[1] == "/etc/idle-reaper/config.yaml: ok (inactivity_duration off)"
    assert lines[2].startswith("State:     disabled")
    status = json.loads(out.stdout[out.stdout.index("{") :])
    assert status["state"] == "disabled" and status["inactivity_duration"] is None and status["sessions"] == []
    # Under the suite's own libraries (bookworm's filelock is 3.9, trixie's 3.18, neither PyPI's 4.x), and
    # byte-compiled at install for the suite's Python (3.11, 3.13).
    code = "import filelock, sys, yaml; print(filelock.__version__, yaml.__file__, sys.implementation.cache_tag)"
    version, yaml_file, cache_tag = sh(installed, f"python3 -I -c '{code}'").stdout.split()
    debian = sh(installed, "dpkg-query -W -f '${Version}' python3-filelock").stdout
    assert debian.startswith(version + "-"), (version, debian)
    assert yaml_file.startswith("/usr/lib/python3/dist-packages/"), yaml_file
    assert list((installed / "usr/share/idle-reaper/reaper/__pycache__").glob(f"cli.{cache_tag}.pyc")), cache_tag
    man = sh(installed, "test -f /usr/share/man/man8/idle-reaper.8.gz && echo ok")
    assert man.stdout.strip() == "ok"


def test_installed_hook_records_a_session_as_pam_exec_runs_it(installed, deb):
    # pam_exec's environment: no PATH, no HOME. The launcher runs the hook as installed, and the parent is
    # this shell, not an sshd monitor: the hook still records the lease, which is what shows that the launcher
    # finds the hook and the hook its private package.
    env = (
        "env -i PAM_TYPE=open_session PAM_USER=root PAM_SERVICE=sshd PAM_RHOST=192.0.2.7 PAM_TTY=ssh"
        " SSH_CONNECTION='192.0.2.7 40000 192.0.2.1 22'"
    )
    out = sh(
        installed,
        f"{env} {LAUNCHER}; echo rc=$?; cat /run/idle-reaper/state.json",
    )
    rc, state = out.stdout.split("\n", 1)
    assert rc == "rc=0"
    leases = json.loads(state)["leases"]
    assert [(lease["user"], lease["service"], lease["rhost"]) for lease in leases] == [("root", "sshd", "192.0.2.7")]


def test_installed_launcher_is_static(installed, deb):
    launcher = installed / LAUNCHER.lstrip("/")
    assert os.stat(launcher).st_mode & 0o7777 == 0o755
    segments = elf_segment_types(launcher)
    assert PT_LOAD in segments, segments
    # No PT_INTERP: the kernel starts no dynamic loader, so nothing reads LD_PRELOAD and its kind.
    assert PT_INTERP not in segments, f"{LAUNCHER} is dynamically linked: {segments}"
    # The check can tell: the interpreter it execs is dynamically linked.
    assert PT_INTERP in elf_segment_types(installed / "usr/bin/python3")


# A library a user could name in ~/.pam_environment (`LD_PRELOAD DEFAULT=...`): when a dynamic loader loads
# it into a root process, its constructor leaves a marker.
PRELOAD_SOURCE = r"""
#include <fcntl.h>
#include <unistd.h>

__attribute__((constructor)) static void mark(void)
{
    if (geteuid() != 0)
        return;
    int fd = open(MARKER, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
        (void)write(fd, "root\n", 5);
        close(fd);
    }
}
"""
PRELOAD = "/var/tmp/user-preload.so"
MARKER = "/var/tmp/preload-ran-as-root"


@pytest.fixture
def preload_library(installed, tmp_path):
    """Build the marker library with the host's gcc into the root's /var/tmp (bookworm's glibc: trixie's loads it)."""
    source = tmp_path / "preload.c"
    source.write_text(PRELOAD_SOURCE)
    cmd = ["gcc", "-shared", "-fPIC", "-Wall", "-Werror", f'-DMARKER="{MARKER}"', "-o", str(installed / PRELOAD[1:])]
    subprocess.run([*cmd, str(source)], check=True, env={"PATH": debroot.SYSTEM_PATH})  # noqa: S603
    return installed / MARKER[1:]


@pytest.mark.parametrize("pam_type", ["open_session", "close_session"])
def test_installed_launcher_keeps_the_users_ld_preload_from_root(installed, deb, preload_library, pam_type):
    marker = preload_library
    # As pam_exec runs it at close_session on Debian's sshd stack: the PAM items and PAM_TYPE, plus the
    # user's ~/.pam_environment (pam_env user_readenv=1). No PATH, no HOME. Its parent is not an sshd, so
    # the hook may record nothing; what counts is that the library never ran as root.
    env = {
        "LD_PRELOAD": PRELOAD,
        "PAM_TYPE": pam_type,
        "PAM_USER": "root",
        "PAM_SERVICE": "sshd",
        "PAM_RHOST": "192.0.2.7",
        "PAM_TTY": "ssh",
        "SSH_CONNECTION": "192.0.2.7 40000 192.0.2.1 22",
    }
    pam_exec = "env -i " + " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
    out = sh(installed, f"{pam_exec} {LAUNCHER}; echo rc=$?").stdout
    assert out.splitlines()[-1] == "rc=0"
    assert not marker.exists(), f"{PRELOAD} ran as root through {LAUNCHER}"
    # The same environment given to the interpreter directly, as the old PAM line did: the library runs as
    # root. So the test can fail, and the launcher is what keeps it out.
    out = sh(installed, f"{pam_exec} /usr/bin/python3 -I -S -c pass; echo rc=$?").stdout
    assert out.splitlines()[-1] == "rc=0"
    assert marker.read_text() == "root\n"


def test_units_verify_clean_as_installed(installed, deb):
    out = sh(
        installed, f"systemd-analyze verify --man=no {UNITS} 2>/var/tmp/verify.err; echo rc=$?; cat /var/tmp/verify.err"
    )
    assert out.stdout == "rc=0\n", out.stdout


def test_config_written_before_the_install_is_kept_with_force_confold(root, deb):
    # An image build that lays down its config first: without --force-confold, dpkg would ask about the conffile
    # and, with no terminal, fail the install (README.md, "Install in a base image").
    (path,) = put(root, deb)
    (root / "etc/idle-reaper").mkdir()
    (root / "etc/idle-reaper/config.yaml").write_text("inactivity_duration: 2h\n")
    sh(root, f"apt-get install -y -q -o Dpkg::Options::=--force-confold {path} </dev/null")
    assert (root / "etc/idle-reaper/config.yaml").read_text() == "inactivity_duration: 2h\n"
    assert sorted(p.name for p in (root / "etc/idle-reaper").iterdir()) == ["config.yaml", "config.yaml.dpkg-dist"]
    assert _pam_lines(root) == {"common-session": [HOOK_LINE]}


def test_reinstall_changes_nothing(installed, deb):
    (path,) = put(installed, deb)
    before = _snapshot(installed)
    sh(installed, f"apt-get install -y -q --reinstall {path}")
    after = _snapshot(installed)
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p) and not p.startswith(BOOKKEEPING)}
    # dpkg rewrites its own records and py3compile its byte code; nothing else moves.
    changed = {p for p in changed if not p.startswith("var/lib/dpkg/") and "__pycache__" not in p}
    assert changed == set()
    assert _pam_lines(installed) == {"common-session": [HOOK_LINE]}


def test_upgrade_keeps_an_edited_config(installed, deb, deb_upgrade):
    (new,) = put(installed, deb_upgrade)
    edited = "# ours\ninactivity_duration: 2h\nignore:\n  users: [dstack]\n"
    (installed / "etc/idle-reaper/config.yaml").write_text(edited)
    out = sh(installed, f"{apt_install(new)} </dev/null; dpkg-query -W -f '${{Version}}' idle-reaper")
    assert out.stdout.splitlines()[-1] == deb_upgrade.version
    assert (installed / "etc/idle-reaper/config.yaml").read_text() == edited
    assert not list((installed / "etc/idle-reaper").glob("*.dpkg-*")), "the conffile did not change: no prompt, no copy"
    assert _pam_lines(installed) == {"common-session": [HOOK_LINE]}
    assert (
        sh(installed, "idle-reaper check-config").stdout.strip()
        == "/etc/idle-reaper/config.yaml: ok (inactivity_duration 2h)"
    )
    assert (installed / TIMER_LINK).is_symlink()


def test_upgrade_from_units_in_lib_moves_them_to_usr_lib_and_loses_none(root, deb_units_in_lib, deb_upgrade):
    # A package built before the move (bookworm's debhelper: /lib/systemd/system). On trixie and a merged-/usr
    # bookworm both paths are one directory, so dpkg must see that the "old" /lib files are the new ones and
    # leave them: it compares inodes before it removes a file the new version no longer lists.
    old, new = put(root, deb_units_in_lib, deb_upgrade)
    sh(root, apt_install(old))
    assert "/lib/systemd/system/idle-reaper.timer" in sh(root, "dpkg -L idle-reaper").stdout.split()
    out = sh(root, f"{apt_install(new)} 2>&1 </dev/null")
    # On trixie no other package lists /lib/systemd/system, so dpkg tries to remove the old directories, and
    # can't: through the alias they are /usr/lib/systemd/system, where the new units already are. That once,
    # it warns; bookworm's systemd owns them, so there it doesn't try.
    kept = {f"dpkg: warning: unable to delete old directory '{d}': Directory not empty" for d in OLD_UNIT_DIRS}
    assert set(_warnings(out.stdout)) <= kept, out.stdout
    listed = [p for p in sh(root, "dpkg -L idle-reaper").stdout.split() if "/systemd/system/" in p]
    assert sorted(listed) == sorted(f"{UNIT_DIR}/{u}" for u in ALL_UNITS)
    present = sh(root, f"cd {UNIT_DIR} && ls {' '.join(ALL_UNITS)}").stdout.split()
    assert present == ALL_UNITS, "the upgrade lost units"
    assert sh(root, "test -f /etc/systemd/system/timers.target.wants/idle-reaper.timer && echo ok").stdout == "ok\n"
    out = sh(root, "apt-get purge -y -q idle-reaper 2>&1")
    assert _warnings(out.stdout) == [], "purge warned"
    assert not list((root / UNIT_DIR.lstrip("/")).glob("idle-reaper*"))


def test_remove_takes_the_hook_out_of_pam_and_keeps_the_config(installed, deb):
    (installed / "etc/idle-reaper/config.yaml").write_text("inactivity_duration: 1h\n")
    out = sh(installed, "apt-get remove -y -q idle-reaper 2>&1")
    # Not "directory '/lib/systemd/system' not empty so not removed", as on trixie with the units in /lib.
    assert _warnings(out.stdout) == []
    assert _pam_lines(installed) == {}
    assert (installed / "etc/idle-reaper/config.yaml").read_text() == "inactivity_duration: 1h\n"
    assert not (installed / "usr/share/idle-reaper").exists()
    assert not (installed / "usr/bin/idle-reaper").exists()
    status = sh(installed, "dpkg-query -W -f '${db:Status-Abbrev}' idle-reaper").stdout
    assert status.strip() == "rc"


def test_purge_leaves_nothing_behind(root, deb):
    (path,) = put(root, deb)
    before = _snapshot(root)
    # Install, use (the hook writes state), purge: all in one run, so /run is the same tmpfs throughout.
    hook = f"env -i PAM_TYPE=open_session PAM_USER=root PAM_SERVICE=sshd {LAUNCHER}"
    script = f"{apt_install(path)} >/dev/null; {hook}; echo used $(ls /run/idle-reaper)"
    out = sh(root, f"{script}; apt-get purge -y -q idle-reaper 2>&1; echo left $(ls -A /run)").stdout
    lines = dict(line.split(" ", 1) for line in out.splitlines() if line.startswith(("used ", "left ")))
    assert _warnings(out) == [], "purge warned"
    assert "state.json" in lines["used"].split()
    assert "idle-reaper" not in lines["left"].split()
    after = _snapshot(root)
    changed = {
        p
        for p in set(before) | set(after)
        if before.get(p) != after.get(p) and not p.startswith(BOOKKEEPING) and p != "var/tmp/" + os.path.basename(path)
    }
    assert changed == set(), "purge left these (or changed them from before the install)"
    assert sh(root, "dpkg -L idle-reaper", check=False).returncode != 0
    assert "idle-reaper" not in sh(root, "dpkg-query -W -f '${Package}\\n'").stdout.split()
    leftovers = sh(root, "grep -rl idle-reaper /etc /var/lib /usr /opt /srv || true").stdout.split()
    assert leftovers == []


def _boot(root):
    """Boot root under systemd-nspawn; return (nspawn process, pid of its systemd). Waits for `running`."""
    proc = subprocess.Popen(
        ["systemd-nspawn", "-q", "-D", str(root), "-b", "--register=no", "--keep-unit", "--console=passive"],
        env={"PATH": debroot.SYSTEM_PATH},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = subprocess.run(["pgrep", "-P", str(proc.pid), "-x", "systemd"], capture_output=True, text=True)
        if found.stdout.split():
            pid = found.stdout.split()[0]
            state = _inside(pid, "systemctl is-system-running --wait", check=False).stdout.strip()
            if state in ("running", "degraded"):
                return proc, pid
        time.sleep(0.2)
    proc.kill()
    pytest.fail("the container did not boot within 60 s")


def _inside(pid, script, check=True):
    done = subprocess.run(
        ["nsenter", "-t", pid, "-a", "env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "sh", "-euc", script],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check:
        assert done.returncode == 0, f"{script}\n{done.stdout}\n{done.stderr}"
    return done


def test_live_install_starts_the_timer_runs_no_reap_and_the_service_sees_the_hooks_boot(root, deb):
    (path,) = put(root, deb)
    # The rootfs enables sshd, which would listen on the host's port 22 (the container shares the network).
    (root / "etc/systemd/system/ssh.service").symlink_to("/dev/null")
    proc, pid = _boot(root)
    booted = time.monotonic()
    try:
        # Install later than 15 s after boot, as on a machine that has been up a while: a timer with a first
        # tick at OnBootSec=15s would elapse the moment the postinst starts it, and run a reap.
        time.sleep(max(0.0, booted + LATE_INSTALL - time.monotonic()))
        _inside(pid, f"DEBIAN_FRONTEND=noninteractive {apt_install(path)} >/dev/null; sleep 1")
        show = _inside(
            pid,
            "systemctl show idle-reaper.service idle-reaper.timer idle-reaper.path"
            " -p Id,ActiveState,UnitFileState,ExecMainStartTimestampMonotonic",
        )
        units = {}
        for block in show.stdout.strip().split("\n\n"):
            props = dict(line.split("=", 1) for line in block.splitlines())
            units[props["Id"]] = props
        timer, service = units["idle-reaper.timer"], units["idle-reaper.service"]
        assert (timer["ActiveState"], timer["UnitFileState"]) == ("active", "enabled")
        path_unit = units["idle-reaper.path"]
        assert (path_unit["ActiveState"], path_unit["UnitFileState"]) == ("active", "enabled")
        assert service["ActiveState"] == "inactive" and service["ExecMainStartTimestampMonotonic"] == "0"
        assert _inside(pid, "journalctl -q -t idle-reaper --no-pager").stdout == ""
        # A tick as the timer runs it works in the hardened unit, and its sandbox (a /proc of its own, which
        # shows the host's boot id, not the one nspawn overlays) names the boot as the hook does in sshd's
        # context: status reports the boot as each reads it.
        dropin = root / "etc/systemd/system/idle-reaper.service.d"
        dropin.mkdir(parents=True)
        (dropin / "boot.conf").write_text(
            "[Service]\nExecStartPre=/bin/sh -c '/usr/bin/idle-reaper status --json > /run/idle-reaper/seen.json'\n"
        )
        _inside(pid, "systemctl daemon-reload; systemctl start idle-reaper.service")
        sandboxed = json.loads(_inside(pid, "cat /run/idle-reaper/seen.json").stdout)["boot"]
        outside = json.loads(_inside(pid, "/usr/bin/idle-reaper status --json").stdout)["boot"]
        assert sandboxed == outside and sandboxed.startswith("pidns:"), (sandboxed, outside)
        assert "disabled" in _inside(pid, "journalctl -q -t idle-reaper --no-pager -o cat").stdout
        # The unit's UMask=0077 leaves the modes DESIGN.md gives, which the code sets itself.
        modes = _inside(pid, "cd /run/idle-reaper && stat -c '%n %a %U' . state.json state.lock").stdout
        assert modes.split("\n")[:3] == [". 755 root", "state.json 644 root", "state.lock 600 root"]
    finally:
        _inside(pid, "systemctl poweroff", check=False)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
