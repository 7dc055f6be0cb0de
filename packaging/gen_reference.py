#!/usr/bin/python3
"""Write the config reference the package ships from reaper.config.SCHEMA, the single source for config keys.

    packaging/gen_reference.py           rewrite packaging/config.yaml and the keys section of idle-reaper.8
    packaging/gen_reference.py --check   exit 1 if either is out of step with SCHEMA (tests/package runs this)

The sample config is the whole of packaging/config.yaml. In the man page only the part between the
BEGIN and END markers is generated; the rest is written by hand.
"""

import argparse
import pathlib
import sys
import textwrap

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from reaper.config.schema import SCHEMA  # noqa: E402

CONFIG = HERE / "config.yaml"
MANPAGE = HERE / "idle-reaper.8"
BEGIN = '.\\" BEGIN config keys: generated from reaper/config/schema.py SCHEMA by packaging/gen_reference.py'
END = '.\\" END config keys'
WIDTH = 100

CONFIG_HEAD = """\
# /etc/idle-reaper/config.yaml: when idle-reaper powers this machine off. See idle-reaper(8).
#
# It is read afresh on every tick of idle-reaper.timer, so a change applies within a minute, without a
# restart. Check it with: idle-reaper check-config
# A dstack dev-environment configuration (type: dev-environment) is also accepted as it is.
"""
CONFIG_OFF = """\
# Off until you set a duration, so that installing the package never powers anything off.
"""
CONFIG_REST = """\

# The other keys, with their defaults. To change one, remove the '#' in front of it (and of its parent).
"""


def _comment(text, indent="# "):
    width = WIDTH - len(indent)
    return [indent + line for line in textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=False)]


def _help(option):
    return [*_comment(f"{option.key}: {option.help}"), *_comment(f"Allowed: {option.allowed}.", "#   ")]


def config_text(schema=SCHEMA):
    """Return the sample config: the first key set (inactivity_duration: off), every other key commented out."""
    first, *rest = schema
    lines = [CONFIG_HEAD.rstrip("\n"), "#", *_help(first), CONFIG_OFF.rstrip("\n"), f"{first.key}: {first.sample}"]
    lines.append(CONFIG_REST.rstrip("\n"))
    groups = {}  # parent key -> its options, in SCHEMA order; top-level keys are their own group
    for option in rest:
        groups.setdefault(option.key.split(".", 1)[0], []).append(option)
    for parent, options in groups.items():
        lines.append("#")
        for option in options:
            lines.extend(_help(option))
        if len(options) == 1 and options[0].key == parent:
            lines.append(f"#{parent}: {options[0].sample}")
        else:
            lines.append(f"#{parent}:")
            lines.extend(f"#  {o.key.split('.', 1)[1]}: {o.sample}" for o in options)
    return "\n".join(lines) + "\n"


def _roff(text):
    """Escape text for a roff body line."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def manpage_keys(schema=SCHEMA):
    """Return the roff lines describing every config key, for between the markers."""
    lines = [BEGIN]
    for option in schema:
        lines += [".TP", f".B {option.key}", _roff(option.help), ".br", "Allowed: " + _roff(option.allowed) + "."]
        if option.key != schema[0].key:
            lines += [".br", f"Default: \\fB{_roff(option.sample)}\\fR."]
        else:
            lines += [".br", f"The package ships \\fB{_roff(option.key)}: {_roff(option.sample)}\\fR."]
    lines.append(END)
    return lines


def manpage_text(current, schema=SCHEMA):
    """Given the man page's text, return it with the generated keys section replaced."""
    lines = current.splitlines()
    try:
        start, end = lines.index(BEGIN), lines.index(END)
    except ValueError:
        raise SystemExit(f"{MANPAGE}: the lines {BEGIN!r} and {END!r} must both be there") from None
    return "\n".join(lines[:start] + manpage_keys(schema) + lines[end + 1 :]) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file is out of step")
    args = parser.parse_args(argv)
    wanted = {CONFIG: config_text(), MANPAGE: manpage_text(MANPAGE.read_text())}
    stale = [path for path, text in wanted.items() if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            sys.stderr.write(f"{path} is out of step with reaper/config/schema.py SCHEMA: run {sys.argv[0]}\n")
        return 1 if stale else 0
    for path in stale:
        path.write_text(wanted[path])
        sys.stderr.write(f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
