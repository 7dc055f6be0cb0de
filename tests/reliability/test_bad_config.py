"""A corpus of broken configs: one clear line each, a non-zero exit, no action, the last good state untouched."""

import os

import pytest

from reaper.state import leases
from tests.integration.sshd import idle_reaper
from tests.reliability.conftest import due_config

# name -> (file content, or a special value; the line the error must name, or None; words the line must hold)
CORPUS = {
    "bad YAML": ("inactivity_duration: [2h\n", 2, ["not valid YAML"]),
    "unclosed quote": ('inactivity_duration: "2h\n', 2, ["not valid YAML"]),
    "tabs": ("inactivity_duration: 2h\nignore:\n\tusers: [a]\n", 3, ["tabs"]),
    "duplicate keys": ("inactivity_duration: 2h\ninactivity_duration: 1h\n", 2, ["duplicate key"]),
    "duplicate nested keys": ("inactivity_duration: 2h\nignore:\n  users: []\n  users: []\n", 4, ["duplicate"]),
    "unknown key": ("inactivity_duration: 2h\ninactivity: 1h\n", 2, ["inactivity: unknown key", "allowed"]),
    "unknown nested key": ("inactivity_duration: 2h\nignore:\n  ips: []\n", 3, ["ignore.ips: unknown key"]),
    "bad duration": ("inactivity_duration: soon\n", 1, ["inactivity_duration", "allowed: off"]),
    "bad unit": ("inactivity_duration: 2 lightyears\n", 1, ["unknown unit"]),
    "zero": ("inactivity_duration: 0\n", 1, ["use off"]),
    "zero string": ("inactivity_duration: 0s\n", 1, ["use off"]),
    "negative": ("inactivity_duration: -60\n", 1, ["negative"]),
    "negative min_session": ("inactivity_duration: 1h\nmin_session: -1s\n", 2, ["min_session", "negative"]),
    "true": ("inactivity_duration: true\n", 1, ["not a duration"]),
    "list duration": ("inactivity_duration: [1h]\n", 1, ["not a duration"]),
    "services not a list": ("inactivity_duration: 1h\nservices: sshd\n", 2, ["services: must be a list"]),
    "services empty": ("inactivity_duration: 1h\nservices: []\n", 2, ["at least one"]),
    "users not strings": ("inactivity_duration: 1h\nignore:\n  users: [1]\n", 3, ["ignore.users"]),
    "bad CIDR": ("inactivity_duration: 1h\nignore:\n  networks: [10.0.0.0/33]\n", 3, ["ignore.networks"]),
    "CIDR with host bits": ("inactivity_duration: 1h\nignore:\n  networks: [10.0.0.1/8]\n", 3, ["host bits"]),
    "bad key fingerprint": ("inactivity_duration: 1h\nignore:\n  keys: [MD5:aa:bb]\n", 3, ["SHA256"]),
    "relative action": ("inactivity_duration: 1h\naction: [poweroff]\n", 2, ["absolute path"]),
    "unknown action": ("inactivity_duration: 1h\naction: halt\n", 2, ["not an action"]),
    "top level a list": ("- inactivity_duration: 1h\n", 1, ["mapping"]),
    "empty file": ("", None, ["required", "empty"]),
    "only a comment": ("# nothing\n", None, ["required"]),
    "missing key": ("min_session: 1s\n", None, ["inactivity_duration: required"]),
    "huge file": ("inactivity_duration: 1h\n" + "#" * 100_000 + "\n", None, ["too large"]),
    "a directory": ("<dir>", None, ["not a regular file"]),
    "a missing file": ("<missing>", None, ["no such file"]),
    "dstack of another type": ("type: task\ncommands: [make]\ninactivity_duration: 1h\n", 1, ["dev-environment"]),
    "binary": ("<binary>", None, ["not UTF-8"]),
}


def write_config(path, content):
    if content == "<dir>":
        os.mkdir(path)
    elif content == "<binary>":
        with open(path, "wb") as f:
            f.write(b"\xff\xfe\x00inactivity")
    elif content != "<missing>":
        with open(path, "w") as f:
            f.write(content)


def test_the_corpus_has_at_least_25_configs():
    assert len(CORPUS) >= 25


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_a_broken_config_gets_one_clear_line_a_nonzero_exit_and_no_action(
    require_root, workdir, state_dir, config, marker, name
):
    content, line, words = CORPUS[name]
    # First a good tick, so there is a last good state to keep.
    config(due_config(marker, "min_session: 1h\n").replace("min_session: off\n", ""))
    assert idle_reaper(config.path, state_dir, "reap").returncode in (0, 4)
    os.path.exists(marker) and os.unlink(marker)
    with open(leases.state_path(state_dir), "rb") as f:
        good_state = f.read()

    broken = os.path.join(workdir, "broken.yaml")
    write_config(broken, content)
    for command in (["check-config"], ["reap"], ["status"]):
        done = idle_reaper(broken, state_dir, *command)
        assert done.returncode == 3, (command, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"idle-reaper: {broken}" + (f":{line}: " if line else ": ")), lines[0]
        for word in words:
            assert word in lines[0], (word, lines[0])
        assert done.stdout == ""
    assert not os.path.exists(marker), "an action ran on a broken config"
    with open(leases.state_path(state_dir), "rb") as f:
        assert f.read() == good_state, "the last good state changed"


def test_an_unreadable_config_is_one_line_for_a_non_root_user(require_root, users, workdir, state_dir):
    path = os.path.join(workdir, "secret.yaml")
    with open(path, "w") as f:
        f.write("inactivity_duration: 1h\n")
    os.chmod(path, 0o600)
    done = idle_reaper(path, state_dir, "check-config", user="irt-bob")
    assert done.returncode == 3 and done.stderr.strip() == f"idle-reaper: {path}: cannot open: Permission denied"


@pytest.mark.parametrize("target", ["file", "directory"])
def test_a_config_a_non_root_user_could_change_is_refused(require_root, workdir, state_dir, marker, target):
    d = os.path.join(workdir, "conf")
    os.mkdir(d)
    path = os.path.join(d, "config.yaml")
    with open(path, "w") as f:
        f.write(due_config(marker))
    os.chmod(path, 0o666 if target == "file" else 0o644)
    os.chmod(d, 0o755 if target == "file" else 0o777)
    done = idle_reaper(path, state_dir, "reap")
    assert done.returncode == 3 and "unsafe" in done.stderr and not os.path.exists(marker)
