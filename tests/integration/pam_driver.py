"""Drive a real PAM stack with python-pam: one PAM handle, then open_session / close_session as asked.

Run inside a mount namespace where /etc/pam.d holds the test service (see pamstack.py). Prints JSON results.
Argument: a file holding JSON {"user", "service", "rhost", "tty", "env": {...}, "steps": [...]}, where each step
is "open", "close", "sleep:SECONDS" or "wait-stdin".
Strings may be given as {"hex": "..."} for bytes that are not UTF-8.
"""

import ctypes
import json
import sys
import time

import pam


def as_bytes(value):
    if isinstance(value, dict):
        return bytes.fromhex(value["hex"])
    return value.encode("utf-8", "surrogateescape")


def main():
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    p = pam.pam()
    ok = p.authenticate(as_bytes(spec["user"]), b"", service=spec["service"], call_end=False)
    for name, value in spec.get("env", {}).items():  # pam_putenv itself: python-pam's wrapper needs UTF-8
        assert p.pam_putenv(p.handle, as_bytes(name) + b"=" + as_bytes(value)) == 0
    if spec.get("rhost") is not None:
        p.pam_set_item(p.handle, pam.PAM_RHOST, ctypes.c_char_p(as_bytes(spec["rhost"])))
    if spec.get("tty") is not None:
        p.pam_set_item(p.handle, pam.PAM_TTY, ctypes.c_char_p(as_bytes(spec["tty"])))
    results = {"auth": ok, "steps": []}
    for step in spec["steps"]:
        if step == "open":
            results["steps"].append(p.open_session())
        elif step == "close":
            results["steps"].append(p.close_session())
        elif step.startswith("sleep:"):
            time.sleep(float(step.split(":", 1)[1]))
        elif step == "wait-stdin":
            sys.stdin.readline()
    p.end()
    sys.stdout.write(json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
