"""`make demo`: watch idle-reaper power off a throwaway Debian machine nobody uses any more.

It boots a Debian 12 system under systemd-nspawn with the freshly built package and a 20 s inactivity_duration,
logs in over SSH, shows `idle-reaper status` while connected, disconnects, shows the countdown, and waits for the
machine to power itself off. It ends with one line: how long the machine was idle, and how late the poweroff was.
Exit status 0 if it powered off on time, 1 if not. Run it as root: `make demo` (or python -m tests.system.demo).
"""

import os
import sys
import textwrap
import time

from tests import debroot
from tests.system import harness, scenarios

DURATION = 20
MIN_SESSION = 5
CONFIG = f"inactivity_duration: {DURATION}s\nmin_session: {MIN_SESSION}s\n"
LATE_OK = 3.0
USER = "dev"


class Story:
    """Prints the demo as it happens, each line stamped with the seconds since the machine booted."""

    def __init__(self):
        self.booted = None

    def say(self, text):
        stamp = f"[{harness.now() - self.booted:+6.1f}s]" if self.booted is not None else "[      ]"
        print(f"{stamp} {text}", flush=True)

    def show(self, prompt, output):
        print(textwrap.indent(f"{prompt}\n{output.rstrip()}", "          "), flush=True)


def _state_line(text):
    return next((line for line in text.splitlines() if line.startswith("State:")), text.strip())


def run(story):
    if not debroot.entry_dir().joinpath("rootfs").is_dir():
        story.say("first run: debootstrapping a Debian bookworm rootfs (a minute or two; cached for next time)")
    deb = harness.find_deb()
    story.say(f"installing {deb.name} into a throwaway copy of it, as an image builder would")
    with harness.Image.build(deb) as image, image.machine(CONFIG) as m:
        story.say(f"config: {CONFIG.strip().replace(chr(10), ', ')}; booting it with systemd-nspawn")
        m.boot()
        story.booted = m.booted
        story.say(f"booted: systemd is running, sshd listens on 127.0.0.1:{m.port}")

        m.inside(["systemctl", "start", "--no-block", "idle-reaper.service"])  # a tick writes the login notice
        scenarios.wait_notice(m, lambda text: text is not None)
        shown = scenarios.interactive_login(m, USER)
        notice = [line for line in shown.splitlines() if line.startswith(("idle-reaper:", "Now:"))]
        story.show(f"{USER} logs in interactively (ssh -t) and reads the login notice:", "\n".join(notice) or shown)

        session = m.ssh(USER)
        story.say(f"{USER} logged in: ssh -p {m.port} {USER}@127.0.0.1")
        time.sleep(MIN_SESSION + 1)  # a session counts once it has been open for min_session
        story.say(f"{USER} checks the policy on the machine:")
        story.show(f"{USER}$ idle-reaper status", session.run("idle-reaper status"))

        logging_out = harness.now()
        session.close()
        end = m.session_end(USER, after=logging_out)  # not the close of the interactive login above
        deadline = end + DURATION
        story.say(f"{USER} logged out. Nobody is connected now; the countdown starts")
        story.show("root# idle-reaper status", m.status_text())
        while deadline - harness.now() > 6 and not m.wait_exit(5):
            try:
                story.say(f"root# idle-reaper status   -> {_state_line(m.status_text())}")
            except AssertionError:
                if m.running:
                    raise

        timing = m.wait_poweroff(deadline, late_limit=75)
        if timing.exited_at is None:
            story.say("the machine is still up: it did not power itself off")
        else:
            story.say("the machine powered itself off (systemd-nspawn exited with status 0)")
            if timing.late < 0:
                story.say(f"... {-timing.late:.1f}s BEFORE the deadline: it should have waited")
        log = m.journal_text()
        story.show("what idle-reaper logged on the machine (journalctl):", log)
    return end, timing


def main():
    if os.geteuid() != 0:
        print("make demo boots a machine with systemd-nspawn: run it as root", file=sys.stderr)
        return 1
    print(f"idle-reaper demo: power off a Debian machine {DURATION}s after its last SSH session ends", flush=True)
    story = Story()
    end, timing = run(story)
    if timing.exited_at is None:
        print(f"Summary: NOT powered off: {timing.describe()}", flush=True)
        return 1
    idle = timing.exited_at - end
    ok = timing.action_at is not None and timing.action_late >= 0 and 0 <= timing.late <= LATE_OK
    verdict = "on time" if ok else "NOT on time (early or late): a bug"
    print(
        f"Summary: idle {idle:.1f}s after the last session ended (inactivity_duration {DURATION}s);"
        f" powered off {timing.late:+.2f}s from the deadline, {verdict}.",
        flush=True,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
