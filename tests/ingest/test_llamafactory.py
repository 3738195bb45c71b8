"""LLaMA-Factory trainer_log.jsonl and HF *_results.json."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lorascope.ingest.llamafactory import duration_seconds, parse, parse_results

from helpers import WILD
from helpers import series_by_tag as _series
from helpers import wild_file as _wild


def _line(step, total=100, **kw) -> str:
    # the shape LLaMA-Factory's LogCallback writes (json.dumps of a dict, one per line)
    d = {"current_steps": step, "total_steps": total, **kw, "epoch": step / total,
         "percentage": round(step / total * 100, 2), "elapsed_time": "0:00:10",
         "remaining_time": "1 day, 2:03:04"}
    return json.dumps(d, ensure_ascii=False) + "\n"


# -- real files ---------------------------------------------------------------------

def test_every_wild_trainer_log_parses():
    if not WILD.is_dir():
        pytest.skip("wild runs not present")
    files = sorted(WILD.glob("**/trainer_log.jsonl"))
    assert files
    for f in files:
        rel = f.relative_to(WILD).as_posix()
        p = parse(f, rel)
        assert p.source.problems == [], (rel, p.source.problems)
        assert p.facts["trainer"] == "llamafactory" and p.facts["planned_steps"] > 0
        for s in p.series:
            assert len(s.steps) == len(s.values) > 0
            assert s.tag not in ("lr", "percentage", "current_steps", "elapsed_time")


def test_wild_lr_and_eval_loss():
    p = parse(_wild("lf-qwen25-medical/trainer_log.jsonl"), "trainer_log.jsonl")
    s = _series(p)
    assert len(s["loss"].steps) == 675 and len(s["eval_loss"].steps) == 13
    assert len(s["learning_rate"].steps) == 675
    assert s["eval_loss"].steps[0] == 500
    assert p.facts["planned_steps"] == 6750 and p.source.records == 689


def test_wild_tfm_adapter_matches_hand_count():
    p = parse(_wild("lf-tfm-adapter/trainer_log.jsonl"), "trainer_log.jsonl")
    s = _series(p)
    assert s["loss"].steps.tolist() == list(range(5, 241, 5))
    assert s["loss"].values[0] == pytest.approx(2.0905)
    assert len(s["epoch"].steps) == 48          # the closing line repeats step 240
    assert p.facts["elapsed_seconds"] == 21 * 60 + 13


def test_wild_prediction_only_run():
    p = parse(_wild("lf-law-lora-eval/trainer_log.jsonl"), "trainer_log.jsonl")
    assert p.series == [] and p.facts.get("no_loss_logged") is True
    r = parse_results(_wild("lf-law-lora-eval/all_results.json"), "all_results.json")
    assert r.facts["predict_only"] is True and r.series == []


def test_wild_results_final_losses():
    r = parse_results(_wild("hf-gpt-coconight/all_results.json"), "all_results.json")
    assert "final_train_loss" in r.facts and "final_eval_loss" in r.facts
    assert r.facts["epoch"] > 0 and "predict_only" not in r.facts


# -- built here ---------------------------------------------------------------------

def test_tags_and_facts(tmp_path):
    p = tmp_path / "trainer_log.jsonl"
    p.write_text(_line(5, loss=2.0, lr=1e-4, reward=0.5) + _line(10, loss=float("nan"), lr=2e-4)
                 + _line(10, eval_loss=1.9) + _line(15, loss=1.5, lr=3e-4, accuracy=0.7))
    r = parse(p, "trainer_log.jsonl")
    s = _series(r)
    assert set(s) == {"loss", "learning_rate", "epoch", "eval_loss", "reward", "accuracy"}
    assert s["loss"].steps.tolist() == [5, 10, 15]
    assert np.isnan(s["loss"].values[1])
    assert s["eval_loss"].steps.tolist() == [10]
    assert s["epoch"].steps.tolist() == [5, 10, 15]
    assert r.facts["planned_steps"] == 100 and r.facts["elapsed_seconds"] == 10
    assert r.source.records == 4 and r.source.problems == []


def test_bad_lines_are_bounded_problems(tmp_path):
    good = _line(5, loss=2.0, lr=1e-4)
    bad = ['{"current_steps": 6, "loss": 1.9, "lr"\n',       # truncated
           "\x00\x01garbage\xff\n", "[1, 2]\n", '{"total_steps": 9}\n',
           '{"current_steps": "ten", "loss": 1.0}\n', '{"current_steps": 7, "loss": "x"}\n'] * 20
    p = tmp_path / "trainer_log.jsonl"
    p.write_text(good + "".join(bad) + _line(10, loss=1.5, lr=1e-4) + '{"current_steps": 11, "lo')
    r = parse(p, "trainer_log.jsonl")
    assert _series(r)["loss"].steps.tolist() == [5, 10]
    assert len(r.source.problems) <= 6
    assert "more problems" in r.source.problems[-1]
    assert r.source.problems[0].startswith("line 2:")


def test_enormous_line(tmp_path):
    p = tmp_path / "trainer_log.jsonl"
    p.write_text(_line(5, loss=2.0) + '{"current_steps": 6, "loss": ' + "1" * 3_000_000 + "}\n"
                 + _line(10, loss=1.0))
    r = parse(p, "trainer_log.jsonl")
    assert _series(r)["loss"].steps.tolist() == [5, 10]
    assert any("longer than" in x for x in r.source.problems)


@pytest.mark.parametrize("content", [b"", b"\n", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 100])
def test_empty_and_binary(tmp_path, content):
    p = tmp_path / "trainer_log.jsonl"
    p.write_bytes(content)
    r = parse(p, "trainer_log.jsonl")
    assert r.series == [] and r.source.problems


def test_results_variants(tmp_path):
    p = tmp_path / "all_results.json"
    p.write_text(json.dumps({"epoch": 3.0, "train_loss": 0.9, "eval_loss": float("nan"),
                             "train_runtime": 12.5, "note": "x", "bad": [1]}))
    r = parse_results(p, "all_results.json")
    assert r.facts["final_train_loss"] == 0.9 and np.isnan(r.facts["final_eval_loss"])
    assert r.facts["epoch"] == 3.0 and r.source.kind == "results"
    assert any("bad" in x for x in r.source.problems)
    for content in (b"", b"{\"epoch\": 1", b"[1]", b"\xff\xfe\x00"):
        p.write_bytes(content)
        assert parse_results(p, "all_results.json").source.problems


def test_duration_seconds():
    assert duration_seconds("9 days, 21:39:23") == 9 * 86400 + 21 * 3600 + 39 * 60 + 23
    assert duration_seconds("0:03:29") == 209
    assert duration_seconds("1 day, 0:00:01") == 86401
    assert duration_seconds("soon") is None and duration_seconds(5) is None


def test_every_wild_results_file_parses():
    if not WILD.is_dir():
        pytest.skip("wild runs not present")
    from lorascope.discover import classify
    files = [f for f in WILD.rglob("*.json") if classify(f.relative_to(WILD).as_posix()) == "results"]
    assert files
    for f in files:
        r = parse_results(f, f.name)
        assert r.source.problems == [] and r.series == [], f
        assert r.facts["results"], f
        # a results file is either a training summary or a prediction-only one
        assert ("final_train_loss" in r.facts or "final_eval_loss" in r.facts
                or r.facts.get("predict_only")), f
