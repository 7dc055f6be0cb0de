"""The stories the system tests tell, each on its own booted machine. They run concurrently (tests/system/conftest.py).

A scenario drives a machine through one story on the boot-relative clock and records what it saw: statuses read
inside, whether the machine was still up at each point, and when it powered off against its deadline. It asserts
only what it needs to go on (a login worked, a session showed up); the tests check the observations, so each test
fails with its own message.

The timer's first tick comes 15 s after boot (OnActiveSec=15s). With DURATION 20 s, a machine nobody uses is
judged by that tick, which sleeps until the deadline.
"""

import json
import os
import pathlib
import subprocess
import threading
import time
from types import SimpleNamespace

from tests import debroot
from tests.system.harness import ACTION_LOG, Image, Netns, Stranger, now

DURATION = 20  # inactivity_duration, seconds
MIN_SESSION = 5  # min_session, seconds
HOLD = DURATION + 10  # a session held longer than inactivity_duration
# A stale lease (monitor SIGKILLed, then the client left) ends when a tick first sees it dead; ticks come once a
# minute (OnUnitInactiveSec=60s), so that end can come up to this much after the client left.
TICK_PERIOD = 60

SCENARIOS = {}


def scenario(fn):
    SCENARIOS[fn.__name__] = fn
    return fn


def config(duration=f"{DURATION}s", min_session=f"{MIN_SESSION}s", extra=""):
    return f"inactivity_duration: {duration}\nmin_session: {min_session}\n{extra}"


def sleep_until(when):
    time.sleep(max(0.0, when - now()))


def session_of(status, user):
    """Return the sessions of `user` in a status dict."""
    return [s for s in status["sessions"] if s["user"] == user]


def _hold_then_close(image, opener):
    """Open a session with opener(machine), hold it HOLD seconds past the login, close it, watch the poweroff."""
    r = SimpleNamespace()
    with image.machine(config()) as m:
        m.boot()
        r.booted = m.booted
        session = opener(m)
        r.opened = now()
        sleep_until(r.opened + MIN_SESSION + 1)
        r.status_counted = m.status()
        sleep_until(r.opened + HOLD - 1)
        r.status_late = m.status()
        r.up_before_close = m.running
        r.boot_deadline = m.booted + DURATION  # long past by now: the session must have kept it up
        session.close()
        r.closed = session.closed_at
        r.up_after_close = m.running
        r.session_end = m.session_end("dev")
        r.timing = m.wait_poweroff(r.session_end + DURATION)
        r.journal = m.journal_text()
    return r


@scenario
def nobody_connects(image):
    """Boot and wait: the machine powers itself off DURATION after boot."""
    r = SimpleNamespace()
    with image.machine(config()) as m:
        m.boot()
        r.booted = m.booted
        sleep_until(m.booted + 5)
        r.status_asked = now()
        r.status = m.status()
        r.status_at = now()
        r.timing = m.wait_poweroff(m.booted + DURATION)
        r.journal = m.journal_text()
    return r


@scenario
def shell_session_held(image):
    return _hold_then_close(image, lambda m: m.ssh("dev"))


@scenario
def forward_only_held(image):
    return _hold_then_close(image, lambda m: m.forward("dev"))


@scenario
def control_master_held(image):
    return _hold_then_close(image, lambda m: m.control_master("dev", channels=3))


@scenario
def turned_off(image):
    """`inactivity_duration: off`: nobody connects, and the machine stays up well past when it would act."""
    r = SimpleNamespace()
    with image.machine(config("off")) as m:
        m.boot()
        sleep_until(m.booted + 2 * DURATION + 5)
        r.up = m.running
        r.status = m.status()
        r.journal = m.journal_text()
        m.stop()
        r.stopped_cleanly = m.returncode == 0
    return r


@scenario
def shortened_in_place(image):
    """Boot with 1h, then edit the config inside to DURATION: it powers off DURATION after boot, no restart."""
    r = SimpleNamespace()
    with image.machine(config("1h")) as m:
        m.boot()
        r.booted = m.booted
        r.status_before = m.status()
        sleep_until(m.booted + 2)
        m.write_config(config())
        r.status_after = m.status()
        r.timing = m.wait_poweroff(m.booted + DURATION)
        r.journal = m.journal_text()
    return r


@scenario
def turned_off_in_place(image):
    """Boot with 45s; once the first tick sleeps until the deadline, edit the config inside to off."""
    duration = DURATION + 25
    r = SimpleNamespace(duration=duration)
    with image.machine(config(f"{duration}s")) as m:
        m.boot()
        # The first tick comes 15 s after timers.target, which a loaded host reaches seconds after PID 1
        # starts: wait for the tick to be there rather than for a fixed time.
        give_up = m.booted + duration - 8
        r.tick_state_at_edit = ""
        while r.tick_state_at_edit != "activating" and now() < give_up:
            time.sleep(0.5)
            tick = m.inside(["systemctl", "show", "-P", "ActiveState", "idle-reaper.service"])
            r.tick_state_at_edit = tick.stdout.strip()
        time.sleep(1)  # the tick is past its first look, asleep until the deadline
        m.write_config(config("off"))
        sleep_until(m.booted + duration + 15)
        r.up = m.running
        r.status = m.status()
        r.journal = m.journal_text()
        m.stop()
    return r


@scenario
def ignored_user_connected(image):
    """A session of an ignored account (the control plane's) stays open: the machine powers off anyway."""
    r = SimpleNamespace()
    with image.machine(config(extra="ignore:\n  users: [probe]\n")) as m:
        m.boot()
        probe = m.ssh("probe")
        sleep_until(m.booted + MIN_SESSION + 3)
        r.status = m.status()
        r.timing = m.wait_poweroff(m.booted + DURATION)
        probe.proc.wait(30)  # the poweroff cut it
        r.probe_gone_at = now()
        r.journal = m.journal_text()
    return r


@scenario
def monitor_killed(image):
    """SIGKILL the sshd monitor of a live session inside: the connection goes on and must keep the machine up."""
    r = SimpleNamespace()
    with image.machine(config()) as m:
        m.boot()
        session = m.ssh("dev")
        opened = now()
        sleep_until(opened + MIN_SESSION + 1)
        (before,) = session_of(m.status(), "dev")
        r.monitor = before["pid"]
        r.kill = m.inside(["kill", "-KILL", str(r.monitor)], check=False)
        r.killed_at = now()
        # gone once sshd has reaped it (a zombie still has its /proc entry)
        gone = f"for i in $(seq 100); do [ -e /proc/{r.monitor} ] || exit 0; sleep 0.05; done; exit 1"
        r.monitor_gone = m.inside(["sh", "-c", gone], check=False).returncode == 0
        r.echo_after_kill = session.run("echo alive")
        r.status_after_kill = m.status()
        # Hold it past the boot deadline and past DURATION after the kill.
        sleep_until(max(m.booted + DURATION, r.killed_at + DURATION) + 10)
        r.echo_late = session.run("echo still alive")
        r.status_late = m.status()
        r.up_before_close = m.running
        session.close()
        r.closed = session.closed_at
        # The close hook never runs now; a tick finds the lease dead and ends it then.
        r.timing = m.wait_poweroff(r.closed + DURATION, late_limit=TICK_PERIOD + 15)
        r.journal = m.journal_text()
    return r


@scenario
def status_as_user(image):
    """What a developer sees with `idle-reaper status` while connected, and after leaving, against what happens."""
    r = SimpleNamespace()
    with image.machine(config()) as m:
        m.boot()
        session = m.ssh("dev")
        sleep_until(now() + MIN_SESSION + 1)
        r.root_active = m.status()
        r.user_active = m.status(user="dev")
        r.user_text_in_session = session.run("idle-reaper status")
        session.close()
        r.session_end = m.session_end("dev")
        sleep_until(r.session_end + 3)
        r.user_idle_at = now()
        r.user_idle = m.status(user="dev")
        r.user_idle_text = m.status_text(user="dev")
        r.timing = m.wait_poweroff(r.session_end + DURATION)
        r.journal = m.journal_text()
    return r


# --- issue 9: connections that are not sessions, and how long young sessions may hold the action back ---------

# The strangers' machine: password authentication, so a client can fail it and stay connected; and a LoginGraceTime
# short enough that sshd drops the strangers before the deadline, so the ones held across it are fresh, re-opened
# connections (younger than min_session), as the attack's loop keeps them.
STRANGER_SSHD = "PasswordAuthentication yes\nLoginGraceTime 15s\n"
STATUS_EVERY = 1.0  # seconds between status reads while the strangers are held
WAIT_LATE = 40  # how long past its deadline a scenario of this part waits for a poweroff that doesn't come
PROBE_EVERY = 2  # a probe logs in this often ...
PROBE_STAYS = 3  # ... and stays this long, shorter than MIN_SESSION: each overlaps the next
PROBES_FROM = 3  # the first probe starts this long before the deadline
PROBES_PAST = MIN_SESSION + 12  # and they go on until this long after it, well past the bound of the hold
LOGIN_BEFORE = 3  # the user of session_just_before_deadline logs in this long before the deadline ...
STAYS = 30  # ... and stays this long, well past deadline + MIN_SESSION


def _status_or_gone(m):
    """Return m.status(), or None if the machine went down meanwhile (the poweroff came while reading)."""
    try:
        return m.status()
    except (AssertionError, ValueError, subprocess.TimeoutExpired):
        if m.wait_exit(30):  # a loaded machine's shutdown has taken 7 s and more
            return None
        raise


@scenario
def strangers_held(image):
    """Three connections that never log in are held across the deadline: it powers off DURATION after boot anyway.

    A silent one (no banner), one stopped in the key exchange, and one whose authentication failed, each re-opened
    whenever sshd drops it. Status is read every STATUS_EVERY seconds while all three are held.
    """
    r = SimpleNamespace(reads=[])
    with image.machine(config(), sshd_options=STRANGER_SSHD) as m:
        m.boot()
        r.booted = m.booted
        r.deadline = m.booted + DURATION
        strangers = [m.stranger(kind) for kind in Stranger.KINDS]
        while m.running and now() < r.deadline + WAIT_LATE:
            held_before = [s.current() for s in strangers]
            at = now()
            status = _status_or_gone(m)
            if status is None:
                break
            held = None not in held_before and [s.current() for s in strangers] == held_before
            r.reads.append(SimpleNamespace(at=at, held=held, status=status))
            m.wait_exit(at + STATUS_EVERY - now())
        r.timing = m.wait_poweroff(r.deadline, late_limit=WAIT_LATE)
        for s in strangers:
            s.stop()
        r.connections = {s.kind: [tuple(c) for c in s.connections] for s in strangers}
        r.refused = {s.kind: s.refused for s in strangers}
        r.sshd_journal = "\n".join(message for _, _, message in m.journal_lines(unit="ssh.service"))
        r.journal = m.journal_text()
    return r


@scenario
def probes_overlapping(image):
    """Nobody connects, but from just before the deadline a probe logs in every PROBE_EVERY s for PROBE_STAYS s.

    Each probe is shorter than min_session and overlaps the next, so there is always a young session; the action
    may wait for them, but at most MIN_SESSION past the deadline.
    """
    r = SimpleNamespace(probes_started=[])
    with image.machine(config()) as m:
        m.boot()
        r.booted = m.booted
        r.deadline = m.booted + DURATION
        next_at = r.deadline - PROBES_FROM
        while next_at < r.deadline + PROBES_PAST and not m.wait_exit(next_at - now()):
            m.ssh_start("probe", f"sleep {PROBE_STAYS}")
            r.probes_started.append(now())
            next_at += PROBE_EVERY
        r.timing = m.wait_poweroff(r.deadline, late_limit=WAIT_LATE)
        sshd = m.journal_lines(unit="ssh.service")
        r.probe_logins = [at for at, _, message in sshd if "Accepted publickey for probe " in message]
        # The tick's own lines (the hook's are the PAM stack's, not the unit's; systemd's are systemd's).
        unit = m.journal_lines(unit="idle-reaper.service")
        r.reaper_lines = [(at, message) for at, ident, message in unit if ident == "idle-reaper"]
        r.journal = m.journal_text()
    return r


@scenario
def session_just_before_deadline(image):
    """A user logs in LOGIN_BEFORE s before the deadline and stays STAYS s: it stays up, then powers off after."""
    r = SimpleNamespace()
    with image.machine(config()) as m:
        m.boot()
        r.booted = m.booted
        r.deadline = m.booted + DURATION
        sleep_until(r.deadline - LOGIN_BEFORE - 0.3)  # a login takes a few tenths of a second
        session = m.ssh("dev")
        r.leases = [x for x in m.state_file()["leases"] if x["user"] == "dev"]
        (lease,) = [x for x in r.leases if x["source"] == "hook"]
        r.opened = lease["opened"]  # when the hook recorded the open (CLOCK_BOOTTIME)
        sleep_until(r.deadline + 1)
        r.status_young = m.status()
        sleep_until(r.opened + MIN_SESSION + 1)
        r.status_counted = m.status()
        sleep_until(r.opened + STAYS)
        r.status_late = m.status()
        r.up_before_close = m.running
        session.close()
        r.up_after_close = m.running
        r.session_end = m.session_end("dev")
        r.timing = m.wait_poweroff(r.session_end + DURATION)
        r.journal = m.journal_text()
    return r


# --- issue 11: logind's idle inhibitors, mosh sessions, clients that vanish without a FIN ---------------------

# A variant of the image with mosh and a UTF-8 locale (mosh needs one): cached apart from the shared image.
MOSH_PACKAGES = (*debroot.PACKAGES, "locales", "mosh")
INHIBIT_FOR = DURATION + 25  # the logind inhibitor lasts this long from just after boot, well past the deadline
MOSH_HOLD = DURATION + 25  # the mosh user types until this long after boot
# Issue 11's scenarios start this long after the others: every booted machine holds inotify instances, which all
# machines share with the host (fs.inotify.max_user_instances, 128), and the mosh image's package install
# competes for the CPU; so they come once the first wave of machines (deadline boot + DURATION) is gone.
STAGGER = DURATION + 15
TYPE_EVERY = 2.0  # seconds between the mosh user's commands
# mosh-server rewrites its utmp entry after 30 s without hearing from the client (its heartbeat is every 3 s).
MOSH_DETACH = 30
MOSH_DETACH_SLACK = 5
# The test's own drop-in sorts before the shipped idle-reaper.conf, so its ClientAliveInterval wins; the
# shipped ClientAliveCountMax (4) still applies. OpenSSH 9.2 then asks a vanished client every 2 intervals (6 s,
# measured: its poll returns once in between), and gives up at the 5th ask: about 5 * 6 s after the link went.
SHORT_ALIVE = 3
ALIVE_EVERY = 2 * SHORT_ALIVE
SHIPPED_COUNT_MAX = 4
VANISH_HOLD = MIN_SESSION + 3  # the vanishing client is logged in this long before its link goes down


def _reaper_memory(m):
    """Return the tick's memory from the machine's state file ({} if none yet)."""
    return (m.state_file() or {}).get("reaper", {})


def _wait_activity_end(m, after, timeout):
    """Wait until the tick has recorded an end of some other activity later than `after`; return it (or None)."""
    give_up = now() + timeout
    while m.running and now() < give_up:
        end = (_reaper_memory(m).get("activity_end") or {}).get("at")
        if end is not None and end > after:
            return end
        time.sleep(0.25)
    return None


@scenario
def logind_inhibitor_held(image):
    """Root runs `systemd-inhibit --what=idle ... sleep INHIBIT_FOR` just after boot: the machine stays up past its
    deadline, inhibited; once sleep ends, it powers off DURATION after the tick saw the inhibitor gone."""
    r = SimpleNamespace()
    time.sleep(STAGGER)
    with image.machine(config()) as m:
        m.boot()
        r.booted = m.booted
        r.why = "irt: building the world"
        argv = ["systemd-inhibit", "--what=idle", "--who=irt-build", f"--why={r.why}", "sleep", str(INHIBIT_FOR)]
        inhibit = m.inside_start(argv)
        r.started = now()
        sleep_until(r.booted + DURATION + 5)
        r.status = m.status()
        r.status_user = m.status(user="dev")
        r.inhibit_pids = m.inside(["pgrep", "-x", "systemd-inhibit"], check=False).stdout.split()
        r.up_past_deadline = m.running
        inhibit.wait(INHIBIT_FOR + 30)
        r.released = now()
        r.inhibit_rc = inhibit.returncode
        r.end = _wait_activity_end(m, r.released - 1, TICK_PERIOD + 15)
        r.timing = m.wait_poweroff((r.end or r.released) + DURATION)
        r.journal = m.journal_text()
    return r


@scenario
def mosh_typing_then_client_killed(image):
    """A real mosh session: dev types a command every TYPE_EVERY s until MOSH_HOLD after boot, then the client is
    SIGKILLed. mosh-server lives on, but stops counting once its utmp entry says no client is attached."""
    r = SimpleNamespace()
    time.sleep(STAGGER)
    with Image.build(image.deb, packages=MOSH_PACKAGES, parent=image.workdir) as mosh_image:
        with mosh_image.machine(config()) as m:
            m.boot()
            r.booted = m.booted
            client = m.mosh("dev")
            r.server_pid = client.server_pid
            typed = 0
            while now() < r.booted + MOSH_HOLD:
                client.type(f"echo irt-typed-{typed}")
                typed += 1
                if typed == 4:
                    r.status_typing = m.status()
                    r.status_text = m.status_text()
                time.sleep(TYPE_EVERY)
            r.typed = typed
            r.echoed = sum(f"irt-typed-{i}\r\n".encode() in client.output for i in range(typed))
            r.status_late = m.status()
            r.up_while_typing = m.running
            r.entries_before = m.mosh_entries()
            client.kill()
            r.killed = now()
            r.detached_after = None
            while now() < r.killed + MOSH_DETACH + MOSH_DETACH_SLACK:
                if m.mosh_entries() and not any(e["attached"] for e in m.mosh_entries()):
                    r.detached_after = now() - r.killed
                    break
                time.sleep(0.2)
            r.entries_after = m.mosh_entries()
            r.server_alive = m.inside(["kill", "-0", str(r.server_pid)], check=False).returncode == 0
            r.status_detached = m.status()
            r.end = _wait_activity_end(m, r.killed, MOSH_DETACH + MOSH_DETACH_SLACK + TICK_PERIOD + 15)
            r.timing = m.wait_poweroff((r.end or r.killed) + DURATION)
            r.journal = m.journal_text()
    return r


@scenario
def client_vanishes_without_fin(image):
    """dev logs in from a network namespace over a veth pair; the link is taken down, so no FIN or RST reaches
    sshd. With the shipped drop-in (its interval shortened by a drop-in that sorts first), sshd ends the session,
    and the machine powers off DURATION after that."""
    r = SimpleNamespace()
    time.sleep(STAGGER)
    with Netns() as net, image.machine(config(), sshd_options=f"ClientAliveInterval {SHORT_ALIVE}\n"
                                       f"ListenAddress {net.host_addr}\n") as m:  # fmt: skip
        m.boot()
        r.booted = m.booted
        r.sshd_t = m.inside(["sshd", "-T"], check=False).stdout.lower()
        session = m.ssh_from(net.name, net.host_addr, "dev")
        r.opened = now()
        sleep_until(r.opened + VANISH_HOLD)
        r.status_counted = m.status()
        net.link_down()
        r.link_down = now()
        r.up_at_link_down = m.running
        r.session_end = m.session_end("dev", timeout=ALIVE_EVERY * (SHIPPED_COUNT_MAX + 2) + 15)
        # The session's own sshd process logs from the user's logind scope, not ssh.service: all of sshd's lines.
        r.sshd_journal = m.inside(["journalctl", "-t", "sshd", "-o", "cat", "--no-pager"], check=False).stdout
        r.timing = m.wait_poweroff(r.session_end + DURATION)
        session.kill()
        r.journal = m.journal_text()
    return r


# --- checks the tests share -----------------------------------------------------------------------------------

LATE_OK = 3.0  # seconds from the deadline to the machine being gone: "not more than a few seconds late"
CLOCK_SLACK = 0.02  # journal timestamps converted from CLOCK_MONOTONIC to CLOCK_BOOTTIME
MEASURED = []  # (test, Poweroff): printed at the end of the run (conftest.py)


def assert_powered_off_on_time(name, r, late_ok=LATE_OK):
    """The machine powered itself off at its deadline: the action not before it, the machine gone soon after."""
    MEASURED.append((name, r.timing))
    t = r.timing
    why = f"{t.describe()}\njournal of idle-reaper.service:\n{r.journal}"
    assert t.exited_at is not None, f"it did not power off: {why}"
    assert t.action_at is not None, f"no '{ACTION_LOG}' in the journal: {why}"
    assert t.action_late >= -CLOCK_SLACK, f"it acted early: {why}"
    assert t.late >= 0, f"it was gone early: {why}"
    assert t.late <= late_ok, f"it powered off more than {late_ok}s late: {why}"


@scenario
def history_across_boots(image):
    """dev logs in for a while and leaves; the machine powers off; the same machine boots again, and
    `idle-reaper history` there shows the previous boot: dev's session and the action with its reason."""
    r = SimpleNamespace()
    with image.machine(config()) as m:
        m.boot()
        r.first_boot = m.booted
        session = m.ssh("dev")
        sleep_until(now() + MIN_SESSION + 2)
        session.close()
        r.session_end = m.session_end("dev")
        r.timing = m.wait_poweroff(r.session_end + DURATION)
        r.journal = m.journal_text()
        r.second_boot = m.boot_again()
        r.history = json.loads(m.inside(["idle-reaper", "history", "--json", "--since", "1h"], user="dev").stdout)
        r.history_text = m.inside(["idle-reaper", "history", "--since", "1h"], user="dev").stdout
        r.files = m.inside(["ls", "-l", "/var/lib/idle-reaper"]).stdout
    return r


# --- issue 11: inhibitors -------------------------------------------------------------------------------------

JOB = 60  # the job the user leaves running: `idle-reaper inhibit -- sleep 60`
HOLD_FOR = 40  # `idle-reaper inhibit --for 40s`
INHIBIT_LATE_OK = 2.0  # an inhibitor's end is known at once (its file), so the action is at most this late
INHIBITORS = "run/idle-reaper/inhibitors"


def activity_end(m, after, timeout=15):
    """Return the end of an activity the tick remembered (CLOCK_BOOTTIME, what) once it is later than `after`."""
    give_up = now() + timeout
    while True:
        end = ((m.state_file() or {}).get("reaper") or {}).get("activity_end")
        if end and end["at"] > after:
            return end["at"], end["what"]
        if now() > give_up:
            raise AssertionError(f"{m.name}: no activity end after {after} in the state: {m.state_file()}")
        time.sleep(0.05)


@scenario
def job_inhibits_after_logout(image):
    """dev logs in, leaves `idle-reaper inhibit -- sleep 60` running detached from the session (setsid; the image
    has no tmux), and logs out: the machine stays up while it runs and powers off DURATION after it ends."""
    r = SimpleNamespace()
    with image.machine(config()) as m:
        m.boot()
        r.booted = m.booted
        session = m.ssh("dev")
        job = f"idle-reaper inhibit --why 'nightly build' -- sleep {JOB}"
        r.started_out = session.run(f"setsid -f {job} </dev/null >/dev/null 2>/var/tmp/job.err; echo started")
        r.job_started = now()
        sleep_until(r.job_started + MIN_SESSION + 1)
        r.status_connected = m.status()
        session.close()
        r.logged_out = session.closed_at
        sleep_until(r.logged_out + 2)
        r.status_after_logout = m.status(user="dev")
        r.text_after_logout = m.status_text(user="dev")
        sleep_until(max(m.booted, r.logged_out) + DURATION + 5)  # past when it would power off but for the job
        r.up_past_logout_deadline = m.running
        r.status_later = m.status()
        sleep_until(r.job_started + JOB - 2)
        r.up_before_job_end = m.running
        r.job_end, r.job_end_what = activity_end(m, r.job_started + JOB - 5, timeout=15)
        r.status_after_end = m.status()
        r.timing = m.wait_poweroff(r.job_end + DURATION)
        r.job_err = (m.root / "var/tmp/job.err").read_text() if (m.root / "var/tmp/job.err").exists() else ""
        r.journal = m.journal_text()
    return r


# --- the login notice and max_duration (issue 12) ---------------------------------------------------------------

NOTICE_DURATION = 600  # long: the notice machine must stay up through its logins
CAP = 40  # max_duration, seconds from boot
GRACE = 20  # max_duration_grace


def interactive_login(m, user):
    """Log in as a person does (a pty, no command), type exit, and return what the terminal showed."""
    done = subprocess.run(  # noqa: S603 - the harness's own ssh argv
        [*m.ssh_argv(user, "-tt")], input="exit\n", capture_output=True, text=True, timeout=30, check=False
    )
    return done.stdout


def notice_file(m):
    done = m.inside(["cat", "/run/motd.d/idle-reaper"], check=False)
    return done.stdout if done.returncode == 0 else None


def wait_notice(m, predicate, timeout=30):
    """Wait until the notice file satisfies predicate(text or None); return the text."""
    give_up = now() + timeout
    while True:
        text = notice_file(m)
        if predicate(text) or now() > give_up:
            return text
        time.sleep(0.2)


def tick(m):
    """Run a tick now, as the timer would (it returns at once: no deadline is near)."""
    m.inside(["systemctl", "start", "idle-reaper.service"])


@scenario
def login_notice(image):
    """Logins show the notice; it follows the state: idle, then in use while a session is held, then off."""
    r = SimpleNamespace()
    with image.machine(config(duration=f"{NOTICE_DURATION}s")) as m:
        m.boot()
        tick(m)
        r.file_idle = wait_notice(m, lambda t: t is not None and "Now: idle" in t)
        r.mode = m.inside(["stat", "-c", "%a %U", "/run/motd.d/idle-reaper"], check=False).stdout.strip()
        r.login_idle = interactive_login(m, "dev")
        session = m.ssh("dev2")
        sleep_until(now() + MIN_SESSION + 1)
        r.file_active = wait_notice(m, lambda t: t is not None and "in use" in t)
        r.login_active = interactive_login(m, "dev")
        session.close()
        r.file_after = wait_notice(m, lambda t: t is not None and "Now: idle" in t)
        m.write_config(config(duration=f"{NOTICE_DURATION}s", extra="notice: off\n"))
        tick(m)
        r.file_off = wait_notice(m, lambda t: t is None)
        r.login_off = interactive_login(m, "dev")
        r.journal = m.journal_text()
    return r


@scenario
def inhibit_for_nobody_connected(image):
    """Right after boot, dev runs `idle-reaper inhibit --for 40s` (no SSH session): the machine stays up past the
    boot deadline, and powers off DURATION after the inhibitor expires."""
    r = SimpleNamespace()
    with image.machine(config()) as m:
        m.boot()
        r.booted = m.booted
        done = m.inside(["idle-reaper", "inhibit", "--for", f"{HOLD_FOR}s", "--why", "deploy"], user="dev")
        r.asked_at = now()
        r.ident = done.stdout.strip()
        r.stderr = done.stderr
        path = pathlib.Path(f"/proc/{m.leader}/root") / INHIBITORS / f"{r.ident}.json"  # /run: the machine's tmpfs
        r.owner = path.stat().st_uid
        r.record = json.loads(path.read_text())
        r.status = m.status()
        sleep_until(m.booted + DURATION + 5)
        r.up_past_boot_deadline = m.running
        r.status_later = m.status(user="dev")
        r.timing = m.wait_poweroff(r.record["until"] + DURATION)
        r.journal = m.journal_text()
    return r


@scenario
def max_duration_nobody(image):
    """max_duration: 60s, inactivity_duration off, nobody connects: it powers off 60 s after boot."""
    r = SimpleNamespace()
    with image.machine("inactivity_duration: off\nmax_duration: 60s\n") as m:
        m.boot()
        r.booted = m.booted
        sleep_until(m.booted + 20)
        r.status = m.status()
        r.status_at = now()
        r.timing = m.wait_poweroff(m.booted + 60)
        r.journal = m.journal_text()
    return r


# Test-only lead times for the warnings (reaper.actions.warn.LEADS_ENV), in a drop-in for the tick's unit.
LEADS = (30, 15, 5)
WARN_DROPIN = "etc/systemd/system/idle-reaper.service.d/test-leads.conf"


class PtySession:
    """An interactive login with a terminal (ssh -tt) that runs nothing; what its terminal shows is timestamped."""

    def __init__(self, m, user):
        self.proc = subprocess.Popen(  # noqa: S603 - the harness's own ssh argv
            [*m.ssh_argv(user, "-tt"), "exec sleep 600"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.chunks = []  # (CLOCK_BOOTTIME, text)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        while chunk := os.read(self.proc.stdout.fileno(), 4096):
            self.chunks.append((now(), chunk.decode(errors="replace")))

    def warnings(self):
        """Return [(CLOCK_BOOTTIME, the warning's first line)] for each warning the terminal showed."""
        out = []
        for at, text in self.chunks:
            out += [(at, line.strip()) for line in text.splitlines() if line.startswith("*** idle-reaper:")]
        return out

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.reader.join(5)


def _capped_with_a_user(image, leave_at):
    """max_duration CAP with a terminal session held from boot; the user leaves at leave_at (from boot) or never."""
    r = SimpleNamespace()
    text = config(duration=f"{NOTICE_DURATION}s", extra=f"max_duration: {CAP}s\nmax_duration_grace: {GRACE}s\n")
    with image.machine(text) as m:
        dropin = m.root / WARN_DROPIN
        dropin.parent.mkdir(parents=True, exist_ok=True)
        dropin.write_text(f"[Service]\nEnvironment=IDLE_REAPER_WARN_LEADS={','.join(map(str, LEADS))}\n")
        m.boot()
        r.booted = m.booted
        session = PtySession(m, "dev")
        try:
            sleep_until(m.booted + CAP + 3)
            r.status_grace = m.status()
            r.up_in_grace = m.running
            if leave_at is not None:
                sleep_until(m.booted + leave_at)
                session.close()
                r.left = m.session_end("dev")
                r.timing = m.wait_poweroff(r.left)
            else:
                r.timing = m.wait_poweroff(m.booted + CAP + GRACE)
        finally:
            session.close()
        r.warnings = session.warnings()
        r.journal = m.journal_text()
    return r


@scenario
def max_duration_user_leaves(image):
    """The cap passes with a user connected; they leave in the grace: the action runs when they leave."""
    return _capped_with_a_user(image, CAP + GRACE // 2)


@scenario
def max_duration_grace_ends(image):
    """The cap passes with a user connected who stays: the action runs when the grace ends."""
    return _capped_with_a_user(image, None)


# --- pre-action hooks ---------------------------------------------------------------------------------------------

HOOKS_DIR = "etc/idle-reaper/pre-action.d"
HOOK_TIMEOUT = 3  # pre_action_timeout in the hang scenario


def put_hook(m, name, body):
    path = m.root / HOOKS_DIR / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def _hooked(image, hooks, extra=""):
    """Nobody connects; the hooks run at the deadline, then the action."""
    r = SimpleNamespace()
    with image.machine(config(extra=extra)) as m:
        for name, body in hooks.items():
            put_hook(m, name, body)
        m.boot()
        r.booted = m.booted
        r.timing = m.wait_poweroff(m.booted + DURATION, late_limit=HOOK_TIMEOUT + 30)
        r.lines = m.journal_lines()
        r.journal = m.journal_text()
    return r


@scenario
def pre_action_hook(image):
    """A hook that syncs a workspace runs before the action; what it prints is in the journal."""
    body = (
        'echo "syncing the workspace: cause=$IDLE_REAPER_CAUSE idle=$IDLE_REAPER_IDLE_SECONDS'
        ' deadline=$IDLE_REAPER_DEADLINE"'
    )
    return _hooked(image, {"10-sync": body})


@scenario
def pre_action_hook_hangs(image):
    """A hook that hangs is stopped at pre_action_timeout; the next hook and the action still run."""
    hooks = {"10-hang": "echo hanging; exec sleep 600", "20-after": "echo after the hang"}
    return _hooked(image, hooks, extra=f"pre_action_timeout: {HOOK_TIMEOUT}s\n")


@scenario
def pre_action_login(image):
    """Someone logs in while the hooks run: the action does not run, and the machine stays up."""
    r = SimpleNamespace()
    with image.machine(config(extra="pre_action_timeout: 30s\n")) as m:
        put_hook(m, "10-slow", "echo slow hook; sleep 6; echo slow hook done")
        m.boot()
        r.booted = m.booted
        give_up = now() + DURATION + 30
        while not any("running pre-action hook" in msg for _, _, msg in m.journal_lines()):
            assert now() < give_up, m.journal_text()
            time.sleep(0.2)
        r.hook_seen = now()
        session = m.ssh("dev")
        r.logged_in = now()
        sleep_until(r.hook_seen + 6 + MIN_SESSION + 3)
        r.up = m.running
        r.status = m.status() if r.up else None
        session.close()
        r.journal = m.journal_text()
    return r
