"""The .deb as built: lintian-clean, the layout DESIGN.md lists, units that verify and stay hardened, and docs
(sample config, man page) in step with the code. None of these need root."""

import ast
import configparser
import datetime
import email.utils
import gzip
import io
import re
import shlex
import subprocess
import sys
import tarfile

import pytest

import reaper
from reaper import actions, config, errors
from reaper.config import schema
from tests.conftest import REPO
from tests.package.conftest import PACKAGE

PACKAGING = REPO / "packaging"
DEBIAN = PACKAGING / "debian"
MANPAGE = PACKAGING / "idle-reaper.8"
INSTALLED_MANPAGE = "./usr/share/man/man8/idle-reaper.8.gz"
SAMPLE_CONFIG = PACKAGING / "config.yaml"
PRIVATE = "./usr/share/idle-reaper/"
# What pam_exec runs (packaging/pam-configs/idle-reaper): the static launcher of the Python hook.
LAUNCHER = "/usr/libexec/idle-reaper/pam-session"
# The worst `systemd-analyze security` exposure the service may have: 1.6 ("OK") since issue 10 (was 2.5).
MAX_EXPOSURE = 1.6


def _contents(deb):
    """Return {path: (mode string, link target or None)} of the files in the .deb."""
    out = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    files = {}
    for line in out.splitlines():
        mode, _owner, _size, _date, _time, rest = line.split(None, 5)
        path, _, target = rest.partition(" -> ")
        files[path.rstrip("/") or "."] = (mode, target or None)
    return files


def _control_file(deb, name):
    return subprocess.run(["dpkg-deb", "--info", str(deb), name], capture_output=True, text=True, check=True).stdout


def _unit(name):
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str
    parser.read(DEBIAN / name)
    return parser


def test_package_version_is_the_code_version(deb):
    assert deb.version == reaper.__version__


def test_lintian_is_clean(deb):
    # Both levels: `--fail-on warning` alone exits 0 on errors.
    done = subprocess.run(
        ["lintian", "--color=never", "--fail-on", "error,warning", "--display-info", str(deb.changes)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    tags = [line for line in done.stdout.splitlines() if re.match(r"^[EWIPOX]: ", line)]
    assert done.returncode == 0, done.stdout + done.stderr
    assert not [t for t in tags if t[0] in "EW"], tags


def test_every_lintian_override_says_why():
    for overrides in DEBIAN.glob("*lintian-overrides"):
        lines = overrides.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.strip() and not line.startswith("#"):
                assert i > 0 and lines[i - 1].startswith("#"), f"{overrides}:{i + 1}: an override needs a comment"


def test_package_holds_the_installed_layout(deb):
    files = _contents(deb.deb)
    executables = [
        "./usr/bin/idle-reaper",
        PRIVATE + "hooks/pam-session",
        "." + LAUNCHER,
    ]
    plain = [
        "./usr/lib/systemd/system/idle-reaper.service",
        "./usr/lib/systemd/system/idle-reaper.timer",
        "./usr/lib/systemd/system/idle-reaper.path",
        "./usr/lib/systemd/system/idle-reaper-action.service",
        "./usr/share/pam-configs/idle-reaper",
        "./etc/idle-reaper/config.yaml",
        "./etc/ssh/sshd_config.d/idle-reaper.conf",
        "./usr/share/man/man8/idle-reaper.8.gz",
        "./usr/lib/tmpfiles.d/idle-reaper.conf",
        "./usr/share/doc/idle-reaper/copyright",
        "./usr/share/doc/idle-reaper/examples/idle-reaper.rules.yml",
        *(PRIVATE + f"schema/{name}.schema.json" for name in ("status", "history", "inhibit-list")),
    ]
    sources = (p for p in (REPO / "reaper").rglob("*.py") if "__pycache__" not in p.parts)
    plain += [PRIVATE + str(p.relative_to(REPO)) for p in sources]
    for path in executables:
        assert path in files, path
        assert files[path][0] == "-rwxr-xr-x", (path, files[path])
    for path in plain:
        assert path in files, path
        assert files[path][0] == "-rw-r--r--", (path, files[path])
    # Nothing under /lib, /bin or /sbin: they are symlinks into /usr on a merged-/usr system (every trixie, every
    # fresh bookworm), and trixie's lintian calls a path through them aliased-location, an error.
    aliased = [p for p in files if p.split("/")[1:2] in (["lib"], ["bin"], ["sbin"], ["lib64"])]
    assert aliased == [], aliased
    # Private, as Debian's Python policy asks of an application; byte-compiled at install, not shipped.
    assert not [p for p in files if "/dist-packages" in p or "/site-packages" in p]
    assert not [p for p in files if "__pycache__" in p or p.endswith(".pyc") or ".dist-info" in p]
    assert sorted(_control_file(deb.deb, "conffiles").split()) == [
        "/etc/idle-reaper/config.yaml",
        "/etc/ssh/sshd_config.d/idle-reaper.conf",
    ]


def test_control_fields(deb):
    fields = dict(
        line.split(": ", 1)
        for line in subprocess.run(
            ["dpkg-deb", "-f", str(deb.deb), "Package", "Architecture", "Depends"], capture_output=True, text=True
        ).stdout.splitlines()
    )
    assert fields["Package"] == PACKAGE
    # Architecture any, for the launcher; built for this machine.
    host = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout
    assert fields["Architecture"] == host.strip()
    depends = {d.split()[0] for d in fields["Depends"].split(", ")}
    for needed in (
        "python3:any",
        "python3-filelock",
        "python3-yaml",
        "python3-humanfriendly",
        "libpam-modules",
        "libpam-runtime",
    ):
        assert needed in depends, fields["Depends"]
    source = (DEBIAN / "control").read_text()
    assert "\nRules-Requires-Root: no\n" in source
    assert "\nArchitecture: any\n" in source
    assert "musl-tools," in source
    assert "debhelper-compat (= 13)" in source
    assert "dh $@ --buildsystem=pybuild" in (DEBIAN / "rules").read_text()


def test_maintainer_scripts_manage_pam_and_never_start_the_service(deb):
    postinst = _control_file(deb.deb, "postinst")
    prerm = _control_file(deb.deb, "prerm")
    postrm = _control_file(deb.deb, "postrm")
    assert "pam-auth-update --package\n" in postinst
    assert "pam-auth-update --package --remove idle-reaper" in prerm
    for script in (postinst, prerm, postrm):
        assert "--force" not in script
    # dh_installsystemd was given only the timer and the path unit: the service is neither enabled nor started.
    assert "'idle-reaper.timer'" in postinst and "'idle-reaper.path'" in postinst
    assert "idle-reaper.service" not in postinst
    assert "idle-reaper-action.service" not in postinst, "the action's unit is started only by a tick"


def test_the_sshd_drop_in_ends_vanished_clients_and_postinst_reloads_only_a_running_sshd(deb):
    drop_in = (PACKAGING / "sshd_config.d" / "idle-reaper.conf").read_text()
    settings = [line.split() for line in drop_in.splitlines() if line.strip() and not line.startswith("#")]
    assert settings == [["ClientAliveInterval", "30"], ["ClientAliveCountMax", "4"]]
    postinst = _control_file(deb.deb, "postinst")
    # Not in an image build (no systemd running) and not when sshd doesn't run; policy-rc.d is asked.
    assert "[ -d /run/systemd/system ] && systemctl --quiet is-active ssh.service" in postinst
    assert "deb-systemd-invoke reload ssh.service" in postinst


def test_timer_cadence_lands_the_action_on_the_deadline():
    timer, service = _unit("idle-reaper.timer"), _unit("idle-reaper.service")
    t = timer["Timer"]
    assert "OnBootSec" not in t, "a timer started late with OnBootSec elapses at once: the postinst would reap"
    assert "RandomizedDelaySec" not in t
    assert t["OnActiveSec"] == "15s"
    interval, accuracy = int(t["OnUnitInactiveSec"].rstrip("s")), int(t["AccuracySec"].rstrip("s"))
    assert (interval, accuracy) == (60, 1)
    s = service["Service"]
    assert s["Type"] == "oneshot"
    argv = s["ExecStart"].split()
    assert argv[:2] == ["/usr/bin/idle-reaper", "reap"]
    wait = int(argv[argv.index("--wait") + 1])
    # Every deadline falls inside the --wait window of some tick, so the action never waits for the next one.
    assert wait >= interval + accuracy
    timeout_minutes = int(s["TimeoutStartSec"].removesuffix("min"))
    assert timeout_minutes * 60 >= wait + actions.ACTION_TIMEOUT
    assert "Install" not in service, "only the timer and the path unit start the service"
    assert timer["Install"]["WantedBy"] == "timers.target"
    assert service["Unit"]["StartLimitIntervalSec"] == "0", "a login burst must not fail the path unit"


def test_path_unit_starts_a_tick_when_a_session_opens_or_closes():
    path = _unit("idle-reaper.path")
    text = (DEBIAN / "idle-reaper.path").read_text()
    watched = [line.split("=", 1)[1] for line in text.splitlines() if line.startswith("PathChanged=")]
    # the state file (sessions), and the inhibitors directory (an inhibitor begins or ends)
    assert watched == ["/run/idle-reaper/state.json", "/run/idle-reaper/inhibitors"]
    assert path["Path"]["Unit"] == "idle-reaper.service"
    assert path["Install"]["WantedBy"] == "paths.target"


def test_service_hardening_scores_ok(record_property):
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(DEBIAN / "idle-reaper.service")],
        capture_output=True,
        text=True,
    )
    match = re.search(r"Overall exposure level for idle-reaper.service: ([\d.]+) (\w+)", done.stdout)
    assert match, done.stdout + done.stderr
    exposure, level = float(match[1]), match[2]
    record_property("systemd_security_exposure", f"{exposure} {level}")
    sys.stderr.write(f"systemd-analyze security: idle-reaper.service exposure {exposure} {level}\n")
    assert level in ("OK", "SAFE", "PERFECT"), done.stdout
    assert exposure <= MAX_EXPOSURE, done.stdout


def test_service_keeps_what_the_reaper_needs():
    s = _unit("idle-reaper.service")["Service"]
    # (a) sshd's non-dumpable processes, (b) the host's /proc/net (ProcSubset=pid would hide it), (c) sockets
    # over netlink and systemd over AF_UNIX, and nothing else: a command action that needs the network runs in
    # idle-reaper-action.service.
    assert s["CapabilityBoundingSet"] == "CAP_SYS_PTRACE"
    assert "ProcSubset" not in s
    assert s["RestrictAddressFamilies"] == "AF_UNIX AF_NETLINK" and s["IPAddressDeny"] == "any"
    assert (s["ProtectProc"], s["ProtectKernelTunables"], s["ProtectControlGroups"]) == ("invisible", "yes", "yes")
    action = _unit("idle-reaper.idle-reaper-action.service")
    assert action["Service"]["ExecStart"] == "/usr/bin/idle-reaper run-action" and "Install" not in action
    assert "IPAddressDeny" not in action["Service"] and "RestrictAddressFamilies" not in action["Service"]
    for hides_host in ("PrivateNetwork", "PrivateUsers", "NetworkNamespacePath", "RootDirectory"):
        assert hides_host not in s
    assert s["ProtectSystem"] == "strict"
    assert s["RuntimeDirectory"] == "idle-reaper" and s["RuntimeDirectoryPreserve"] == "yes"
    assert s["RuntimeDirectoryMode"] == "0755"
    # The history survives reboots in /var/lib/idle-reaper; the metrics may go to Debian's textfile dir.
    assert (s["StateDirectory"], s["StateDirectoryMode"]) == ("idle-reaper", "0755")
    # configparser keeps the last of repeated keys; systemd adds them all up.
    lines = [line for line in (DEBIAN / "idle-reaper.service").read_text().splitlines()]
    writable = [line.split("=", 1)[1] for line in lines if line.startswith("ReadWritePaths=")]
    assert writable == ["-/var/lib/prometheus/node-exporter", "-/run/motd.d"], "nothing else is writable"
    assert "AF_UNIX" in s["RestrictAddressFamilies"].split()


def test_tmpfiles_entries_give_the_state_dir_and_the_notice_dir_their_modes():
    entries = [
        line.split()
        for line in (DEBIAN / "idle-reaper.tmpfiles").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert entries == [
        ["d", "/run/idle-reaper", "0755", "root", "root", "-"],
        ["d", "/run/idle-reaper/inhibitors", "1777", "root", "root", "-"],
        ["d", "/run/motd.d", "0755", "root", "root", "-"],
    ]


def test_sample_config_and_man_page_are_in_step_with_the_schema():
    done = subprocess.run(
        ["/usr/bin/python3", str(PACKAGING / "gen_reference.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_sample_config_is_off_and_its_commented_keys_are_the_defaults(tmp_path):
    shipped = config.load(str(SAMPLE_CONFIG), check_owner=False)
    assert shipped.inactivity_duration is None
    # Uncomment every example key ("#key:" or "#  key:", not "# prose"): a valid config equal to the defaults.
    text = SAMPLE_CONFIG.read_text()
    uncommented = "\n".join(line[1:] if re.match(r"#(\S|  \S)", line) else line for line in text.splitlines())
    path = tmp_path / "config.yaml"
    path.write_text(uncommented)
    everything = config.load(str(path), check_owner=False)
    assert everything == schema.Config(path=str(path), inactivity_duration=None)
    keys = {o.key for o in schema.SCHEMA}
    parents = {k.split(".")[0] for k in keys if "." in k}
    shown = (set(re.findall(r"^#(\w+):", text, re.M)) - parents) | {"inactivity_duration"}
    shown |= {f"ignore.{k}" for k in re.findall(r"^#  (\w+):", text, re.M)}
    assert shown == keys


def _man_text():
    """The man page as plain text, roughly: escapes and font changes gone, one line per source line."""
    text = MANPAGE.read_text()
    text = re.sub(r"\\f[BIRP]", "", text).replace("\\-", "-").replace("\\(dq", '"').replace("\\&", "")
    return text


def _section(text, title):
    match = re.search(rf"^\.SH {re.escape(title)}\n(.*?)(?=^\.SH |\Z)", text, re.M | re.S)
    assert match, f"no section {title} in {MANPAGE}"
    return match[1]


def _dict_keys(function):
    """Return the string keys of the dict literals in a function of reaper/commands/status.py."""
    tree = ast.parse((REPO / "reaper" / "commands" / "status.py").read_text())
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function)
    return {k.value for d in ast.walk(node) if isinstance(d, ast.Dict) for k in d.keys if isinstance(k, ast.Constant)}


def test_man_page_documents_every_key_exit_code_status_field_and_option():
    text = _man_text()
    for option in schema.SCHEMA:
        assert f".B {option.key}\n" in _section(text, "CONFIGURATION"), option.key
    exits = _section(text, "EXIT STATUS")
    codes = {name: value for name, value in vars(errors).items() if name.startswith("EXIT_")}
    for name, value in codes.items():
        assert f".B {value}\n" in exits, name
    status_json = _section(text, "STATUS JSON")
    for field in _dict_keys("build") | _dict_keys("_session_json"):
        assert re.search(rf"\b{field}\b", status_json), f"status field {field!r} is not in STATUS JSON"
    from reaper import cli

    parser = cli.get_parser()
    options = {s for a in parser._actions for s in a.option_strings}
    for sub in parser._subparsers._group_actions[0].choices.values():
        options |= {s for a in sub._actions for s in a.option_strings}
    for command in parser._subparsers._group_actions[0].choices:
        assert f".B {command}" in text, command
    for option in options:
        assert option in text, option


def _title(text):
    """Return the fields of a man page's .TH line: name, section, date, source, manual."""
    (title,) = [line for line in text.splitlines() if line.startswith(".TH ")]
    return shlex.split(title.replace("\\-", "-"))[1:]


def _from_deb(deb, path):
    """Return the contents of a gzipped file in the .deb (path as dpkg-deb lists it), decompressed, as text."""
    tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        return gzip.decompress(archive.extractfile(path).read()).decode()


def test_man_page_leaves_its_date_and_version_to_the_build():
    # packaging/build-deb fills them from debian/changelog; a hand-kept value would drift.
    title = _title(MANPAGE.read_text())
    assert title == ["IDLE-REAPER", "8", "@DATE@", "idle-reaper @VERSION@", "System Administration"]


def test_man_page_names_the_code_version(deb):
    title = _title(_from_deb(deb.deb, INSTALLED_MANPAGE))
    assert title[3] == f"idle-reaper {reaper.__version__}"


@pytest.mark.parametrize("build", ["deb", "deb_upgrade"])
def test_built_man_page_has_the_changelog_entrys_version_and_date(request, build):
    # The tree's entry, and the one build-deb --version adds (dated at build time): each build's own.
    built = request.getfixturevalue(build)
    changelog = _from_deb(built.deb, "./usr/share/doc/idle-reaper/changelog.gz")
    version = re.match(r"idle-reaper \(([^)]+)\) ", changelog)[1]
    trailer = next(line for line in changelog.splitlines() if line.startswith(" -- "))
    date = email.utils.parsedate_to_datetime(trailer.split("  ", 1)[1]).astimezone(datetime.UTC).date()
    title = _title(_from_deb(built.deb, INSTALLED_MANPAGE))
    assert (title[2], title[3]) == (date.isoformat(), f"idle-reaper {version}")
    assert version == built.version


def test_man_page_renders_without_warnings():
    done = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z", str(MANPAGE)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
    )
    assert done.returncode == 0 and not done.stderr, done.stderr


@pytest.mark.parametrize("unit", ["idle-reaper.service", "idle-reaper.timer", "idle-reaper.path"])
def test_units_point_to_the_man_page(unit):
    assert _unit(unit)["Unit"]["Documentation"] == "man:idle-reaper(8)"


def test_pam_profile_adds_an_optional_quiet_hook_for_interactive_sessions():
    fields = {}
    key = None
    for line in (PACKAGING / "pam-configs" / "idle-reaper").read_text().splitlines():
        if line.startswith("\t"):
            fields[key] += line.strip()
        else:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    assert fields["Default"] == "yes"
    assert fields["Session-Interactive-Only"] == "yes"
    assert fields["Session-Type"] == "Additional"
    assert fields["Session"].split() == [
        "optional",
        "pam_exec.so",
        "quiet",
        LAUNCHER,
    ]
