"""JSON for the state file, built on the C accelerator `_json` alone.

`import json` pulls in `re` and costs about 10 ms, which would land on every SSH login through the hook.
`_json` is what `json` itself uses underneath; it needs no `re`. The text written is plain JSON that
`json.loads` reads, and this reads what `json.dumps` writes.
"""

import _json
import sys


class DecodeError(ValueError):
    """The text is not one JSON document."""


def _refuse_constant(name):
    raise DecodeError(f"{name} is not allowed in the state file")


class _ScanContext:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_refuse_constant)
    memo = None


_scan = _json.make_scanner(_ScanContext())
# markers=None skips the cycle check; the state is plain data built by this program.
_encode = _json.make_encoder(None, None, _json.encode_basestring_ascii, None, ":", ",", False, False, False)
_WHITESPACE = " \t\n\r"


class _ScanError(ValueError):
    """Stands in for json.JSONDecodeError, which _json looks up in json.decoder to report an error."""

    def __init__(self, msg, doc, pos):
        super().__init__(f"{msg}: offset {pos}")


def _scan_alone(text, start):
    """_scan, with json.decoder stood in for while it runs unless already loaded: _json imports it to build
    its error (and json pulls in re), and that import would land on the hook's path on a corrupt file.

    json stands in too: on Python 3.13 (trixie; not 3.11) _json's import of json.decoder imports the json
    package as well, whose __init__ then fails to import its names from the stand-in decoder."""
    if "json.decoder" in sys.modules:
        return _scan(text, start)
    decoder = type(sys)("json.decoder")
    decoder.JSONDecodeError = _ScanError
    stubs = {"json.decoder": decoder}
    if "json" not in sys.modules:
        stubs["json"] = type(sys)("json")
        stubs["json"].decoder = decoder
    sys.modules.update(stubs)
    try:
        return _scan(text, start)
    finally:
        for name, stub in stubs.items():
            if sys.modules.get(name) is stub:
                del sys.modules[name]


def loads(text):
    """Given JSON text, return the value. Raise DecodeError if it is not exactly one JSON document."""
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan_alone(text, start)
    except StopIteration:
        raise DecodeError(f"no JSON value at offset {start}") from None
    except ValueError as e:  # json.JSONDecodeError is a ValueError
        raise DecodeError(str(e)) from None
    except RecursionError:
        raise DecodeError("nested too deeply") from None
    if text[end:].strip(_WHITESPACE):
        raise DecodeError(f"extra data at offset {end}")
    return value


def dumps(value):
    """Given plain data (dict, list, str, int, float, bool, None), return compact ASCII JSON."""
    return "".join(_encode(value, 0))
