"""ckpt.* rules on adapter files written with the safetensors writer and read by the real
reader (lorascope.ingest.safetensors)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from lorascope.ingest.safetensors import read_checkpoint
from lorascope.model import Config, ConfigValue, Run
from lorascope.rules.registry import DOC_SECTIONS, REGISTRY, load_catalog, load_rule_modules, params_for

RNG = np.random.default_rng(7)
LAYERS = ["base_model.model.model.layers.0.self_attn.q_proj",
          "base_model.model.model.layers.0.self_attn.v_proj",
          "base_model.model.model.layers.1.self_attn.q_proj",
          "base_model.model.model.layers.1.self_attn.v_proj"]


@pytest.fixture(scope="module")
def catalog():
    load_rule_modules()
    return load_catalog()


def peft_ckpt(run_dir: Path, step: int, scale: float = 0.01, r: int = 8, alpha: float = 16,
              zero: bool = False, nan: bool = False, layers=LAYERS, config: bool = True):
    d = run_dir / f"checkpoint-{step}"
    d.mkdir(parents=True, exist_ok=True)
    t = {}
    for i, name in enumerate(layers):
        up = (RNG.standard_normal((64, r)) * scale).astype(np.float32)
        if zero:
            up[:] = 0
        if nan and i == 1:
            up[2, 3] = np.nan
        t[f"{name}.lora_A.weight"] = (RNG.standard_normal((r, 64)) * 0.1).astype(np.float32)
        t[f"{name}.lora_B.weight"] = up
    save_file(t, d / "adapter_model.safetensors", metadata={"format": "pt"})
    if config:
        (d / "adapter_config.json").write_text(json.dumps(
            {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": ["q_proj", "v_proj"]}))
    rel = f"checkpoint-{step}/adapter_model.safetensors"
    return read_checkpoint(d / "adapter_model.safetensors", rel)


def make_run(checkpoints, **config) -> Run:
    origins = {k: ConfigValue(k, v, "train.yaml", {"lora_rank": "lora_rank", "lora_alpha": "lora_alpha",
                                                   "learning_rate": "learning_rate",
                                                   "target_modules": "lora_target"}.get(k, k))
               for k, v in config.items()}
    return Run(path="run", name="run", checkpoints=sorted(checkpoints, key=lambda c: (c.step is None, c.step or 0)),
               config=Config(values=dict(config), origins=origins))


def fire(catalog, rid, run):
    return REGISTRY[rid].func(run, params_for(rid, catalog))


def test_rules_are_registered_documented_and_in_the_catalog(catalog):
    for rid, sev in (("ckpt.zero_adapter", "critical"), ("ckpt.nonfinite", "critical"),
                     ("ckpt.norm_growth", "warning"), ("ckpt.config_mismatch", "warning")):
        assert rid in REGISTRY and catalog[rid]["severity"] == sev
        for sec in DOC_SECTIONS:
            assert f"## {sec}" in REGISTRY[rid].doc


def test_healthy_run_is_silent(tmp_path, catalog):
    cks = [peft_ckpt(tmp_path, s, scale=0.01 * s / 100) for s in (100, 200, 300)]
    run = make_run(cks, lora_rank=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                   learning_rate=2e-4)
    for rid in ("ckpt.zero_adapter", "ckpt.nonfinite", "ckpt.norm_growth", "ckpt.config_mismatch"):
        assert fire(catalog, rid, run) == [], rid


def test_zero_adapter_with_lr_zero_fixes_lr(tmp_path, catalog):
    cks = [peft_ckpt(tmp_path, 500, zero=True)]
    run = make_run(cks, learning_rate=0.0)
    (f,) = fire(catalog, "ckpt.zero_adapter", run)
    assert f.severity == "critical"
    assert "checkpoint-500/adapter_model.safetensors" in f.title
    assert f.files == ["checkpoint-500/adapter_model.safetensors"]
    assert f.fix == {"learning_rate": 1e-4}
    assert f.step == 500


def test_zero_adapter_before_first_update_is_not_reported(tmp_path, catalog):
    cks = [peft_ckpt(tmp_path, 0, zero=True), peft_ckpt(tmp_path, 100)]
    assert fire(catalog, "ckpt.zero_adapter", make_run(cks, learning_rate=1e-4)) == []


def test_adapter_file_without_lora_weights(tmp_path, catalog):
    d = tmp_path / "checkpoint-10"
    d.mkdir()
    save_file({}, d / "adapter_model.safetensors")
    ck = read_checkpoint(d / "adapter_model.safetensors", "checkpoint-10/adapter_model.safetensors")
    (f,) = fire(catalog, "ckpt.zero_adapter", make_run([ck]))
    assert f.title.startswith("Adapter file holds no LoRA weights")
    assert f.files == ["checkpoint-10/adapter_model.safetensors"]


def test_full_model_file_is_not_an_empty_adapter(tmp_path, catalog):
    f = tmp_path / "model.safetensors"
    save_file({"lm_head.weight": np.ones((4, 4), np.float32)}, f)
    ck = read_checkpoint(f, "model.safetensors")
    assert fire(catalog, "ckpt.zero_adapter", make_run([ck])) == []


def test_nonfinite_names_file_and_layers(tmp_path, catalog):
    cks = [peft_ckpt(tmp_path, 100), peft_ckpt(tmp_path, 200, nan=True)]
    (f,) = fire(catalog, "ckpt.nonfinite", make_run(cks, learning_rate=1e-3))
    assert f.severity == "critical" and f.step == 200
    assert "checkpoint-200" in f.title
    assert any(LAYERS[1] in e for e in f.evidence)
    assert any("last clean checkpoint" in e and "checkpoint-100" in e for e in f.evidence)


def test_norm_growth_fires_on_explosion_with_trajectory(tmp_path, catalog):
    cks = [peft_ckpt(tmp_path, 100, scale=0.01), peft_ckpt(tmp_path, 200, scale=0.015),
           peft_ckpt(tmp_path, 300, scale=2.0)]
    (f,) = fire(catalog, "ckpt.norm_growth", make_run(cks))
    assert f.severity == "warning"
    assert f.step == 300 and f.step_range == [200, 300]
    assert "step 100" in f.evidence[0] and "step 300" in f.evidence[0]
    assert f.files == ["checkpoint-300/adapter_model.safetensors"]


def test_norm_growth_allows_linear_growth_from_zero(tmp_path, catalog):
    # x10 in norm between steps 10 and 100 is what a linear rise from zero gives
    cks = [peft_ckpt(tmp_path, 10, scale=0.001), peft_ckpt(tmp_path, 100, scale=0.01)]
    assert fire(catalog, "ckpt.norm_growth", make_run(cks)) == []


def test_config_mismatch_rank_alpha_targets_cite_config_file(tmp_path, catalog):
    cks = [peft_ckpt(tmp_path, 100, r=16, alpha=32)]
    run = make_run(cks, lora_rank=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj"])
    found = fire(catalog, "ckpt.config_mismatch", run)
    titles = " | ".join(f.title for f in found)
    assert len(found) == 3, titles
    assert "rank 16" in titles and "lora_rank = 8" in titles
    assert "alpha 32" in titles
    assert "missing k_proj" in titles
    assert all(any("train.yaml" in e for e in f.evidence) for f in found)
    assert all(f.severity == "warning" for f in found)


def test_alpha_equal_rank_from_converter_is_not_a_mismatch(tmp_path, catalog):
    name = "lora_unet_mid_block_attentions_0_proj_in"
    f = tmp_path / "converted.safetensors"
    save_file({f"{name}.lora_down.weight": RNG.standard_normal((8, 16)).astype(np.float32),
               f"{name}.lora_up.weight": RNG.standard_normal((16, 8)).astype(np.float32),
               f"{name}.alpha": np.array(8, np.int64)}, f)
    ck = read_checkpoint(f, f.name)
    assert ck.alpha == 8
    assert fire(catalog, "ckpt.config_mismatch", make_run([ck], lora_rank=8, lora_alpha=4)) == []
    # the same alpha written by kohya itself (it names its alpha in the metadata) is real
    save_file({f"{name}.lora_down.weight": RNG.standard_normal((8, 16)).astype(np.float32),
               f"{name}.lora_up.weight": RNG.standard_normal((16, 8)).astype(np.float32),
               f"{name}.alpha": np.array(8, np.float32)}, f, metadata={"ss_network_alpha": "8"})
    ck = read_checkpoint(f, f.name)
    (m,) = fire(catalog, "ckpt.config_mismatch", make_run([ck], lora_rank=8, lora_alpha=4))
    assert "alpha 8" in m.title


def test_target_modules_all_is_not_compared(tmp_path, catalog):
    cks = [peft_ckpt(tmp_path, 100)]
    assert fire(catalog, "ckpt.config_mismatch", make_run(cks, target_modules=["all"])) == []
