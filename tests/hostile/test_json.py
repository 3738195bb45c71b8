"""Hostile JSON / JSONL: trainer_state.json, trainer_log.jsonl, *_results.json,
adapter_config.json, config.json and text datasets: truncated, wrong types, binary,
numbers too large for any float, and one enormous line."""
from __future__ import annotations

import json
import os

import pytest

from hostile.util import analyze, base_run, healthy_history, problems_of

pytestmark = pytest.mark.timeout(240)

HUGE = "9" * 400            # an integer literal no float can hold


def trainer_state_text(n=30) -> str:
    return json.dumps({"log_history": healthy_history(n), "max_steps": n, "global_step": n}, indent=2)


BAD_STATES = {
    "truncated": trainer_state_text()[:700],
    "binary": os.urandom(3000),
    "wrong_types": json.dumps({"log_history": {"step": 1}, "max_steps": "x", "global_step": [1]}),
    "wrong_entry_types": json.dumps({"log_history": [1, "a", None, [], {"step": "1", "loss": "0.5"},
                                                     {"step": True, "loss": {}}], "max_steps": None}),
    "huge_numbers": '{"log_history": [{"step": %s, "loss": 1}, {"step": 2, "loss": %s}, '
                    '{"step": 3, "loss": 1e999}], "max_steps": %s, "global_step": %s}' % (HUGE, HUGE, HUGE, HUGE),
    "negative_and_float_steps": json.dumps({"log_history": [{"step": -1, "loss": 1}, {"step": 1.5, "loss": 1},
                                                            {"step": 2, "loss": 0.5}], "max_steps": -40}),
    "nan_everywhere": '{"log_history": [{"step": 1, "loss": NaN}, {"step": 2, "loss": Infinity, '
                      '"learning_rate": -Infinity}], "max_steps": NaN, "global_step": NaN}',
    "nested_deep": "[" * 100_000,
    "lone_surrogates": '{"log_history": [{"step": 1, "loss": 1, "\\udc80<b>": 2}], "best_model_checkpoint": "\\ud800"}',
    "utf16": trainer_state_text().encode("utf-16"),
}


@pytest.mark.parametrize("name", sorted(BAD_STATES))
def test_bad_trainer_state(tmp_path, name):
    run = tmp_path / "run"
    run.mkdir()
    data = BAD_STATES[name]
    (run / "trainer_state.json").write_bytes(data if isinstance(data, bytes) else data.encode())
    analyze(run, tmp_path / "out", html=(name == "lone_surrogates"))


BAD_JSONL = {
    "truncated": b'{"current_steps": 1, "loss": 1.0, "total_steps": 10}\n{"current_steps": 2, "lo',
    "binary": os.urandom(5000),
    "wrong_types": b'[1,2]\n"x"\n{"current_steps": "3", "loss": [1]}\n{"current_steps": 4, "loss": {"a": 1}}\n',
    "huge_numbers": ('{"current_steps": %s, "loss": 1}\n{"current_steps": 2, "loss": %s, "total_steps": %s}\n'
                     % (HUGE, HUGE, HUGE)).encode(),
    "steps_backwards": b"".join(json.dumps({"current_steps": s, "loss": 1.0 / (s + 1)}).encode() + b"\n"
                                for s in [5, 4, 3, 2, 1, 9, 8]),
}


@pytest.mark.parametrize("name", sorted(BAD_JSONL))
def test_bad_trainer_log(tmp_path, name):
    run = base_run(tmp_path / "run")
    (run / "trainer_log.jsonl").write_bytes(BAD_JSONL[name])
    (run / "all_results.json").write_bytes(BAD_JSONL[name])
    (run / "adapter_config.json").write_bytes(BAD_JSONL[name])
    (run / "config.json").write_bytes(BAD_JSONL[name])
    r, doc, _ = analyze(run, tmp_path / "out", html=False)
    if name in ("truncated", "binary", "wrong_types"):
        assert problems_of(doc, "trainer_log.jsonl"), doc["run"]["sources"]


def write_enormous_line(path, size=50 * 1024 * 1024, head=b'{"current_steps": 1, "loss": "'):
    """~50 MB on one line, written in 1 MB pieces (never held in memory by the test)."""
    chunk = b"A" * (1 << 20)
    with open(path, "wb") as fh:
        fh.write(head)
        for _ in range(size >> 20):
            fh.write(chunk)
        fh.write(b'"}\n{"current_steps": 2, "loss": 0.5}\n')


def test_enormous_lines_under_a_memory_limit(tmp_path):
    run = base_run(tmp_path / "run")
    write_enormous_line(run / "trainer_log.jsonl")
    write_enormous_line(run / "train.log", head=b"{'loss': ")
    (run / "data").mkdir()
    write_enormous_line(run / "data" / "train.jsonl", head=b'{"text": "')
    (run / "train_lora.yaml").write_text("model_name_or_path: base\nstage: sft\nfinetuning_type: lora\n"
                                         "dataset: train.jsonl\ndataset_dir: data\n")
    r, doc, _ = analyze(run, tmp_path / "out", limited=True, html=False)
    probs = problems_of(doc, "trainer_log.jsonl")
    assert any("longer than" in p or "skipped" in p for p in probs), probs
    assert any(s["kind"] == "dataset_text" for s in doc["run"]["sources"]), doc["run"]["sources"]
