"""`idle-reaper inhibit` as real unprivileged users: holding, running a command, following a process, listing and
releasing, and what one user can't do to another's inhibitor, the state file or the reaper."""

import contextlib
import json
import os
import signal
import stat
import subprocess
import time

import pytest

from reaper import clock
from reaper.evidence import inhibitors as evidence
from tests.conftest import cli_env
from tests.integration.sshd import REPO, VENV_PYTHON, idle_reaper, public_dir, status, wait_for

A, B = "irt-inh-a", "irt-inh-b"
GROUP = "irt-inh-g"


@pytest.fixture(scope="module")
def people():
    if os.geteuid() != 0:
        pytest.fail("these tests need root: they make test users and act as them")
    subprocess.run(["groupdel", GROUP], capture_output=True)
    subprocess.run(["groupadd", GROUP], check=True)
    for name in (A, B):
        subprocess.run(["userdel", name], capture_output=True)
        subprocess.run(["useradd", "-M", "-s", "/bin/sh", name], check=True)
    subprocess.run(["usermod", "-aG", GROUP, A], check=True)
    yield {name: int(subprocess.run(["id", "-u", name], capture_output=True, text=True).stdout) for name in (A, B)}
    for name in (A, B):
        subprocess.run(["userdel", name], capture_output=True)
    subprocess.run(["groupdel", GROUP], capture_output=True)


@pytest.fixture
def box(require_root, people):
    """A config and a state dir as the package makes them: root's, the inhibitors directory made by a tick."""
    d = public_dir("irt-inh-")
    config = os.path.join(d, "config.yaml")
    state = os.path.join(d, "state")
    box = Box(d, config, state, people)
    box.configure()
    done = idle_reaper(config, state, "reap")
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(os.stat(box.dir).st_mode) == 0o1777
    yield box
    for proc in box.started:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
    subprocess.run(["rm", "-rf", d])


class Box:
    def __init__(self, root, config, state, people):
        self.root, self.config, self.state, self.uids = root, config, state, people
        self.dir = os.path.join(state, "inhibitors")
        self.started = []

    def configure(self, extra=""):
        # No SSH here: anyone's SSH sessions on this host (the live check sees other testers') are not the point.
        noise = 'ignore:\n  networks: [0.0.0.0/0, "::/0"]\n'
        with open(self.config, "w") as f:
            f.write(f'inactivity_duration: 1h\nmin_session: off\naction: ["/bin/true"]\n{noise}{extra}')
        os.chmod(self.config, 0o644)

    def run(self, *args, user=A):
        return idle_reaper(self.config, self.state, "inhibit", *args, user=user)

    def start(self, *args, user=A):
        """Start `idle-reaper inhibit ARGS` as the user itself (setpriv execs: the pid is idle-reaper's)."""
        argv = [VENV_PYTHON, "-m", "reaper", "--config", self.config, "--state-dir", self.state, "inhibit", *args]
        drop = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups"]
        proc = subprocess.Popen([*drop, *argv], cwd=REPO, env=cli_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        self.started.append(proc)
        return proc

    def status(self, user=None):
        return status(self.config, self.state, user=user)

    def reap(self):
        done = idle_reaper(self.config, self.state, "reap")
        assert done.returncode == 0, done.stderr
        return done

    def files(self):
        return sorted(n for n in os.listdir(self.dir) if n.endswith(".json"))

    def record(self, ident):
        with open(os.path.join(self.dir, f"{ident}.json")) as f:
            return json.load(f)

    def held(self):
        return self.status()["inhibitors"]


def test_for_returns_at_once_holds_as_the_user_who_asked_and_shows_in_status(box):
    started = time.monotonic()
    done = box.run("--for", "4h", "--why", "training run")
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 10
    ident = done.stdout.strip()
    assert os.stat(os.path.join(box.dir, f"{ident}.json")).st_uid == box.uids[A]
    for who in (None, B):
        s = box.status(user=who)
        assert s["state"] == "inhibited", s
        (i,) = s["inhibitors"]
        assert (i["id"], i["user"], i["why"], i["pid"], i["capped"]) == (ident, A, "training run", None, False)
        assert i["since"] and i["until"]
    text = idle_reaper(box.config, box.state, "status", user=B).stdout
    assert f"inhibitor {ident} {A}" in text and "training run" in text


def test_for_longer_than_max_inhibit_is_capped_and_says_so(box):
    box.configure("max_inhibit: 1h\n")
    done = box.run("--for", "1w")
    assert done.returncode == 0 and "max_inhibit is 1h" in done.stderr, done.stderr
    (i,) = box.held()
    assert i["capped"]


def test_a_command_runs_holding_the_machine_up_and_its_exit_status_is_returned(box):
    go = os.path.join(box.root, "go")
    proc = box.start("--why", "build", "--", "sh", "-c", f"while [ ! -e {go} ]; do sleep 0.05; done; exit 7")
    wait_for(lambda: box.held(), timeout=10)
    (i,) = box.held()
    assert i["pid"] and i["pid"] != proc.pid and i["user"] == A and i["why"] == "build"
    assert box.status()["state"] == "inhibited"
    open(go, "w").close()  # the command ends now, however slow the checks above were
    assert proc.wait(20) == 7
    ended_at = clock.now()
    (name,) = box.files()
    record = box.record(name[:-5])
    assert record["ended"] is not None and ended_at - 5 < record["ended"] <= ended_at  # 5: a loaded machine
    s = box.status()
    assert s["state"] == "idle" and "ended" in s["last_activity"] and s["inhibitors"] == []
    box.reap()
    assert box.files() == [], "the tick deletes an ended inhibitor"
    state = box.status()
    assert state["state"] == "idle" and state["idle_seconds"] <= 10, "the end is still what idleness counts from"


def test_a_command_that_cannot_run_says_so(box):
    done = box.run("--", "/nonexistent/prog")
    assert done.returncode == 127 and "/nonexistent/prog" in done.stderr


def test_signals_sent_to_idle_reaper_reach_the_command(box):
    proc = box.start("--", "sh", "-c", "trap 'exit 42' TERM; while :; do sleep 0.1; done")
    wait_for(lambda: box.held(), timeout=10)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 42
    proc = box.start("--", "sleep", "30")
    wait_for(lambda: box.held(), timeout=10)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(10) == 128 + signal.SIGUSR1, "a command killed by a signal: 128 + its number"
    assert box.held() == []


def test_when_idle_reaper_is_sigkilled_the_hold_follows_the_command_and_ends_with_it(box):
    go = os.path.join(box.root, "go")
    proc = box.start("--", "sh", "-c", f"while [ ! -e {go} ]; do sleep 0.05; done")
    wait_for(lambda: box.held(), timeout=10)
    (i,) = box.held()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    assert box.status()["state"] == "inhibited", "the command still runs"
    open(go, "w").close()
    # an orphan: whatever reaps it here (this host's PID 1 may leave it a zombie), it has exited
    wait_for(lambda: evidence.runs(i["pid"], "/proc") is None, timeout=10)
    gone = clock.now()
    box.reap()
    s = box.status()
    assert s["state"] == "idle" and s["inhibitors"] == []
    assert box.files() == []
    with open(os.path.join(box.state, "state.json")) as f:
        end = json.load(f)["reaper"]["activity_end"]
    assert gone - 1 < end["at"] < clock.now() and i["id"] in end["what"], "its end: when the tick first saw it gone"


def test_pid_holds_while_the_users_own_process_runs_and_refuses_another_users(box):
    mine = subprocess.Popen(["setpriv", f"--reuid={A}", f"--regid={A}", "--init-groups", "sleep", "30"])
    theirs = subprocess.Popen(["setpriv", f"--reuid={B}", f"--regid={B}", "--init-groups", "sleep", "30"])
    box.started += [mine, theirs]
    time.sleep(0.2)
    refused = box.run("--pid", str(theirs.pid))
    assert refused.returncode == 1 and "not a process of yours" in refused.stderr
    assert box.run("--pid", "999999999").returncode == 1
    done = box.run("--pid", str(mine.pid), "--why", "tmux job")
    assert done.returncode == 0, done.stderr
    (i,) = box.held()
    assert i["pid"] == mine.pid and i["capped"] and i["until"], "the cap ends it at the latest"
    mine.kill()
    mine.wait()
    box.reap()
    assert box.held() == [] and box.files() == []
    assert box.status()["state"] == "idle"


def test_list_shows_everyones_and_json_marks_ones_own(box):
    a = box.run("--for", "1h", "--why", "a's").stdout.strip()
    b = box.run("--for", "2h", user=B).stdout.strip()
    listed = json.loads(box.run("--list", "--json").stdout)
    mine = {i["id"]: i["mine"] for i in listed["inhibitors"]}
    assert mine == {a: True, b: False} and listed["notes"] == []
    text = box.run("--list", user=B).stdout
    assert a in text and b in text and "a's" in text


def test_a_user_can_release_their_own_but_not_anothers_and_root_can_release_any(box):
    a = box.run("--for", "1h").stdout.strip()
    b = box.run("--for", "1h", user=B).stdout.strip()
    denied = box.run("--release", b)
    assert denied.returncode == 1 and f"is {B}'s" in denied.stderr
    assert box.run("--release", "zz").returncode == 2
    assert box.run("--release", a).returncode == 0
    assert box.record(a)["ended"] is not None
    assert box.run("--release", b, user=None).returncode == 0, "root may release anyone's"
    assert os.stat(os.path.join(box.dir, f"{b}.json")).st_uid == box.uids[B], "released, it is still B's"
    assert box.held() == []
    box.reap()
    assert box.files() == []


def _as(user, code):
    """Run Python code as `user`; return the CompletedProcess."""
    argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "/usr/bin/python3", "-c", code]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def test_a_user_can_neither_forge_replace_nor_delete_anothers_inhibitor_nor_write_the_state(box):
    a = box.run("--for", "1h").stdout.strip()
    target = os.path.join(box.dir, f"{a}.json")
    forged = {**box.record(a), "until": clock.now() + 10**6}
    code = f"""
import json, os
d = {box.dir!r}
out = []
def attempt(name, fn):
    try:
        fn(); out.append(name + ": done")
    except OSError as e:
        out.append(name + ": " + type(e).__name__)
tmp = os.path.join(d, ".forged.tmp")
open(tmp, "w").write(json.dumps({forged!r}))
attempt("replace", lambda: os.rename(tmp, {target!r}))
attempt("delete", lambda: os.unlink({target!r}))
attempt("write", lambda: open({target!r}, "w"))
attempt("state", lambda: open({os.path.join(box.state, "state.json")!r}, "a"))
attempt("lock", lambda: open({os.path.join(box.state, "state.lock")!r}, "a"))
attempt("state dir", lambda: open({os.path.join(box.state, "x")!r}, "w"))
os.rename(tmp, os.path.join(d, "{"b" * 12}.json"))
print(chr(10).join(out))
"""
    done = _as(B, code)
    assert done.returncode == 0, done.stderr
    for line in done.stdout.splitlines():
        assert line.endswith("PermissionError"), done.stdout
    held = {i["id"]: i for i in box.held()}
    assert held[a]["user"] == A and not held[a]["until"].startswith("2027"), "A's is untouched"
    forged_one = held["b" * 12]
    assert forged_one["user"] == B, "whatever the content says, the file is B's: B's own inhibitor (capped)"
    assert forged_one["capped"]


def test_hostile_files_of_a_user_are_refused_with_reasons_crash_nothing_and_the_tick_removes_them(box):
    code = f"""
import os
d = {box.dir!r}
os.symlink("/etc/shadow", os.path.join(d, "{"a" * 12}.json"))
os.mkfifo(os.path.join(d, "{"c" * 12}.json"))
with open(os.path.join(d, "{"d" * 12}.json"), "wb") as f:
    f.truncate(50 * 1024 * 1024)
open(os.path.join(d, "\\x1b[2Jevil"), "w").close()
for i in range(300):
    open(os.path.join(d, "%012x.json" % (0xe00000000000 + i)), "w").write("{{}}")
"""
    done = _as(B, code)
    assert done.returncode == 0, done.stderr
    good = box.run("--for", "1h").stdout.strip()
    started = time.monotonic()
    s = box.status(user=B)
    assert time.monotonic() - started < 10, "a FIFO never blocks a reader"
    assert [i["id"] for i in s["inhibitors"]] == [good] and s["state"] == "inhibited"
    (note,) = s["evidence_notes"]
    for why in ("symbolic link", "FIFO", "too large", "not named", "more than 16"):
        assert why in note, note
    text = idle_reaper(box.config, box.state, "status").stdout
    assert "\x1b" not in text
    box.reap()
    assert box.files() == [f"{good}.json"], "the tick deleted what it refused"
    assert box.status()["evidence_notes"] == []


def test_may_inhibit_keeps_out_who_it_does_not_list_even_by_hand(box):
    box.configure(f"may_inhibit: [{GROUP}]\n")
    assert box.run("--for", "1h", user=A).returncode == 0, "A is in the group"
    refused = box.run("--for", "1h", user=B)
    assert refused.returncode == 1 and "may_inhibit" in refused.stderr
    box.configure("may_inhibit: root\n")
    s = box.status()
    assert s["inhibitors"] == [] and "may_inhibit is root" in s["evidence_notes"][0]
    assert box.run("--for", "1h", user=None).returncode == 0, "root always may"


def test_a_tick_waiting_for_the_deadline_wakes_when_an_inhibitor_begins_and_does_not_act(box):
    marker = os.path.join(box.root, "acted")
    noise = 'ignore:\n  networks: [0.0.0.0/0, "::/0"]\n'
    with open(box.config, "w") as f:
        f.write(f'inactivity_duration: 3s\nmin_session: off\naction: ["/usr/bin/touch", "{marker}"]\n{noise}')
    proc = box.start("--", "true")
    assert proc.wait(10) == 0  # its end is the last activity: the deadline is 3 s from now
    argv = [VENV_PYTHON, "-m", "reaper", "--config", box.config, "--state-dir", box.state, "reap", "--wait", "10"]
    reaper = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    time.sleep(1)
    assert box.run("--for", "1h").returncode == 0
    started = time.monotonic()
    _, err = reaper.communicate(timeout=10)
    assert reaper.returncode == 0, err
    assert time.monotonic() - started < 1.5, "the waiting tick saw the inhibitor within its watch interval"
    time.sleep(2.5)
    assert not os.path.exists(marker), "it did not act under the inhibitor"
    assert "inhibited" in err
