"""W&B record logs: the reader against wandb's own protobufs on files wandb wrote, its two
decoding paths against each other, the step metric semantics, and damaged files."""
from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

import wandblog as WL
from helpers import fixture_run
from lorascope.ingest import wandb as W


def _series(parsed) -> dict:
    return {s.tag: s for s in parsed.series}


def _fixture_file():
    run = fixture_run("wandb-lr-diverge")
    (f,) = run.glob("wandb/*/run-*.wandb")
    return f


def _expected_hf(rows: list[dict]) -> dict:
    """What HF's WandbCallback logged: each key against train/global_step of its row
    (every HF row carries it)."""
    out: dict = {}
    for row in rows:
        gs = row.get("train/global_step")
        for k, v in row.items():
            if k.startswith("_") or k == "train/global_step" or isinstance(v, (bool, str, dict, list)):
                continue
            steps, vals = out.setdefault(k, ([], []))
            steps.append(gs)
            vals.append(float(v))
    return out


def _same(a: np.ndarray, b) -> bool:
    b = np.asarray(b, np.float64)
    return a.shape == b.shape and bool(np.all((a == b) | (np.isnan(a) & np.isnan(b))))


def test_fixture_matches_wandbs_own_protobufs():
    pytest.importorskip("wandb")
    f = _fixture_file()
    expected = _expected_hf(WL.reference_rows(f))
    got = _series(W.parse(f, f.name))
    assert set(got) == set(expected)
    assert {"train/loss", "eval/loss", "train/learning_rate", "train/grad_norm"} <= set(got)
    for k, (steps, vals) in expected.items():
        assert got[k].steps.tolist() == steps, k
        assert _same(got[k].values, vals), k
    # evaluation rows have their own wandb _step but the training step they followed
    assert got["eval/loss"].steps.tolist() == list(range(10, 101, 10))


def test_fixture_fast_and_wire_paths_agree():
    f = _fixture_file()
    fast, slow = W.parse(f, f.name), W.parse(f, f.name, fast_path=False)
    assert not fast.source.problems and not slow.source.problems
    a, b = _series(fast), _series(slow)
    assert set(a) == set(b)
    for k in a:
        assert a[k].steps.tolist() == b[k].steps.tolist()
        assert _same(a[k].values, b[k].values)
        assert a[k].positions.tolist() == b[k].positions.tolist()


def test_fixture_config_is_the_training_arguments():
    f = _fixture_file()
    p = W.parse(f, f.name)
    cfg = {c.key: c for c in p.config}
    assert cfg["learning_rate"].value == 0.35 and cfg["learning_rate"].orig_key == "learning_rate"
    assert cfg["max_grad_norm"].value == 0.0
    assert cfg["lora_rank"].value == 8 and cfg["lora_rank"].orig_key == "peft_config.default.r"
    assert p.facts["trainer"] == "hf-trainer" and p.facts["task"] == "llm"


def _random_log(tmp_path, seed: int):
    """Rows the fast path reads and rows only the wire decoder reads, mixed."""
    rng = random.Random(seed)
    recs, num = [], 1
    recs.append(WL.config_record(num, [WL.item("learning_rate", "0.001", nested=False)]))
    for step in range(1, 400):
        num += 1
        items = [WL.item("_step", str(step - 1)), WL.item("loss", repr(rng.random())),
                 WL.item("_timestamp", repr(1.7e9 + step))]
        kind = rng.random()
        if kind < 0.1:
            items.append(WL.item(["nested", "metric"], repr(rng.random())))     # two-part key
        elif kind < 0.2:
            items.append(WL.item("k" * rng.randint(100, 300), repr(rng.random())))  # long key
        elif kind < 0.3:
            items.append(WL.item("text", json.dumps("a string")))
        elif kind < 0.35:
            items.append(WL.item("bad", "NaN"))
        elif kind < 0.4:
            items.append(WL.field(2, "typed") + WL.double(6, 2.5))   # a typed value, no value_json
        elif kind < 0.45:
            items.append(WL.item("big", "Infinity"))
        if rng.random() < 0.05:
            items.append(WL.item("pad", json.dumps("x" * rng.randint(1000, 40000))))  # spans blocks
        recs.append(WL.history(num, items, step - 1))
        if rng.random() < 0.5:
            recs.append(WL.summary(num + 1, [WL.item("loss", "1.0")]))
            num += 1
    return WL.write(tmp_path / f"run-r{seed}.wandb", recs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_logs_fast_and_wire_paths_agree(tmp_path, seed):
    f = _random_log(tmp_path, seed)
    fast, slow = W.parse(f, f.name), W.parse(f, f.name, fast_path=False)
    assert not fast.source.problems, fast.source.problems
    a, b = _series(fast), _series(slow)
    assert set(a) == set(b)
    assert {"loss", "nested.metric", "typed"} <= set(a)
    assert "text" not in a            # a string is not a curve point
    for k in a:
        assert a[k].steps.tolist() == b[k].steps.tolist(), k
        assert _same(a[k].values, b[k].values), k
    assert len(a["loss"].steps) == 399 and a["loss"].steps.tolist() == list(range(399))
    assert np.isnan(a["bad"].values).all()


def test_step_metric_and_step_sync(tmp_path):
    """HF's define_metric: '*' against train/global_step with step_sync; a row without it
    takes the last value seen; a key with no step metric keeps wandb's _step."""
    recs = [WL.metric(1, name="train/global_step"),
            WL.metric(2, glob="train/*", step_metric="train/global_step", sync=True),
            WL.metric(3, glob="eval/*", step_metric="train/global_step", sync=True)]
    num = 3
    step_ = 0
    for gs in range(1, 21):
        num += 1
        recs.append(WL.history(num, [WL.item("train/loss", repr(1.0 / gs)), WL.item("train/global_step", str(gs)),
                                     WL.item("_step", str(step_))], step_))
        step_ += 1
        if gs % 5 == 0:
            num += 1
            recs.append(WL.history(num, [WL.item("eval/loss", repr(2.0 / gs)), WL.item("_step", str(step_)),
                                         WL.item("other", "3")], step_))
            step_ += 1
    f = WL.write(tmp_path / "run-s.wandb", recs)
    s = _series(W.parse(f, f.name))
    assert s["train/loss"].steps.tolist() == list(range(1, 21))
    assert s["eval/loss"].steps.tolist() == [5, 10, 15, 20]
    assert s["other"].steps.tolist() == [5, 11, 17, 23]          # wandb's own counter
    assert "train/global_step" not in s


def test_no_define_metric_uses_train_global_step(tmp_path):
    recs = [WL.history(i + 1, [WL.item("train/loss", "0.5"), WL.item("train/global_step", str(10 * (i + 1))),
                               WL.item("_step", str(i))], i) for i in range(5)]
    f = WL.write(tmp_path / "run-n.wandb", recs)
    assert _series(W.parse(f, f.name))["train/loss"].steps.tolist() == [10, 20, 30, 40, 50]


def test_truncated_log_keeps_every_complete_record(tmp_path):
    f = _fixture_file()
    data = f.read_bytes()
    full = _series(W.parse(f, f.name))["train/loss"]
    for cut in (len(data) // 3, len(data) // 2 + 5, len(data) - 3):
        p = tmp_path / f"run-cut{cut}.wandb"
        p.write_bytes(data[:cut])
        parsed = W.parse(p, p.name)
        assert any("truncated" in pr for pr in parsed.source.problems), parsed.source.problems
        got = _series(parsed).get("train/loss")
        if got is not None:
            n = len(got.steps)
            assert got.steps.tolist() == full.steps[:n].tolist()
            assert _same(got.values, full.values[:n])


def test_damaged_block_is_skipped_and_reported(tmp_path):
    f = _random_log(tmp_path, 5)
    data = bytearray(f.read_bytes())
    good = _series(W.parse(f, f.name))["loss"]
    data[W.BLOCK + 200] ^= 0xFF          # inside a record of the second block
    p = tmp_path / "run-bad.wandb"
    p.write_bytes(bytes(data))
    parsed = W.parse(p, p.name)
    assert any("CRC" in pr or "damaged" in pr or "decoded" in pr for pr in parsed.source.problems)
    got = _series(parsed)["loss"]
    assert 0 < len(good.steps) - len(got.steps) <= 200
    assert got.steps[-1] == good.steps[-1]          # blocks after the damage are read


@pytest.mark.parametrize("data", [b"", b":W&B", b"garbage" * 100, b":W&B\xe1\xbe\x07" + b"\0" * 50])
def test_not_a_record_log(tmp_path, data):
    p = tmp_path / "run-x.wandb"
    p.write_bytes(data)
    parsed = W.parse(p, p.name)
    assert parsed.source.problems and not parsed.series


def test_offline_run_written_by_wandb(tmp_path, monkeypatch):
    """wandb itself (offline) writing what users log: define_metric, NaN, infinities,
    nested dicts, strings, a long key, `step=`; our reader against wandb's protobufs."""
    wandb = pytest.importorskip("wandb")
    for k, v in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path),
                 "WANDB_DISABLE_GIT": "true", "WANDB_CONSOLE": "off"}.items():
        monkeypatch.setenv(k, v)
    run = wandb.init(project="t", config={"learning_rate": 3e-4, "lora_r": 16})
    long_key = "x/" + "y" * 200
    for s in range(1, 60):
        run.log({"train/loss": math.exp(-s / 20), "nested": {"a": s}, "note": "text",
                 long_key: s * 0.5, "weird": float("nan") if s % 7 == 0 else float("inf") if s % 11 == 0 else 1.0},
                step=s * 3)
    run.finish()
    (f,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    rows = WL.reference_rows(WL.wait_written(f))
    got = _series(W.parse(f, f.name))
    for key in ("train/loss", long_key, "weird"):
        exp = [(r["_step"], float(r[key])) for r in rows if key in r]
        assert got[key].steps.tolist() == [s for s, _ in exp]
        assert _same(got[key].values, [v for _, v in exp])
    assert got["train/loss"].steps.tolist() == [s * 3 for s in range(1, 60)]
    assert "note" not in got
    nested = [k for k in got if k.startswith("nested")]
    assert nested and got[nested[0]].values.tolist() == [float(s) for s in range(1, 60)]
