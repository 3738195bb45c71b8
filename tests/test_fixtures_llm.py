"""The LLM fixture runs (fixtures/make_llm.py) hold what a user would find on disk."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors import safe_open

from helpers import FIXTURES, fixture_run

MODELS = FIXTURES.parent / "models"
LLM_RUNS = ["hf-healthy", "hf-lr-diverge", "hf-overfit", "hf-zero-lr", "hf-killed",
            "hf-reused-dir", "lf-healthy", "lf-base-not-loaded"]


def _state(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _losses(hist, key="loss"):
    return [(h["step"], h[key]) for h in hist if key in h and "train_loss" not in h]


def _tensors(path: Path) -> dict[str, np.ndarray]:
    with safe_open(str(path), framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _ckpts(run: Path) -> list[Path]:
    return sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))


@pytest.mark.parametrize("name", LLM_RUNS)
def test_trainer_states_parse_and_hold_history(name):
    run = fixture_run(name)
    states = list(run.glob("checkpoint-*/trainer_state.json")) + list(run.glob("trainer_state.json"))
    assert states
    for p in states:
        st = _state(p)
        assert st["log_history"], p
        assert p.parent == run or st["global_step"] == int(p.parent.name.split("-")[1])


@pytest.mark.parametrize("name", LLM_RUNS)
def test_adapters_use_peft_layout(name):
    run = fixture_run(name)
    files = list(run.glob("**/adapter_model.safetensors"))
    assert files
    for f in files:
        keys = list(_tensors(f))
        assert keys and all(k.startswith("base_model.model.model.layers.") for k in keys)
        assert {k.rsplit(".", 2)[-2] for k in keys} == {"lora_A", "lora_B"}
        assert {k.split(".")[-3] for k in keys} == {"q_proj", "v_proj"}
        cfg = json.loads((f.parent / "adapter_config.json").read_text())
        assert (cfg["r"], cfg["lora_alpha"]) == (8, 16)
        assert sorted(cfg["target_modules"]) == ["q_proj", "v_proj"]


def test_base_model_is_small_and_loadable_by_name():
    base = MODELS / "tiny-llama"
    if not base.is_dir():
        pytest.skip("models not generated")
    assert (base / "model.safetensors").stat().st_size < 1_000_000
    assert (base / "tokenizer.json").exists()
    cfg = json.loads((base / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["num_hidden_layers"] == 2


def test_healthy_run_learns_and_is_complete():
    run = fixture_run("hf-healthy")
    st = _state(run / "trainer_state.json")
    tr = _losses(st["log_history"])
    ev = _losses(st["log_history"], "eval_loss")
    assert st["global_step"] == st["max_steps"]
    assert np.mean([v for _, v in tr[-10:]]) < 0.8 * np.mean([v for _, v in tr[:5]])
    assert ev[-1][1] < ev[0][1]
    assert len(_ckpts(run)) >= 2 and (run / "adapter_model.safetensors").exists()
    assert list(run.glob("runs/*/events.out.tfevents.*"))
    args = json.loads((run / "training_args.json").read_text())
    assert args["learning_rate"] == 1e-3 and args["report_to"] == ["tensorboard"]
    log = (run / "train.log").read_text(encoding="utf-8")
    assert "trainable params: 4,096" in log and "***** Running training *****" in log


def test_lr_diverge_has_checkpoints_before_onset():
    run = fixture_run("hf-lr-diverge")
    st = _state(run / "trainer_state.json")
    tr = _losses(st["log_history"])
    steps = np.array([s for s, _ in tr])
    vals = np.convolve([v for _, v in tr], np.ones(5) / 5, mode="valid")
    i_min = int(np.argmin(vals))
    assert vals[i_min] < 0.65 * tr[0][1]           # it first learned
    assert vals[i_min:].max() > 1.3 * vals[i_min]  # then climbed back
    onset = steps[4:][i_min:][np.argmax(vals[i_min:] > 1.15 * vals[i_min])]
    assert all(math.isfinite(v) for _, v in tr)    # diverges, never NaN
    assert [int(p.name.split("-")[1]) for p in _ckpts(run)][0] < onset
    args = json.loads((run / "training_args.json").read_text())
    assert args["max_grad_norm"] == 0.0


def test_overfit_eval_rises_while_train_falls():
    run = fixture_run("hf-overfit")
    hist = _state(run / "trainer_state.json")["log_history"]
    ev, tr = _losses(hist, "eval_loss"), _losses(hist)
    best_step, best = min(ev, key=lambda t: t[1])
    assert ev[-1][1] > best * 1.05 and best_step < ev[-1][0]
    before = [v for s, v in tr if s <= best_step][-5:]
    after = [v for s, v in tr][-5:]
    assert np.mean(after) < np.mean(before)


def test_zero_lr_adapter_B_is_exactly_zero():
    run = fixture_run("hf-zero-lr")
    for f in [run / "adapter_model.safetensors", *(_ckpts(run)[i] / "adapter_model.safetensors"
                                                   for i in range(len(_ckpts(run))))]:
        t = _tensors(f)
        b = [v for k, v in t.items() if ".lora_B." in k]
        a = [v for k, v in t.items() if ".lora_A." in k]
        assert b and all(not v.any() for v in b)
        assert all(v.any() for v in a)
    ev = _losses(_state(run / "trainer_state.json")["log_history"], "eval_loss")
    assert len({v for _, v in ev}) == 1


def test_killed_run_has_no_final_outputs():
    run = fixture_run("hf-killed")
    assert not (run / "adapter_model.safetensors").exists()
    assert not (run / "trainer_state.json").exists()
    ck = _ckpts(run)
    assert ck
    st = _state(ck[-1] / "trainer_state.json")
    assert st["global_step"] < st["max_steps"]
    log = (run / "train.log").read_text(encoding="utf-8")
    assert "***** Running training *****" in log and "train_runtime" not in log
    assert list(run.glob("runs/*/events.out.tfevents.*"))


def test_reused_dir_mixes_two_runs():
    run = fixture_run("hf-reused-dir")
    assert len(list((run / "logs").glob("events.out.tfevents.*"))) == 2
    plans = {(_state(p / "trainer_state.json")["max_steps"],
              _state(p / "trainer_state.json")["train_batch_size"]) for p in _ckpts(run)}
    assert plans == {(60, 8), (40, 4)}
    assert (run / "train.log").read_text().count("***** Running training *****") == 2


def test_lf_layout_files():
    run = fixture_run("lf-healthy")
    lines = [json.loads(x) for x in (run / "trainer_log.jsonl").read_text().splitlines()]
    assert lines and {"current_steps", "total_steps", "loss", "lr", "epoch", "percentage",
                      "elapsed_time", "remaining_time"} <= set(lines[0])
    assert any("eval_loss" in x for x in lines)
    assert "learning_rate" not in lines[0]
    cfg = yaml.safe_load((run / "training_args.yaml").read_text())
    assert cfg["stage"] == "sft" and cfg["finetuning_type"] == "lora"
    assert (run / cfg["model_name_or_path"] / "model.safetensors").exists()
    info = json.loads((run / cfg["dataset_dir"] / "dataset_info.json").read_text())
    assert (run / cfg["dataset_dir"] / info[cfg["dataset"]]["file_name"]).exists()
    for name in ("all_results.json", "train_results.json", "trainer_state.json",
                 "running_log.txt", "training_loss.png", "adapter_model.safetensors"):
        assert (run / name).exists(), name
    assert "train_loss" in json.loads((run / "all_results.json").read_text())


def test_lf_base_not_loaded_warns_and_stays_high():
    run, ok = fixture_run("lf-base-not-loaded"), fixture_run("lf-healthy")
    log = (run / "running_log.txt").read_text(encoding="utf-8")
    assert "LOAD REPORT" in log and "MISSING" in log and "newly initialized" in log
    assert "LOAD REPORT" not in (ok / "running_log.txt").read_text(encoding="utf-8")
    bad = [x["loss"] for x in map(json.loads, (run / "trainer_log.jsonl").read_text().splitlines())
           if "loss" in x]
    good = [x["loss"] for x in map(json.loads, (ok / "trainer_log.jsonl").read_text().splitlines())
            if "loss" in x]
    assert min(bad) > max(good[-3:]) and bad[-1] > 0.9 * bad[0]
