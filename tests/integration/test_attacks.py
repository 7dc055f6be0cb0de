"""Attacks, for real (issue 9): a user's ~/.pam_environment against the root hook, and strangers and impostors
against the live check.

The hook sits where pam-auth-update puts it, in common-session, under Debian's stock /etc/pam.d/sshd: there
pam_loginuid runs before it and `pam_env user_readenv=1` after it, so the close hook's environment holds
whatever the user wrote in ~/.pam_environment. A control test runs the same attack against the old PAM line
(python run directly by pam_exec) and shows it works there, so the tests that say "no trace" can fail.
"""

import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from typing import NamedTuple

import pytest

from tests.conftest import HOOK, REPO, SYSTEM_PYTHON, cli_env
from tests.integration.attacker import (
    FailedLogin,
    Impostor,
    build_library,
    home,
    markers,
    mid_key_exchange,
    no_banner,
    owned_by_root,
    remove_markers,
    user_dir,
    user_file,
    write_pam_environment,
)
from tests.integration.sshd import VENV_PYTHON, Sshd, Users, end, idle_reaper, status, wait_for

MALLORY = "irt-atk-mallory"  # the attacker, with a key of her own: an ordinary user of the machine
VICTIM = "irt-atk-victim"  # another real account, whose name and key she forges
IMPOSTOR_USER = "irt-atk-imp"
MADE_UP = "irt-atk-nobody"  # no such account
FORGED_RHOST = "203.0.113.9"
FORGED_PORT = 4444
FORGED_CONN = f"{FORGED_RHOST} {FORGED_PORT} 127.0.0.1 22"
HOSTILE = "irt-atk-\x1b]0;owned\x07\x1b[2J\x1b[31mevil"  # a terminal title, a cleared screen, red
CONTROL_CHARS = "\x1b\x07\r"
FORGED_SERVICE = "irt-atk-service"
FORGED_TTY = "irt-atk-tty"
READY = "ready"
HOLD = f"echo {READY}; read x"
IDLE_CONFIG = 'inactivity_duration: 1s\nmin_session: 1s\naction: ["/bin/true"]\n'


@pytest.fixture(scope="module")
def atk_users():
    if os.geteuid() != 0:
        pytest.fail("the attack tests need root: they run a real sshd and make test users")
    made = Users([MALLORY, VICTIM, IMPOSTOR_USER, "root"])
    yield made
    made.remove()


@pytest.fixture(scope="module")
def marker_prefix():
    return f"/var/tmp/irt-atk-marker-{os.getpid()}-"


@pytest.fixture(scope="module")
def library(marker_prefix):
    d = tempfile.mkdtemp(prefix="irt-atk-lib-")
    yield build_library(d, marker_prefix)
    shutil.rmtree(d, ignore_errors=True)


class Libraries(NamedTuple):
    preload: str  # for LD_PRELOAD
    audit: str  # the same library under another name, for LD_AUDIT, so each mark tells which variable did it


# What a root process that honoured both leaves: each library's constructor ran, and the auditor was asked.
ALL_MARKS = ["audit-libirtaudit.so", "ctor-libirtatk.so", "ctor-libirtaudit.so"]


@pytest.fixture
def mallory(atk_users, library, marker_prefix):
    """Mallory with the marking library in her home. Afterwards her home is as it was and no mark is left."""
    remove_markers(marker_prefix)
    before = set(os.listdir(home(MALLORY)))
    assert owned_by_root(home(MALLORY)) == [], "root-owned files in the attacker's home before the attack"
    yield Libraries(user_file(MALLORY, "lib/libirtatk.so", copy_from=library),
                    user_file(MALLORY, "lib/libirtaudit.so", copy_from=library))  # fmt: skip
    remove_markers(marker_prefix)
    for name in set(os.listdir(home(MALLORY))) - before:
        path = os.path.join(home(MALLORY), name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


@pytest.fixture
def debian_sshd(atk_users, state_dir):
    """sshd with Debian's stock stack and the hook in common-session; its syslog is captured."""
    server = Sshd(atk_users, state_dir, placement="common-session", syslog=True, netns=True)
    yield server
    server.stop()


def forged_environment(libs, forged_user, atk_users, pam_type="open_session", conn=FORGED_CONN):
    """Mallory's ~/.pam_environment: her library for the loader, and another session's identity."""
    with open(atk_users[VICTIM].key + ".pub") as f:
        victim_key = f.read().split()[1]
    return {
        "LD_PRELOAD": libs.preload,
        "LD_AUDIT": libs.audit,
        "PAM_TYPE": pam_type,
        "PAM_USER": forged_user,
        "PAM_RHOST": FORGED_RHOST,
        "PAM_SERVICE": FORGED_SERVICE,
        "PAM_TTY": FORGED_TTY,
        "SSH_CONNECTION": conn,
        "SSH_AUTH_INFO_0": f"publickey ssh-ed25519 {victim_key}",
    }


def loader_variables(libs):
    """Every variable glibc 2.36 strips for setuid programs (sysdeps/generic/unsecvars.h, and the MALLOC_*
    aliases of its tunables), each set so that, honoured by a root process, it leaves a root-owned file in
    Mallory's home or a mark: the library preloaded by bare name through LD_LIBRARY_PATH and audited, the
    loader's debug output (lddebug.PID), a profile of libm (which python loads and the user's shell doesn't).
    The rest leave no trace the test can see, and are set to show they are dropped all the same."""
    h, lib = home(MALLORY), libs.preload
    for d in ("trace", "trace/profile", "trace/tmp"):
        user_dir(MALLORY, d)
    return {
        "LD_PRELOAD": os.path.basename(lib),
        "LD_LIBRARY_PATH": os.path.dirname(lib),
        "LD_AUDIT": libs.audit,
        "LD_DEBUG": "all",
        "LD_DEBUG_OUTPUT": f"{h}/trace/lddebug",
        "LD_PROFILE": "libm.so.6",
        "LD_PROFILE_OUTPUT": f"{h}/trace/profile",
        "LD_SHOW_AUXV": "1",
        "LD_DYNAMIC_WEAK": "1",
        "LD_HWCAP_MASK": "0",
        "LD_ORIGIN_PATH": os.path.dirname(lib),
        "LD_USE_LOAD_BIAS": "1",
        "GCONV_PATH": f"{h}/gconv",
        "GETCONF_DIR": f"{h}/getconf",
        "GLIBC_TUNABLES": "glibc.malloc.check=3:glibc.malloc.perturb=165",
        "HOSTALIASES": f"{h}/hostaliases",
        "LOCALDOMAIN": "irt-atk.invalid",
        "LOCPATH": f"{h}/locale",
        "MALLOC_TRACE": f"{h}/trace/mtrace",
        "NIS_PATH": f"{h}/nis",
        "NLSPATH": f"{h}/nls/%N",
        "RESOLV_HOST_CONF": f"{h}/host.conf",
        "RES_OPTIONS": "debug ndots:15",
        "TMPDIR": f"{h}/trace/tmp",
        "TZDIR": f"{h}/zoneinfo",
        "MALLOC_CHECK_": "3",
        "MALLOC_PERTURB_": "165",
        "MALLOC_MMAP_THRESHOLD_": "4096",
        "MALLOC_TOP_PAD_": "1",
        "MALLOC_TRIM_THRESHOLD_": "1",
        "MALLOC_MMAP_MAX_": "1",
        "MALLOC_ARENA_MAX": "1",
        "MALLOC_ARENA_TEST": "1",
    }


def accepted_ports(server, user=MALLORY):
    """The client ports of the user's accepted logins, from sshd's own log (LogLevel VERBOSE)."""
    pattern = rf"Accepted publickey for {re.escape(user)} from 127\.0\.0\.1 port (\d+) "
    return [int(p) for p in re.findall(pattern, server.read_log())]


def read_state(state_dir):
    with open(os.path.join(state_dir, "state.json")) as f:
        text = f.read()
    return text, json.loads(text)


def log_in_and_out(server, state_dir, command, wait=5):
    """Mallory logs in, runs `command` and logs out. Return (its output, her real client port, the record
    of that session once it is closed, or None if none closed within `wait` seconds)."""
    before = accepted_ports(server)
    done = server.run(MALLORY, command)
    assert done.returncode == 0, done.stderr
    (port,) = accepted_ports(server)[len(before) :]

    def closed():
        if not os.path.exists(os.path.join(state_dir, "state.json")):
            return None
        _, state = read_state(state_dir)
        return next((r for r in state["closed"] if r.get("client_port") == port), None)

    try:
        record = wait_for(closed, timeout=wait)
    except AssertionError:
        record = None
    return done.stdout, port, record


def assert_recorded_as_mallory(state_dir, server, port, record):
    text, state = read_state(state_dir)
    assert record is not None, f"no closed record for the real client port {port}: {text}"
    uid = pwd.getpwnam(MALLORY).pw_uid
    got = {k: record.get(k) for k in ("user", "uid", "client", "client_port", "server_port", "end")}
    assert got == {"user": MALLORY, "uid": uid, "client": "127.0.0.1", "client_port": port,
                   "server_port": server.port, "end": "hook"}, record  # fmt: skip
    assert (record.get("service"), record.get("rhost"), record.get("tty")) == ("sshd", "127.0.0.1", "ssh"), record
    assert record.get("opened") is not None, "the close was not matched to its open"
    assert state["leases"] == [], f"a lease is left open after the logout: {state['leases']}"


def ports_in(value):
    """Every value of a key naming a port, anywhere in a JSON document."""
    if isinstance(value, dict):
        for k, v in value.items():
            if "port" in k and isinstance(v, int):
                yield v
            yield from ports_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from ports_in(v)


DISBELIEF = "; not believed: "  # how the hook's log line names what the system contradicted


def assert_nothing_forged(forbidden, state_dir, config, server, disbelief=False):
    """No forged string in the state file, in `status --json`, or in the hook's syslog lines; no raw control
    character in any of them. With `disbelief`, a log line may quote a forged value (escaped) after saying
    it was not believed."""
    text, state = read_state(state_dir)
    syslog = server.syslog_lines()
    facts = [line.split(DISBELIEF, 1)[0] if disbelief else line for line in syslog]
    done = idle_reaper(config, state_dir, "status", "--json", enter=server.enter)
    assert done.returncode == 0, done.stderr
    for where, blob in (("state.json", text), ("status --json", done.stdout), ("syslog", "\n".join(facts))):
        for value in forbidden:
            assert value not in blob, f"the forged {value!r} reached {where}: {blob}"
    for where, blob in (("state.json", text), ("status --json", done.stdout), ("syslog", "".join(syslog))):
        assert not any(c in blob for c in CONTROL_CHARS), f"a raw control character reached {where}: {blob!r}"
    for where, doc in (("state.json", state), ("status --json", json.loads(done.stdout))):
        assert FORGED_PORT not in set(ports_in(doc)), f"the forged port reached {where}"
    for line in facts:
        message = line.split("]: ", 1)[-1]
        assert not re.search(rf"(?<!pid )(?<!\[)\b{FORGED_PORT}\b", message), f"the forged port reached syslog: {line}"
    assert json.loads(done.stdout)["sessions"] == []


# --- B: the real attack ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "forged_user", [VICTIM, MADE_UP, HOSTILE], ids=["another-real-user", "a-made-up-user", "escape-sequences"]
)
def test_a_users_pam_environment_runs_nothing_as_root_and_forges_nothing(
    debian_sshd, mallory, atk_users, config, state_dir, marker_prefix, forged_user
):
    forged = forged_environment(mallory, forged_user, atk_users)
    write_pam_environment(MALLORY, forged)
    out, port, record = log_in_and_out(debian_sshd, state_dir, "printenv LD_PRELOAD PAM_USER PAM_RHOST")
    # The attack is live: pam_env read her file into the PAM environment (sshd hands it to her session too).
    assert out.splitlines() == [mallory.preload, forged_user, FORGED_RHOST]
    assert markers(marker_prefix) == {}, "the user's library ran as root"
    assert owned_by_root(home(MALLORY)) == []
    assert_recorded_as_mallory(state_dir, debian_sshd, port, record)
    assert record.get("key") == atk_users[MALLORY].fingerprint
    syslog = debian_sshd.syslog_lines()
    assert any(MALLORY in line for line in syslog), f"the hook logged nothing about the session: {syslog}"
    forbidden = [forged_user, FORGED_RHOST, FORGED_CONN, FORGED_SERVICE, FORGED_TTY, atk_users[VICTIM].fingerprint,
                 forged["SSH_AUTH_INFO_0"].split()[2]]  # fmt: skip
    assert_nothing_forged(forbidden, state_dir, config.path, debian_sshd)


def test_no_loader_variable_glibc_strips_for_setuid_programs_reaches_the_hook(
    debian_sshd, mallory, config, state_dir, marker_prefix
):
    write_pam_environment(MALLORY, loader_variables(mallory))
    _, port, record = log_in_and_out(debian_sshd, state_dir, "true")
    # Her own processes honoured them (as they may): the loader wrote its debug output as her.
    assert any(n.startswith("lddebug.") for n in os.listdir(os.path.join(home(MALLORY), "trace")))
    assert markers(marker_prefix) == {}, "the user's library ran as root"
    assert owned_by_root(home(MALLORY)) == [], "a root process honoured the user's loader variables"
    assert_recorded_as_mallory(state_dir, debian_sshd, port, record)


@pytest.mark.parametrize("attack", ["forged-pam-environment", "loader-variables"])
def test_control_without_the_launcher_the_same_attack_runs_the_users_library_as_root(
    atk_users, mallory, state_dir, marker_prefix, attack
):
    """The old PAM line, pam_exec running python itself: the attacks above do work there."""
    old_line = f"session optional pam_exec.so quiet {SYSTEM_PYTHON} -I -S {HOOK} --state-dir {state_dir}"
    server = Sshd(atk_users, state_dir, hook_line=old_line, placement="common-session", netns=True)
    try:
        if attack == "forged-pam-environment":
            write_pam_environment(MALLORY, forged_environment(mallory, MADE_UP, atk_users))
        else:
            write_pam_environment(MALLORY, loader_variables(mallory))
        # Python run directly takes the first of each duplicated name, her PAM_TYPE=open_session among them, so
        # what it records is beside the point here.
        log_in_and_out(server, state_dir, "true", wait=0)
        # The close hook runs as the monitor ends, just after the client is gone.
        found = wait_for(lambda: len(markers(marker_prefix)) >= len(ALL_MARKS) and markers(marker_prefix), timeout=10)
        # LD_AUDIT, and LD_PRELOAD (by path, or by bare name through LD_LIBRARY_PATH), in the hook.
        assert sorted(found) == ALL_MARKS, found
        assert all(str(HOOK) in cmdline for cmdline in found.values()), found
        if attack == "loader-variables":
            left = [os.path.relpath(p, home(MALLORY)) for p in owned_by_root(home(MALLORY))]
            assert any(p.startswith("trace/lddebug.") for p in left), left  # LD_DEBUG + LD_DEBUG_OUTPUT
            assert "trace/profile/libm.so.6.profile" in left, left  # LD_PROFILE + LD_PROFILE_OUTPUT
    finally:
        server.stop()
        remove_markers(marker_prefix)
    assert markers(marker_prefix) == {}


@pytest.mark.parametrize(
    "conn", [FORGED_CONN, FORGED_CONN + HOSTILE], ids=["a-plausible-connection", "escape-sequences"]
)
def test_values_forged_before_the_open_hook_are_not_recorded_but_named_once_escaped(
    atk_users, mallory, config, state_dir, marker_prefix, conn
):
    """The hook line at the end of the sshd file, after pam_env: the open hook too sees her variables (and
    a forged PAM_TYPE of close_session). The socket contradicts her SSH_CONNECTION: the open says so once.

    Her key is not checked here: SSH_AUTH_INFO_0 is the one claim nothing on the system confirms, and this
    placement hands it to her at open (pam-auth-update's placement, above, does not)."""
    server = Sshd(atk_users, state_dir, placement="service", syslog=True, netns=True)
    try:
        write_pam_environment(MALLORY, forged_environment(mallory, VICTIM, atk_users, "close_session", conn))
        _, port, record = log_in_and_out(server, state_dir, "true")
        assert markers(marker_prefix) == {}, "the user's library ran as root"
        assert_recorded_as_mallory(state_dir, server, port, record)
        forbidden = [VICTIM, FORGED_RHOST, FORGED_CONN, FORGED_SERVICE, FORGED_TTY]
        assert_nothing_forged(forbidden, state_dir, config.path, server, disbelief=True)
        lines = [line for line in server.syslog_lines() if MALLORY in line]
        disbelieved = [line for line in lines if DISBELIEF in line]
        assert len(lines) == 2 and len(disbelieved) == 1 and "session opened" in disbelieved[0], lines
        assert "SSH_CONNECTION" in disbelieved[0].split(DISBELIEF, 1)[1], disbelieved
    finally:
        server.stop()


def test_a_close_forged_in_another_users_name_ends_only_the_attackers_own_session(
    debian_sshd, mallory, atk_users, config, state_dir
):
    """Mallory names the victim's live session (user, client, port) at her close: his stays open and counts."""
    victim = debian_sshd.start(VICTIM, HOLD, ready=READY)
    (victim_port,) = accepted_ports(debian_sshd, VICTIM)
    conn = f"127.0.0.1 {victim_port} 127.0.0.1 {debian_sshd.port}"
    forged = {**forged_environment(mallory, VICTIM, atk_users, "close_session", conn), "PAM_RHOST": "127.0.0.1"}
    write_pam_environment(MALLORY, forged)
    _, port, record = log_in_and_out(debian_sshd, state_dir, "true")
    _, state = read_state(state_dir)
    assert record is not None and record["user"] == MALLORY and record["client_port"] == port, state
    assert [(r["user"], r["client_port"]) for r in state["leases"]] == [(VICTIM, victim_port)], state
    assert [r["user"] for r in state["closed"]] == [MALLORY], state
    time.sleep(1.1)  # min_session
    st = status(config.path, state_dir, enter=debian_sshd.enter)
    assert st["state"] == "active" and [(s["user"], s["counted"]) for s in st["sessions"]] == [(VICTIM, True)], st
    end(victim)
    wait_for(lambda: read_state(state_dir)[1]["leases"] == [])
    assert [r["user"] for r in read_state(state_dir)[1]["closed"]] == [MALLORY, VICTIM]


def test_a_pam_session_that_is_not_sshds_never_counts(atk_users, config, state_dir, workdir):
    """su runs common-session too, with our line in it. Its session is recorded as the PAM service it is (su,
    as pam_exec gives it, which no user can change), and it never counts: services lists sshd only."""
    from tests.integration.sshd import hook_pam_line, pam_dir_with

    pam_d = pam_dir_with(os.path.join(workdir, "pam.d"), hook_pam_line(state_dir), "common-session")
    script = 'mount --bind "$1" /etc/pam.d && exec su -s /bin/sh -c "echo ready; read x" "$2"'
    su = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", pam_d, MALLORY],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert su.stdout.readline().strip() == READY, su.stderr.read()
        st = status(config.path, state_dir)
        theirs = [s for s in st["sessions"] if s["service"] == "su"]
        assert theirs and all(not s["counted"] and s["reason"] == "service su is not in services" for s in theirs)
        assert st["state"] != "active", st
        su.communicate("\n", timeout=10)
    finally:
        if su.poll() is None:
            su.kill()
            su.wait()
    _, state = read_state(state_dir)
    assert state["leases"] == [], "the close matched the open"


# --- C and D: strangers and impostors --------------------------------------------------------------------


def reaper_as_the_unit(config, state_dir, *args, enter=()):
    """The CLI as idle-reaper.service runs it: root with CAP_SYS_PTRACE as its only capability."""
    argv = [*enter, "setpriv", "--bounding-set", "-all,+sys_ptrace", "--inh-caps", "-all", VENV_PYTHON, "-m", "reaper",
            "--config", config, "--state-dir", state_dir, *args]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO, env=cli_env())  # noqa: S603


def assert_no_session_and_it_would_act(config, state_dir, enter):
    """Idle long past the deadline: no session, not unknown, not blocked, and a tick would run the action."""
    for who, done in (
        ("root", idle_reaper(config, state_dir, "status", "--json", enter=enter)),
        ("the unit", reaper_as_the_unit(config, state_dir, "status", "--json", enter=enter)),
    ):
        assert done.returncode == 0, f"status as {who}: {done.stderr}"
        st = json.loads(done.stdout)
        assert st["sessions"] == [], f"status as {who} shows a session: {st['sessions']}"
        assert (st["state"], st["blocked"]) == ("idle", None), f"status as {who}: {st}"
        assert st["live_check"]["complete"], f"status as {who}: {st['live_check']}"
    for who, done in (
        ("root", idle_reaper(config, state_dir, "reap", "--dry-run", enter=enter)),
        ("the unit", reaper_as_the_unit(config, state_dir, "reap", "--dry-run", enter=enter)),
    ):
        assert done.returncode == 0, f"reap --dry-run as {who} exited {done.returncode}: {done.stderr}"
        assert "would run" in done.stderr, f"reap --dry-run as {who}: {done.stderr}"
    assert not os.path.exists(os.path.join(state_dir, "state.json")) or read_state(state_dir)[1]["leases"] == []


@pytest.fixture(params=[None, 0], ids=["listener-without-loginuid", "listener-with-loginuid-0"])
def open_sshd(request, atk_users, state_dir):
    """sshd with the hook that also takes passwords (so a login can fail). Its listener has no loginuid (as
    under systemd) or root's (as one started by hand from a root login), which every monitor inherits."""
    server = Sshd(atk_users, state_dir, config="PasswordAuthentication yes", loginuid=request.param, netns=True)
    yield server
    server.stop()


@pytest.fixture
def plain_sshd(atk_users, state_dir):
    server = Sshd(atk_users, state_dir, netns=True)
    yield server
    server.stop()


class Stranger:
    """One connection to sshd that never becomes a session, held until stop()."""

    def __init__(self, kind, server, workdir):
        self.kind, self.sock, self.client = kind, None, None
        if kind == "no-banner":
            self.sock = no_banner(server)
        elif kind == "mid-key-exchange":
            self.sock = mid_key_exchange(server)
        else:
            self.client = FailedLogin(workdir, server, MALLORY)
            wait_for(self.client.waiting_again, timeout=20)
            assert f"Failed password for {MALLORY} from 127.0.0.1" in server.read_log()
        time.sleep(0.2)  # settled: sshd's processes for it are all there

    def stop(self):
        if self.sock:
            self.sock.close()
        if self.client:
            self.client.stop()


@pytest.mark.parametrize("kind", ["no-banner", "mid-key-exchange", "failed-password"])
def test_a_strangers_connection_is_no_session_and_the_idle_machine_still_acts(
    open_sshd, config, state_dir, workdir, kind
):
    config(IDLE_CONFIG)
    stranger = Stranger(kind, open_sshd, workdir)
    try:
        assert_no_session_and_it_would_act(config.path, state_dir, open_sshd.enter)
    finally:
        stranger.stop()


@pytest.mark.parametrize("dumpable", [True, False], ids=["dumpable", "non-dumpable"])
@pytest.mark.parametrize("mode", ["client", "own"], ids=["client-of-the-real-sshd", "its-own-listener"])
def test_a_users_program_named_sshd_is_no_session_and_the_idle_machine_still_acts(
    plain_sshd, config, state_dir, mode, dumpable
):
    config(IDLE_CONFIG)
    impostor = Impostor(IMPOSTOR_USER, mode, dumpable, plain_sshd)
    try:
        assert impostor.status["Name"] == "sshd"
        owner = os.stat(f"/proc/{impostor.proc.pid}/fd").st_uid  # a non-dumpable process's entries are root's
        assert owner == (pwd.getpwnam(IMPOSTOR_USER).pw_uid if dumpable else 0)
        assert_no_session_and_it_would_act(config.path, state_dir, plain_sshd.enter)
    finally:
        impostor.stop()


def test_strangers_and_impostors_do_not_hide_a_real_session(open_sshd, config, state_dir, workdir):
    """The check is not blind: beside all of them, one real login is the one session, and it counts."""
    config(IDLE_CONFIG)
    held = [Stranger(kind, open_sshd, workdir) for kind in ("no-banner", "mid-key-exchange", "failed-password")]
    held += [Impostor(IMPOSTOR_USER, mode, False, open_sshd) for mode in ("client", "own")]
    try:
        client = open_sshd.start(MALLORY, HOLD, ready=READY)
        time.sleep(1.1)  # min_session
        st = status(config.path, state_dir, enter=open_sshd.enter)
        assert [(s["user"], s["counted"]) for s in st["sessions"]] == [(MALLORY, True)], json.dumps(st["sessions"])
        assert st["state"] == "active"
        end(client)
        wait_for(lambda: status(config.path, state_dir, enter=open_sshd.enter)["sessions"] == [])
        time.sleep(1.1)  # inactivity_duration
        assert_no_session_and_it_would_act(config.path, state_dir, open_sshd.enter)
    finally:
        for h in held:
            h.stop()


# --- E: the interlock still sees every logged-in session -------------------------------------------------

# Sessions the hook never recorded (an sshd without it; the same holds for a state file lost under them), in the
# shapes the live check's proofs of a login must each cover: a user's session child, a loginuid the listener
# lacks, a root login's title.
UNRECORDED = {
    # started from a root shell: every monitor inherits loginuid 0, so for root it proves nothing
    "forwarding-only-listener-with-loginuid-0": dict(loginuid=0, command=(), options=["-N"], restart=False),
    "a-command-listener-with-loginuid-0": dict(loginuid=0, command=(HOLD,), options=[], restart=False),
    # `systemctl restart ssh`: the session lives on, its monitor now a child of PID 1
    "a-command-after-the-listener-restarted": dict(loginuid=None, command=(HOLD,), options=[], restart=True),
}


@pytest.mark.parametrize("user", [MALLORY, "root"])
@pytest.mark.parametrize("case", list(UNRECORDED))
def test_an_unrecorded_login_still_stops_the_action(atk_users, config, state_dir, workdir, case, user):
    spec = UNRECORDED[case]
    marker = os.path.join(workdir, "acted")
    config(f'inactivity_duration: 1s\nmin_session: off\naction: ["/bin/sh", "-c", "echo ran >> {marker}"]\n')
    server = Sshd(atk_users, state_dir, hook_line=False, loginuid=spec["loginuid"], syslog=True, netns=True)
    try:
        client = server.start(user, *spec["command"], ready=READY if spec["command"] else None,
                              options=spec["options"])  # fmt: skip
        opened = f"session opened for user {user}"
        wait_for(lambda: any(opened in line for line in server.syslog_lines(None)), timeout=10)
        if spec["restart"]:
            (monitor,) = server.processes()
            server.restart_listener(monitor)
        st = status(config.path, state_dir, enter=server.enter)
        assert st["state"] != "idle", f"a connected {user} is not seen: {st}"
        done = idle_reaper(config.path, state_dir, "reap", enter=server.enter)
        assert done.returncode == 4, done.stderr
        assert "not recorded by the hook" in done.stderr and user in done.stderr, done.stderr
        assert not os.path.exists(marker), "powered off under a connected user"
        end(client)
    finally:
        server.stop()


@pytest.mark.parametrize("loginuid", [None, 0], ids=["listener-without-loginuid", "listener-with-loginuid-0"])
def test_a_login_pam_loginuid_could_not_mark_is_recorded_as_who_logged_in(atk_users, mallory, config, state_dir,
                                                                          loginuid):  # fmt: skip
    """Without pam_loginuid (container images drop it: it fails without CAP_AUDIT_CONTROL), the monitor's
    loginuid is whatever its listener had: no login's, or the root shell's that started sshd. It says
    nothing about who logged in, and must not replace the user sshd authenticated."""
    server = Sshd(atk_users, state_dir, placement="common-session", syslog=True, loginuid=loginuid,
                  without=("pam_loginuid.so",), netns=True)  # fmt: skip
    try:
        _, port, record = log_in_and_out(server, state_dir, "true")
        assert_recorded_as_mallory(state_dir, server, port, record)
        lines = [line for line in server.syslog_lines() if "session" in line]
        assert not any(DISBELIEF in line for line in lines), lines
    finally:
        server.stop()
