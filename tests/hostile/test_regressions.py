"""Every input that once crashed a parser: the files atheris saved under
fuzz/corpus/<target>/crashes/ and the cases found by hand, inlined."""
from __future__ import annotations

import json
import struct

import pytest

from hostile.fuzzing import FUZZ, harness

pytestmark = pytest.mark.timeout(120)

CRASHES = sorted(p for p in FUZZ.glob("corpus/*/crashes/*") if p.is_file() and p.suffix != ".log")


@pytest.mark.parametrize("path", CRASHES, ids=[f"{p.parts[-3]}/{p.name}" for p in CRASHES])
def test_saved_crash(path):
    harness.TARGETS[path.parts[-3]](path.read_bytes())


HUGE = b"9" * 400
ST = b'{"w": {"dtype": %s, "shape": %s, "data_offsets": %s}}'

INLINE = [
    # OverflowError: int too large to convert to float (trainer_state._num)
    ("trainer_state", b'{"log_history": [{"step": 2, "loss": %s}], "max_steps": %s}' % (HUGE, HUGE)),
    # OverflowError: Python int too large to convert to C long (trainer_log steps -> int64)
    ("llamafactory", b"\0" + b'{"current_steps": 99999999999999999999999999, "loss": 1}\n'),
    ("llamafactory", b"\0" + b'{"current_steps": 1, "loss": %s}\n' % HUGE),
    ("llamafactory", b"\1" + b'{"train_loss": %s, "epoch": %s}' % (HUGE, HUGE)),
    # TypeError: unhashable type: 'dict' (safetensors dtype)
    ("safetensors", (lambda h: struct.pack("<Q", len(h)) + h + b"\0" * 16)(
        ST % (b'{"a": 1}', b"[2, 2]", b"[0, 16]"))),
    # OverflowError: integer division result too large for a float (safetensors shape message)
    ("safetensors", (lambda h: struct.pack("<Q", len(h)) + h + b"\0" * 16)(
        ST % (b'"F32"', b"[%s, %s]" % (HUGE, HUGE), b"[0, 16]"))),
]


@pytest.mark.parametrize("target,data", INLINE, ids=[f"{t}-{i}" for i, (t, _) in enumerate(INLINE)])
def test_inline_regression(target, data):
    harness.TARGETS[target](data)


def test_problem_strings_stay_short_for_huge_numbers(tmp_path):
    from lorascope.ingest.safetensors import parse
    h = ST % (b'"F32"', b"[%s]" % (b"9" * 4000), b"[0, %s]" % (b"9" * 4000))
    p = tmp_path / "x.safetensors"
    p.write_bytes(struct.pack("<Q", len(h)) + h + b"\0" * 16)
    r = parse(p, p.name)
    assert r.source.problems and all(len(x) < 300 for x in r.source.problems)
    json.dumps(r.source.to_json(), allow_nan=False)
