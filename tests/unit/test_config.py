import ipaddress
import os
import stat
import subprocess
import textwrap

import pytest

from reaper import config
from reaper.config import schema
from reaper.errors import ConfigError
from tests.conftest import REPO, SYSTEM_PYTHON


@pytest.fixture
def write(tmp_path):
    def write(text, name="config.yaml"):
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return str(path)

    return write


def errors_of(path):
    with pytest.raises(ConfigError) as e:
        config.load(path)
    return str(e.value).splitlines()


def test_minimal_config_gets_the_documented_defaults(write):
    cfg = config.load(write("inactivity_duration: 2h\n"))
    assert cfg.inactivity_duration == 7200
    assert cfg.min_session == 10
    assert cfg.services == ("sshd",)
    assert cfg.ignore_users == frozenset() and cfg.ignore_networks == () and cfg.ignore_keys == frozenset()
    assert cfg.action == ("systemctl", "poweroff")


def test_every_key(write):
    cfg = config.load(
        write(
            """\
            inactivity_duration: 1h30m
            min_session: off
            services: [sshd, sshd-test]
            ignore:
              users: [dstack, ci]
              networks: [10.0.0.5/32, "fd00::/8"]
              keys: ["SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU"]
            action: ["/usr/local/bin/stop-me", "--now"]
            """
        )
    )
    assert cfg.inactivity_duration == 5400
    assert cfg.min_session == 0
    assert cfg.services == ("sshd", "sshd-test")
    assert cfg.ignore_users == {"dstack", "ci"}
    assert cfg.ignore_networks == (ipaddress.ip_network("10.0.0.5/32"), ipaddress.ip_network("fd00::/8"))
    assert cfg.ignore_keys == {"SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU"}
    assert cfg.action == ("/usr/local/bin/stop-me", "--now")


@pytest.mark.parametrize("value", ["off", "false", "'off'"])
def test_off_disables(write, value):
    assert config.load(write(f"inactivity_duration: {value}\n")).inactivity_duration is None


def test_int_seconds(write):
    assert config.load(write("inactivity_duration: 600\n")).inactivity_duration == 600


def test_dstack_dev_environment_is_accepted_verbatim(write):
    cfg = config.load(
        write(
            """\
            type: dev-environment
            name: vscode
            python: "3.11"
            ide: vscode
            inactivity_duration: 2h
            resources:
              gpu: 24GB
            """
        )
    )
    assert cfg.dstack and cfg.inactivity_duration == 7200 and cfg.services == ("sshd",)


def test_dstack_dev_environment_without_the_key_is_off(write):
    assert config.load(write("type: dev-environment\nide: vscode\n")).inactivity_duration is None


@pytest.mark.parametrize(
    "text, line, fragments",
    [
        ("inactivity_duration: 0\n", 1, ["inactivity_duration", "zero; use off", "allowed: off"]),
        ("inactivity_duration: -1\n", 1, ["negative", "allowed"]),
        ("inactivity_duration: '-2h'\n", 1, ["negative"]),
        ("inactivity_duration: yes\n", 1, ["true is not a duration"]),
        ("inactivity_duration: 2 fortnights\n", 1, ["unknown unit"]),
        ("inactivity_duration: [2h]\n", 1, ["sequence is not a duration"]),
        ("inactivity_duration: 1.5\n", 1, ["whole number"]),
        ("\n\ninactivity_duration: 2h\nfoo: 1\n", 4, ["foo: unknown key", "allowed: inactivity_duration, min_session"]),
        ("min_session: 10s\n", None, ["inactivity_duration: required"]),
        ("inactivity_duration: 2h\nmin_session: 0\n", 2, ["min_session", "zero; use off"]),
        ("inactivity_duration: 2h\nservices: sshd\n", 2, ["services: must be a list"]),
        ("inactivity_duration: 2h\nservices: []\n", 2, ["at least one PAM service"]),
        ("inactivity_duration: 2h\nservices: [1]\n", 2, ["non-empty string"]),
        ("inactivity_duration: 2h\nignore: [a]\n", 2, ["ignore: must be a mapping"]),
        ("inactivity_duration: 2h\nignore:\n  hosts: [a]\n", 3, ["ignore.hosts: unknown key", "users, networks, keys"]),
        ("inactivity_duration: 2h\nignore:\n  networks: [10.0.0.300/32]\n", 3, ["ignore.networks", "CIDR"]),
        ("inactivity_duration: 2h\nignore:\n  networks: [10.0.0.5/24]\n", 3, ["has host bits set"]),
        ("inactivity_duration: 2h\nignore:\n  keys: [abc]\n", 3, ["not a SHA256 key fingerprint", "ssh-keygen -lf"]),
        ("inactivity_duration: 2h\nignore:\n  users: dstack\n", 3, ["ignore.users: must be a list"]),
        ("inactivity_duration: 2h\naction: reboot\n", 2, ["action", "'reboot' is not an action"]),
        ("inactivity_duration: 2h\naction: []\n", 2, ["command list is empty"]),
        ("inactivity_duration: 2h\naction: [halt]\n", 2, ["must be an absolute path"]),
        ("inactivity_duration: 2h\ninactivity_duration: 3h\n", 2, ["duplicate key (first at line 1)"]),
        ("inactivity_duration: 2h\n\tmin_session: 3s\n", 2, ["not valid YAML", "tabs"]),
        ("inactivity_duration: [2h\n", 2, ["not valid YAML"]),
        ("- inactivity_duration: 2h\n", 1, ["top level must be a mapping"]),
        ("", None, ["required, and the file is empty"]),
        ("type: task\ninactivity_duration: 2h\n", 1, ["type: 'task' is not accepted", "dev-environment"]),
        ("type: dev-environment\ninactivity_duration: 0\n", 2, ["zero; use off"]),
    ],
)
def test_each_error_is_one_line_with_file_line_key_and_allowed(write, text, line, fragments):
    path = write(text)
    lines = errors_of(path)
    assert len(lines) == 1, lines
    expected_start = f"{path}:{line}: " if line else f"{path}: "
    assert lines[0].startswith(expected_start), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_several_errors_are_all_reported(write):
    lines = errors_of(write("inactivity_duration: 0\nmin_session: -3\nbogus: 1\n"))
    assert len(lines) == 3
    assert [line.split(":")[1] for line in lines] == ["3", "1", "2"] or sorted(
        line.split(":")[1] for line in lines
    ) == ["1", "2", "3"]


def test_missing_file(tmp_path):
    lines = errors_of(str(tmp_path / "nope.yaml"))
    assert lines == [f"{tmp_path / 'nope.yaml'}: no such file (create it with at least 'inactivity_duration: off')"]


def test_a_directory_is_not_a_config(tmp_path):
    assert errors_of(str(tmp_path)) == [f"{tmp_path}: not a regular file"]


def test_huge_file_is_refused_before_parsing(write):
    path = write("inactivity_duration: 2h\n" + "# padding\n" * 10000)
    (line,) = errors_of(path)
    assert "too large" in line


def test_not_utf8(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"inactivity_duration: \xff\n")
    (line,) = errors_of(str(path))
    assert "not UTF-8" in line


def test_a_config_others_can_write_is_refused(write):
    path = write("inactivity_duration: 2h\n")
    os.chmod(path, 0o666)
    (line,) = errors_of(path)
    assert "unsafe" in line and "writable by nobody else" in line


def test_a_config_in_a_directory_others_can_write_is_refused(tmp_path):
    unsafe = tmp_path / "open"
    unsafe.mkdir()
    os.chmod(unsafe, 0o777)
    path = unsafe / "config.yaml"
    path.write_text("inactivity_duration: 2h\n")
    (line,) = errors_of(str(path))
    assert f"directory {unsafe}" in line and "unsafe" in line


def test_sticky_world_writable_parent_is_fine(tmp_path):
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    inner = sticky / "cfg"
    inner.mkdir()
    os.chmod(inner, 0o755)
    (inner / "config.yaml").write_text("inactivity_duration: 2h\n")
    assert config.load(str(inner / "config.yaml")).inactivity_duration == 7200


def test_schema_lists_every_key_the_loader_accepts():
    keys = {o.key for o in schema.SCHEMA}
    assert keys == {"inactivity_duration", "min_session", "services", "ignore.users", "ignore.networks",
                    "ignore.keys", "action", "max_inhibit", "may_inhibit", "max_duration", "max_duration_grace",
                    "notice", "pre_action_timeout", "metrics"}  # fmt: skip


# --- the parse a tick keeps for the next one ---------------------------------------------------------------


@pytest.fixture
def cache_dir(tmp_path):
    d = tmp_path / "state"
    d.mkdir(mode=0o755)
    return str(d)


def test_a_kept_parse_serves_the_unchanged_file_without_yaml(write, cache_dir):
    path = write("inactivity_duration: 2h\nignore:\n  networks: [10.0.0.0/8]\n  users: [ci]\n")
    first = config.load(path, cache_dir=cache_dir, keep=True)
    kept = os.path.join(cache_dir, config.CACHE_FILE)
    assert stat.S_IMODE(os.stat(kept).st_mode) == 0o644
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); from reaper import config\n"
        f"c = config.load({path!r}, cache_dir={cache_dir!r})\n"
        "print(c.inactivity_duration, sorted(c.ignore_users), [str(n) for n in c.ignore_networks],"
        " 'yaml' in sys.modules, 'humanfriendly' in sys.modules)"
    )
    out = subprocess.run([SYSTEM_PYTHON, "-I", "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["7200", "['ci']", "['10.0.0.0/8']", "False", "False"]
    assert config.load(path, cache_dir=cache_dir) == first


def test_an_edit_of_the_same_size_is_seen_at_once(write, cache_dir):
    path = write("inactivity_duration: 1h\n")
    assert config.load(path, cache_dir=cache_dir, keep=True).inactivity_duration == 3600
    with open(path, "w") as f:  # same size, same second: ctime still moves
        f.write("inactivity_duration: 2h\n")
    assert config.load(path, cache_dir=cache_dir, keep=True).inactivity_duration == 7200


def test_a_broken_edit_is_reported_whatever_was_kept(write, cache_dir):
    path = write("inactivity_duration: 1h\n")
    config.load(path, cache_dir=cache_dir, keep=True)
    with open(path, "w") as f:
        f.write("inactivity_duration: 0\n")
    with pytest.raises(ConfigError, match="zero"):
        config.load(path, cache_dir=cache_dir, keep=True)


@pytest.mark.parametrize("tamper", ["writable by others", "garbage", "wrong types"])
def test_a_kept_parse_that_is_not_trustworthy_is_ignored(write, cache_dir, tamper):
    path = write("inactivity_duration: 1h\n")
    config.load(path, cache_dir=cache_dir, keep=True)
    kept = os.path.join(cache_dir, config.CACHE_FILE)
    if tamper == "writable by others":
        with open(kept) as f:
            text = f.read().replace("3600", "60")
        with open(kept, "w") as f:
            f.write(text)
        os.chmod(kept, 0o666)
    elif tamper == "garbage":
        with open(kept, "w") as f:
            f.write("{nope")
    else:
        with open(kept) as f:
            text = f.read().replace("3600", '"3600"')
        with open(kept, "w") as f:
            f.write(text)
    assert config.load(path, cache_dir=cache_dir).inactivity_duration == 3600
