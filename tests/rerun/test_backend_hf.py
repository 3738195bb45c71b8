"""The built-in backend prepares training data exactly as the fixtures' trainer does."""
from __future__ import annotations

import json

from lorascope.rerun import backend_hf
from tests.rerun.llmruns import tinyllm


def test_same_input_ids_as_tinyllm():
    recs = tinyllm.make_records(10, 3)
    tok = tinyllm.build_tokenizer([tinyllm.format_prompt(r) + r["output"] for r in recs] * 5)
    for rec in recs:
        for cutoff, on_prompt in ((64, True), (12, False)):
            ours = backend_hf.encode(tok, rec, cutoff, on_prompt)
            theirs = tinyllm._encode(tok, rec, cutoff, on_prompt)
            assert ours == theirs


def test_reads_alpaca_jsonl_and_sharegpt(tmp_path):
    (tmp_path / "a.jsonl").write_text(
        json.dumps({"instruction": "Add.", "input": "1 + 2", "output": "3"}) + "\n\n", encoding="utf-8")
    (tmp_path / "s.json").write_text(json.dumps([{"conversations": [
        {"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}]), encoding="utf-8")
    assert backend_hf.load_records(tmp_path / "a.jsonl") == [
        {"instruction": "Add.", "input": "1 + 2", "output": "3"}]
    assert backend_hf.load_records(tmp_path / "s.json") == [
        {"instruction": "hi", "input": "", "output": "hello"}]
