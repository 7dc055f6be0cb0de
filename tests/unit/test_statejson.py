import json
import pathlib
import subprocess

import pytest

from reaper.state import statejson

SAMPLES = [
    {},
    [],
    {"a": [1, 2.5, None, True, False, "x"]},
    {"nested": {"deep": [{"k": "v"}]}, "n": -3, "big": 2**70, "f": 1e-9},
    {"text": 'é \n\t"\\ \x00 \u2028 \U0001f600'},
]


@pytest.mark.parametrize("value", SAMPLES)
def test_round_trip_and_json_compatible(value):
    text = statejson.dumps(value)
    assert statejson.loads(text) == value
    assert json.loads(text) == value
    assert statejson.loads(json.dumps(value, indent=2)) == value
    assert text.isascii()


def test_lone_surrogates_from_undecodable_bytes_survive():
    value = {"user": b"bad\xffname".decode("utf-8", "surrogateescape")}
    assert statejson.loads(statejson.dumps(value)) == value


@pytest.mark.parametrize(
    "text", ["", "   ", "{", '{"a": 1} x', "[1,]", "NaN", '{"a": NaN}', "{'a': 1}", "[" * 100000, "nul\x00"]
)
def test_bad_json_raises_decode_error(text):
    with pytest.raises(statejson.DecodeError):
        statejson.loads(text)


def test_importing_it_does_not_import_re_or_json():
    repo = str(pathlib.Path(__file__).parents[2])
    code = (
        f"import sys; sys.path.insert(0, {repo!r}); import reaper.state.statejson; "
        "print('re' in sys.modules, 'json' in sys.modules)"
    )
    out = subprocess.run(["/usr/bin/python3", "-I", "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_bad_json_raises_decode_error_even_with_json_never_imported():
    """The hook never imports json; _json's own error path needs it, and fails differently without it."""
    repo = str(pathlib.Path(__file__).parents[2])
    texts = ["{corrupt", '{"a": x}', "[1,", "x", ""]
    code = (
        f"import sys; sys.path.insert(0, {repo!r}); from reaper.state import statejson\n"
        f"for text in {texts!r}:\n"
        "    try:\n        statejson.loads(text)\n    except statejson.DecodeError:\n        print('ok')\n"
        "print('json' in sys.modules)"
    )
    out = subprocess.run(["/usr/bin/python3", "-I", "-c", code], capture_output=True, text=True)
    assert out.stdout.split() == ["ok"] * len(texts) + ["False"], out.stderr
