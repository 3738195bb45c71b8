"""Golden report documents: the whole `--format json` report of every fixture run is pinned
in tests/golden/<run>.json, so that any change in what lorascope reads, finds or says shows
up in review as a diff of these files.

Regenerate after an intended change with

    LORASCOPE_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py

and read the diff before committing it.
"""
import json
import os
from pathlib import Path

import pytest

from helpers import FIXTURES

GOLDEN = Path(__file__).resolve().parent / "golden"
RUNS = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir()) if FIXTURES.is_dir() else []


def _document(name: str) -> dict:
    from lorascope.pipeline import analyze, report_document
    doc = report_document(analyze(FIXTURES / name))
    doc["tool"]["version"] = "*"             # not the glue: the release
    doc["run"]["path"] = name                # where the checkout lies
    text = json.dumps(doc, allow_nan=False, sort_keys=True)
    assert str(FIXTURES.resolve()) not in text, "the report names a path of this checkout"
    return json.loads(text)


@pytest.mark.parametrize("name", RUNS)
def test_report_matches_its_golden_document(name):
    got = _document(name)
    path = GOLDEN / f"{name}.json"
    if os.environ.get("LORASCOPE_UPDATE_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(json.dumps(got, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    if not path.is_file():
        pytest.fail(f"no golden document for {name}: run with LORASCOPE_UPDATE_GOLDEN=1")
    want = json.loads(path.read_text(encoding="utf-8"))
    assert got == want, f"{name}: the report changed; diff tests/golden/{name}.json after regenerating"


def test_every_golden_document_has_its_fixture():
    stale = sorted(p.stem for p in GOLDEN.glob("*.json") if p.stem not in RUNS)
    assert stale == []
