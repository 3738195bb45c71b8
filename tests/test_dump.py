"""lorascope.report.dump.dumps writes the very text of json.dumps(indent=2), for any
document, including the long lists of flat records it encodes its own way."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lorascope.report import dump

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12) | st.sampled_from(
    ["}", "},\n{", '"', "\\", "\n", "\u2028", "\x00", "{", "]", "\x1b[31m"])
SCALAR = (st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70)
          | st.floats(allow_nan=False, allow_infinity=False) | TEXT)
RECORD = st.dictionaries(TEXT, SCALAR, min_size=1, max_size=5)
RECORDS = st.lists(RECORD, min_size=dump.MIN_ITEMS, max_size=dump.MIN_ITEMS + 5)
DOC = st.recursive(SCALAR | RECORDS, lambda kids: st.lists(kids, max_size=4)
                   | st.dictionaries(TEXT, kids, max_size=4), max_leaves=12)


def reference(doc) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(DOC)
def test_any_document_is_written_as_json_dumps_writes_it(doc):
    assert dump.dumps(doc) == reference(doc)


def test_an_inspect_document_takes_the_fast_path_and_reads_back(monkeypatch):
    mods = [{"name": f"lora_unet_b{i}_to_q", "rank": 4, "alpha": 2.0, "norm": 0.1 * i,
             "mean_abs": None, "zero": i == 3, "nonfinite": 0} for i in range(100)]
    doc = {"schema": "lorascope.inspect/1",
           "files": [{"path": "a", "modules": mods, "zero_modules": [m["name"] for m in mods[:40]],
                      "metadata": {"k": "v"}, "problems": []}] * 2}
    calls = []
    real = dump._records
    monkeypatch.setattr(dump, "_records", lambda *a: calls.append(1) or real(*a))
    assert dump.dumps(doc) == reference(doc)
    assert len(calls) == 2                      # the two module lists, not the name lists
    assert json.loads(dump.dumps(doc)) == doc


def test_what_json_refuses_is_refused():
    with pytest.raises(ValueError):
        dump.dumps([{"x": float("nan")}] * dump.MIN_ITEMS)
    with pytest.raises(TypeError):
        dump.dumps([{"x": object()}] * dump.MIN_ITEMS)
