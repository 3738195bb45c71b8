"""HF trainer_state.json: real files from the wild and broken ones built here.

Broken inputs are written the way ``TrainerState.save_to_json`` writes
(``json.dumps(asdict(state), indent=2, sort_keys=True) + "\\n"``), then damaged.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lorascope.ingest.trainer_state import parse

from helpers import WILD
from helpers import series_by_tag as _series
from helpers import wild_file as _wild


def _state(log_history, **kw) -> dict:
    st = {"best_metric": None, "best_model_checkpoint": None, "epoch": 1.0, "eval_steps": 50,
          "global_step": 30, "is_hyper_param_search": False, "is_local_process_zero": True,
          "is_world_process_zero": True, "log_history": log_history, "logging_steps": 10,
          "max_steps": 30, "num_input_tokens_seen": 0, "num_train_epochs": 1, "save_steps": 500,
          "total_flos": 1.0, "train_batch_size": 4, "trial_name": None, "trial_params": None}
    st.update(kw)
    return st


def _write(tmp_path: Path, state, name="trainer_state.json", newline="\n", bom=False) -> Path:
    text = json.dumps(state, indent=2, sort_keys=True) + "\n"
    if newline != "\n":
        text = text.replace("\n", newline)
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return p


HISTORY = [
    {"epoch": 0.33, "grad_norm": 1.5, "learning_rate": 2e-4, "loss": 2.5, "step": 10},
    {"epoch": 0.33, "eval_loss": 2.4, "eval_runtime": 1.0, "eval_samples_per_second": 9.0,
     "eval_steps_per_second": 2.0, "eval_accuracy": 0.5, "step": 10},
    {"epoch": 0.67, "grad_norm": float("nan"), "learning_rate": 1e-4, "loss": 0.0, "step": 20,
     "rewards/chosen": -0.5},
    {"epoch": 1.0, "grad_norm": float("inf"), "learning_rate": 0.0, "loss": 1.9, "step": 30},
    {"epoch": 1.0, "step": 30, "total_flos": 1e15, "train_loss": 2.1, "train_runtime": 60.0,
     "train_samples_per_second": 2.0, "train_steps_per_second": 0.5},
]


# -- real files ---------------------------------------------------------------------

def test_every_wild_trainer_state_parses():
    if not WILD.is_dir():
        pytest.skip("wild runs not present")
    files = sorted(WILD.glob("**/trainer_state.json"))
    assert files
    for f in files:
        rel = f.relative_to(WILD).as_posix()
        p = parse(f, rel)
        assert p.source.kind == "trainer_state"
        assert p.facts["trainer"] == "hf-trainer"
        assert p.facts["log_history_len"] >= 0, rel
        for s in p.series:
            assert s.steps.dtype == np.int64 and s.values.dtype == np.float64
            assert len(s.steps) == len(s.values) > 0, (rel, s.tag)
            assert s.source == rel
        assert p.source.problems == [], (rel, p.source.problems)


def test_wild_nan_grad_norm_is_kept():
    # hf-kg-llm logs bare NaN grad_norm at the first steps with finite losses
    p = parse(_wild("hf-kg-llm/trainer_state.json"), "trainer_state.json")
    s = _series(p)
    assert len(s["loss"].steps) == 120
    assert s["loss"].steps[0] == 1 and s["loss"].steps[-1] == 120
    assert np.isfinite(s["loss"].values).all()
    assert (~np.isfinite(s["grad_norm"].values)).sum() == 3
    assert p.facts["final_train_loss"] == pytest.approx(0.77746, abs=1e-4)
    assert p.facts["planned_steps"] == 120 and p.facts["logging_steps"] == 1
    assert "train_runtime" not in s and "train_loss" not in s


def test_wild_checkpoint_folder_and_int64_epochs():
    p = parse(_wild("peft-poetry-mixed/checkpoint-50/trainer_state.json"),
              "checkpoint-50/trainer_state.json")
    assert p.facts["checkpoint_step"] == 50
    # num_train_epochs is 9223372036854775807 there: max_steps rules, epochs unknown
    assert "num_train_epochs" not in p.facts
    assert "epochs" not in {c.key for c in p.config}
    s = _series(p)
    assert len(s["loss"].steps) == 11 and len(s["eval_loss"].steps) == 10


def test_wild_empty_log_history_crlf():
    p = parse(_wild("hf-financeadvice/trainer_state.json"), "trainer_state.json")
    assert p.series == [] and p.facts["log_history_len"] == 0
    assert p.facts["state_global_step"] == 87
    cfg = {c.key: c.value for c in p.config}
    assert cfg == {"max_steps": 87, "logging_steps": 500, "eval_steps": 500, "save_steps": 500,
                   "batch_size": 16, "epochs": 3}


# -- built here ---------------------------------------------------------------------

def test_tags_facts_and_config(tmp_path):
    p = parse(_write(tmp_path, _state(HISTORY, best_model_checkpoint="out/checkpoint-20")),
              "trainer_state.json")
    s = _series(p)
    assert set(s) == {"loss", "eval_loss", "eval_accuracy", "learning_rate", "grad_norm",
                      "epoch", "rewards/chosen"}
    assert s["loss"].steps.tolist() == [10, 20, 30]
    assert s["loss"].values.tolist() == [2.5, 0.0, 1.9]
    assert np.isnan(s["grad_norm"].values[1]) and np.isposinf(s["grad_norm"].values[2])
    assert s["eval_loss"].steps.tolist() == [10]
    assert s["epoch"].steps.tolist() == [10, 20, 30]       # one epoch value per step
    assert s["epoch"].values.tolist() == [0.33, 0.67, 1.0]
    f = p.facts
    assert f["final_train_loss"] == 2.1
    assert f["state_global_step"] == 30 and f["planned_steps"] == 30
    assert f["logging_steps"] == 10 and f["eval_steps"] == 50 and f["save_steps"] == 500
    assert f["train_batch_size"] == 4 and f["num_train_epochs"] == 1
    assert f["log_history_len"] == 5 and f["best_model_checkpoint"] == "out/checkpoint-20"
    assert "checkpoint_step" not in f
    cfg = {c.key: (c.value, c.orig_key) for c in p.config}
    assert cfg["max_steps"] == (30, "max_steps")
    assert cfg["batch_size"] == (4, "train_batch_size")
    assert cfg["epochs"] == (1, "num_train_epochs")
    assert p.source.records == 5 and p.source.problems == []


def test_crlf_bom_and_checkpoint_name(tmp_path):
    p = parse(_write(tmp_path, _state(HISTORY), name="checkpoint-30/trainer_state.json",
                     newline="\r\n", bom=True), "out/checkpoint-30/trainer_state.json")
    assert p.source.problems == []
    assert p.facts["checkpoint_step"] == 30
    assert len(_series(p)["loss"].steps) == 3


def test_lr_key_maps_to_learning_rate(tmp_path):
    hist = [{"epoch": 0.1, "loss": 3.0, "lr": 1e-4, "remaining_time": "59h:30m", "step": 20}]
    s = _series(parse(_write(tmp_path, _state(hist)), "t.json"))
    assert s["learning_rate"].values.tolist() == [1e-4]
    assert "lr" not in s and "remaining_time" not in s


def test_truncated_file_keeps_complete_entries(tmp_path):
    text = json.dumps(_state(HISTORY), indent=2, sort_keys=True)
    cut = text.index('"step": 30')          # inside the 4th entry
    p = tmp_path / "trainer_state.json"
    p.write_text(text[:cut])
    r = parse(p, "trainer_state.json")
    assert any("not valid JSON" in x for x in r.source.problems)
    s = _series(r)
    assert s["loss"].steps.tolist() == [10, 20]
    assert r.facts["state_global_step"] == 30      # written before log_history (sorted keys)


def test_wrong_types_are_problems_rest_kept(tmp_path):
    hist = [
        "not an entry",
        {"epoch": "one", "loss": "2.0", "step": 10},
        {"epoch": 0.5, "loss": [1, 2], "grad_norm": True, "learning_rate": 1e-4, "step": 20},
        {"epoch": 0.7, "loss": 1.5, "step": "thirty"},
        {"epoch": 1.0, "loss": 1.2, "step": 40.0},
    ]
    r = parse(_write(tmp_path, _state(hist, global_step="x", num_train_epochs=[1],
                                      train_batch_size=None)), "t.json")
    s = _series(r)
    assert s["loss"].steps.tolist() == [40]
    assert s["learning_rate"].steps.tolist() == [20]
    assert "grad_norm" not in s
    assert s["epoch"].steps.tolist() == [20, 40]
    assert "state_global_step" not in r.facts and "num_train_epochs" not in r.facts
    probs = " | ".join(r.source.problems)
    assert "log_history[0]" in probs and "global_step" in probs
    assert "log_history[1].loss is str" in probs
    assert len(r.source.problems) <= 7          # bounded


def test_log_history_of_wrong_type(tmp_path):
    r = parse(_write(tmp_path, _state({"step": 1})), "t.json")
    assert r.series == [] and any("not a list" in x for x in r.source.problems)
    r = parse(_write(tmp_path, [1, 2, 3]), "t.json")
    assert r.series == [] and any("not an object" in x for x in r.source.problems)


@pytest.mark.parametrize("content", [b"", b"\n\n", b"\x00\xff\xfe garbage \x89PNG" * 50,
                                     b"{" * 100_000, b"[" + b"1," * 2_000_000 + b"1]"])
def test_garbage_never_raises(tmp_path, content):
    p = tmp_path / "trainer_state.json"
    p.write_bytes(content)
    r = parse(p, "trainer_state.json")
    assert r.series == []
    assert r.source.problems


def test_one_huge_line_is_fine(tmp_path):
    hist = [{"epoch": i / 1000, "loss": 1.0 + 1 / (i + 1), "step": i + 1} for i in range(20_000)]
    p = tmp_path / "trainer_state.json"
    p.write_text(json.dumps(_state(hist)))          # no indent: one line of ~1.5 MB
    s = _series(parse(p, "trainer_state.json"))
    assert len(s["loss"].steps) == 20_000
