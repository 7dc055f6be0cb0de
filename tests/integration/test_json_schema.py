"""Every --json output is held to the JSON Schema the package ships (issue 13): status and history from a
real sshd's session and a real tick, and inhibit --list once that command is in the tree."""

import json
import time

import jsonschema
import pytest

from reaper import cli
from tests.conftest import REPO
from tests.integration.sshd import Sshd, end, idle_reaper, wait_for

SCHEMAS = REPO / "packaging" / "schema"
READY = "ready"
HOLD = f"echo {READY}; read x"


def validator(name):
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def held_to(name, doc):
    errors = sorted(validator(name).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


@pytest.fixture
def isolated_sshd(require_root, users, state_dir):
    server = Sshd(users, state_dir, netns=True)
    yield server
    server.stop()


@pytest.mark.parametrize("name", ["status", "history", "inhibit-list"])
def test_each_shipped_schema_is_a_valid_schema(name):
    validator(name)


def test_status_and_history_json_are_held_to_their_schemas(isolated_sshd, config, state_dir):
    sshd = isolated_sshd
    config("inactivity_duration: 1w\nmin_session: 1s\nignore:\n  users: [irt-ci]\n")

    def run(*args, user=None):
        done = idle_reaper(config.path, state_dir, *args, user=user, enter=sshd.enter)
        assert done.returncode == 0, done.stderr
        return done.stdout

    st = json.loads(run("status", "--json", user="irt-bob"))
    held_to("status", st)  # no state file yet
    run("reap")
    alice = sshd.start("irt-alice", HOLD, ready=READY)
    ci = sshd.start("irt-ci", HOLD, ready=READY)
    time.sleep(1.2)
    run("reap")
    st = json.loads(run("status", "--json", user="irt-bob"))
    assert st["state"] == "active" and len(st["sessions"]) == 2
    held_to("status", st)
    end(alice)
    end(ci)
    wait_for(lambda: json.loads(run("status", "--json"))["state"] == "idle")
    run("reap")
    st = json.loads(run("status", "--json"))
    assert st["seconds_until_action"] is not None
    held_to("status", st)
    view = json.loads(run("history", "--json", "--since", "2h", user="irt-bob"))
    assert {s["kind"] for s in view["stretches"]} == {"active", "idle"}
    held_to("history", view)
    held_to("history", json.loads(run("history", "--json", "--since", "5m", "--shorter", "1h")))


def test_inhibit_list_json_is_held_to_its_schema(isolated_sshd, config, state_dir):
    if "inhibit" not in cli.COMMANDS:
        # `idle-reaper inhibit` is on its own branch; until it is merged, hold a document of the shape that
        # branch prints (reaper/commands/inhibit.py _entry_json) to the schema, so the two meet in step.
        held_to("inhibit-list", {"inhibitors": [{"kind": "inhibitor", "id": "1-abc", "user": "dev", "why": "a build",
                "since": "2026-12-01T10:00:00+00:00", "until": None, "capped": False, "pid": 4242, "mine": True}],
                "notes": []})  # fmt: skip
        return
    done = idle_reaper(config.path, state_dir, "inhibit", "--list", "--json", enter=isolated_sshd.enter)
    assert done.returncode == 0, done.stderr
    held_to("inhibit-list", json.loads(done.stdout))
