"""config.* rules: table cases, one config that fires and one that stays silent."""
from __future__ import annotations

import pytest

from lorascope.model import Config, ConfigValue, Dataset, DataItem, DataSize, LogEvent, Run, StepInfo
from lorascope.rules.registry import REGISTRY, load_catalog, load_rule_modules, params_for

load_rule_modules()
CATALOG = load_catalog()


def _run(tmp_path, values: dict, task="llm", file="train.yaml", **kw) -> Run:
    """A Run whose config came from `file`; a training config (not a trainer state)
    that leaves gradient accumulation out implies the trainer's default, 1."""
    origins = {k: ConfigValue(key=k, value=v, file=file, orig_key=f"orig_{k}")
               for k, v in values.items()}
    implied = {}
    if "grad_accum" not in values and not file.endswith("trainer_state.json"):
        implied["grad_accum"] = ConfigValue("grad_accum", 1, file, "orig_grad_accum",
                                            derived="trainer default")
    return Run(path=str(tmp_path), name="x", task=task,
               config=Config(values=dict(values), origins=origins, implied=implied), **kw)


def _fire(rule_id: str, run: Run):
    return REGISTRY[rule_id].func(run, params_for(rule_id, CATALOG))


CASES = [
    # rule, task, values, fires
    ("config.lr_high", "llm", {"learning_rate": 5e-3}, True),
    ("config.lr_high", "llm", {"learning_rate": 2e-4}, False),
    ("config.lr_high", "sd", {"learning_rate": 2e-3}, True),
    ("config.lr_high", "sd", {"learning_rate": 1e-4}, False),
    ("config.lr_high", "sd", {"learning_rate": 1.0, "optimizer": "Prodigy"}, False),
    # the lora-scripts article: above 5e-4 the loss oscillates; 2e-4 is its baseline
    ("config.lr_high", "sd", {"learning_rate": 6e-4}, True),
    ("config.lr_high", "sd", {"learning_rate": 5e-4}, False),
    ("config.lr_low", "llm", {"learning_rate": 1e-7}, True),
    ("config.lr_low", "llm", {"learning_rate": 1e-5}, False),
    ("config.lr_low", "llm", {"learning_rate": 1e-6}, False),   # DPO / GRPO rates are this low
    ("config.lr_low", "sd", {"learning_rate": 0.0}, True),
    ("config.lr_low", "sd", {"learning_rate": 1e-6}, True),     # the article's mistaken 1e-6
    ("config.lr_low", "sd", {"learning_rate": 1e-5}, False),
    ("config.small_batch", "llm", {"batch_size": 1}, True),
    ("config.small_batch", "llm", {"batch_size": 2, "grad_accum": 1}, True),
    ("config.small_batch", "llm", {"batch_size": 1, "grad_accum": 8}, False),
    ("config.small_batch", "llm", {"batch_size": 4}, False),
    ("config.small_batch", "llm", {"batch_size": 1, "num_devices": 4}, False),
    ("config.rank_capacity", "sd", {"lora_rank": 128, "num_train_items": 30}, True),
    # the article: rank above 32 on a small set (<50 images) memorises
    ("config.rank_capacity", "sd", {"lora_rank": 64, "num_train_items": 40}, True),
    ("config.rank_capacity", "sd", {"lora_rank": 32, "num_train_items": 30}, True),
    ("config.rank_capacity", "sd", {"lora_rank": 32, "num_train_items": 60}, False),
    ("config.rank_capacity", "sd", {"lora_rank": 16, "num_train_items": 30}, False),
    ("config.rank_capacity", "llm", {"lora_rank": 64, "num_train_items": 500}, True),
    ("config.rank_capacity", "llm", {"lora_rank": 64, "num_train_items": 50000}, False),
    ("config.rank_capacity", "llm", {"lora_rank": 256}, False),          # size unknown
    ("config.epochs_high", "llm", {"epochs": 20, "num_train_items": 5000}, True),
    ("config.epochs_high", "llm", {"epochs": 3, "num_train_items": 5000}, False),
    ("config.epochs_high", "llm", {"epochs": 8, "num_train_items": 300}, False),
    ("config.epochs_high", "llm", {"epochs": 8, "num_train_items": 50000}, True),
    ("config.epochs_high", "llm",
     {"max_steps": 10000, "batch_size": 8, "num_train_items": 1000}, True),  # 80 epochs
    ("config.epochs_high", "sd", {"epochs": 400, "num_train_items": 20}, True),
    ("config.epochs_high", "sd", {"epochs": 10, "num_train_items": 20}, False),
    # the article's table: <50 images <= 15 epochs, 50-100: 10-12, >100: 5-8
    ("config.epochs_high", "sd", {"epochs": 15, "num_train_items": 40}, False),
    ("config.epochs_high", "sd", {"epochs": 16, "num_train_items": 40}, True),
    ("config.epochs_high", "sd", {"epochs": 12, "num_train_items": 80}, False),
    ("config.epochs_high", "sd", {"epochs": 13, "num_train_items": 80}, True),
    ("config.epochs_high", "sd", {"epochs": 8, "num_train_items": 200}, False),
    ("config.epochs_high", "sd", {"epochs": 10, "num_train_items": 200}, True),
    ("config.epochs_high", "sd",
     {"max_steps": 1000, "batch_size": 4, "num_train_items": 40}, True),    # 100 passes
    ("config.no_warmup", "llm", {"learning_rate": 3e-4, "warmup_steps": 0}, True),
    ("config.no_warmup", "llm", {"learning_rate": 3e-4, "warmup_ratio": 0.0}, True),
    ("config.no_warmup", "llm", {"learning_rate": 3e-4, "warmup_steps": 0,
                                 "warmup_ratio": 0.03}, False),
    ("config.no_warmup", "llm", {"learning_rate": 3e-4}, False),          # unknown warmup
    ("config.no_warmup", "sd", {"learning_rate": 1e-4, "warmup_steps": 0}, False),
    ("config.no_grad_clip", "sd", {"max_grad_norm": 0.0}, True),
    ("config.no_grad_clip", "sd", {"max_grad_norm": 1.0}, False),
    ("config.no_grad_clip", "llm", {}, False),
    ("config.low_resolution", "sd", {"resolution": 256}, True),
    ("config.low_resolution", "sd", {"resolution": 512}, False),
    ("config.low_resolution", "llm", {"resolution": 256}, False),
]


@pytest.mark.parametrize("rule_id,task,values,fires", CASES)
def test_table(tmp_path, rule_id, task, values, fires):
    found = _fire(rule_id, _run(tmp_path, values, task=task))
    assert bool(found) == fires, found
    for f in found:
        assert f.rule == rule_id
        assert f.severity in ("critical", "warning", "info")
        assert any("train.yaml: orig_" in e for e in f.evidence), f.evidence
        assert f.files == ["train.yaml"] or not f.files


def test_default_severities_match_contract():
    want = {"config.lr_high": "warning", "config.lr_low": "warning",
            "config.small_batch": "warning", "config.rank_capacity": "warning",
            "config.epochs_high": "warning", "config.no_warmup": "info",
            "config.no_grad_clip": "info", "config.low_resolution": "warning",
            "config.missing_path": "critical"}
    for rid, sev in want.items():
        assert rid in REGISTRY and CATALOG[rid]["severity"] == sev
        for section in ("What it detects", "Why it matters", "Example", "Fix"):
            assert f"## {section}" in REGISTRY[rid].doc, (rid, section)


def test_fixes_use_normalized_keys(tmp_path):
    run = _run(tmp_path, {"learning_rate": 5e-3, "warmup_steps": 0, "max_grad_norm": 0,
                          "batch_size": 1, "epochs": 30, "num_train_items": 5000},
               steps=StepInfo(planned=2000))
    fixes = {rid: _fire(rid, run)[0].fix for rid in
             ("config.lr_high", "config.no_warmup", "config.no_grad_clip",
              "config.small_batch", "config.epochs_high")}
    assert fixes["config.lr_high"] == {"learning_rate": 2e-4}
    assert fixes["config.no_warmup"] == {"warmup_steps": 100}      # 5 % of 2000
    assert fixes["config.no_grad_clip"] == {"max_grad_norm": 1.0}
    assert fixes["config.small_batch"] == {"grad_accum": 16}
    assert fixes["config.epochs_high"] == {"epochs": 3}


def test_sd_small_batch_is_info_and_lr_fix_is_sd_typical(tmp_path):
    run = _run(tmp_path, {"batch_size": 1, "learning_rate": 5e-3}, task="sd")
    f = _fire("config.small_batch", run)[0]
    assert f.severity == "info" and f.fix == {"grad_accum": 4}
    assert _fire("config.lr_high", run)[0].fix == {"learning_rate": 1e-4}


def test_sd_epochs_count_repeats(tmp_path):
    # one pass per epoch (lora-scripts): the article's table, 20 images at most 15 epochs
    run = _run(tmp_path, {"epochs": 40, "num_train_items": 20}, task="sd")
    (f,) = _fire("config.epochs_high", run)
    assert f.fix == {"epochs": 15} and "40 epochs" in f.title
    # kohya with 10 repeats: 400 views per image
    run = _run(tmp_path, {"epochs": 40, "num_train_items": 20}, task="sd",
               data=DataSize(items=20, repeats=10, items_from="10_chara folder"))
    f = _fire("config.epochs_high", run)[0]
    assert "400" in f.title and f.fix == {"epochs": 10}
    run = _run(tmp_path, {"epochs": 10, "num_train_items": 20}, task="sd",
               data=DataSize(items=20, repeats=10))
    assert not _fire("config.epochs_high", run)         # 100 views: the usual recipe


def test_dataset_size_from_run_datasets(tmp_path):
    run = _run(tmp_path, {"lora_rank": 128}, task="sd",
               datasets=[Dataset(kind="images", root="img",
                                 items=[DataItem(file=f"img/{i}.png") for i in range(10)])])
    f = _fire("config.rank_capacity", run)
    assert f and "10 items" in " ".join(f[0].evidence)


def test_unknown_task_picks_thresholds_from_config(tmp_path):
    run = _run(tmp_path, {"resolution": 256}, task="unknown")
    assert _fire("config.low_resolution", run)


# -- missing_path -----------------------------------------------------------------------

def test_hub_id_is_not_a_path(tmp_path):
    for hub in ("meta-llama/Llama-2-7b-hf", "gpt2", "Qwen/Qwen2.5-3B-Instruct"):
        assert not _fire("config.missing_path", _run(tmp_path, {"base_model": hub}))


def test_existing_paths_are_silent(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "base.safetensors").write_bytes(b"x")
    (tmp_path / "cfg" / "data").mkdir(parents=True)
    run = _run(tmp_path, {"base_model": str(tmp_path / "models" / "base.safetensors"),
                          "train_data_dir": "data",             # relative to the config dir
                          "dataset_files": ["models/base.safetensors"]},
               file="cfg/train.toml")
    assert not _fire("config.missing_path", run)


def test_path_from_another_machine_is_info(tmp_path):
    run = _run(tmp_path, {"base_model": "/root/autodl-tmp/nonexistent-xyz/Qwen2-7B",
                          "train_data_dir": "C:\\Users\\me\\train\\10_chara"}, task="sd")
    found = _fire("config.missing_path", run)
    assert len(found) == 2
    assert all(f.severity == "info" for f in found)
    assert any("not on this machine" in e for f in found for e in f.evidence)
    assert any("train.yaml: orig_base_model" in e for e in found[0].evidence)


def test_missing_local_path_is_critical(tmp_path):
    (tmp_path / "models").mkdir()
    run = _run(tmp_path, {"base_model": str(tmp_path / "models" / "typo.safetensors"),
                          "train_data_dir": "./models/img"}, task="sd")
    found = _fire("config.missing_path", run)
    assert [f.severity for f in found] == ["critical", "critical"]


def test_foreign_base_model_is_critical_when_load_failed(tmp_path):
    run = _run(tmp_path, {"base_model": "/root/autodl-tmp/nonexistent-xyz/Qwen2-7B"},
               events=[LogEvent(kind="base_model_not_loaded", file="train.log", line=3,
                                text="OSError: /root/autodl-tmp/... not found")])
    f = _fire("config.missing_path", run)[0]
    assert f.severity == "critical"
    assert any("not loaded" in e for e in f.evidence)


def test_ss_metadata_basename_is_not_checked(tmp_path):
    from lorascope.ingest.config import parse_safetensors_metadata
    vals = parse_safetensors_metadata({"ss_sd_model_name": "v1-5-pruned.safetensors",
                                       "ss_network_dim": "8"}, "lora.safetensors")
    run = Run(path=str(tmp_path), name="x", task="sd",
              config=Config(values={c.key: c.value for c in vals}, origins={c.key: c for c in vals}))
    assert run.config.get("base_model_name") == "v1-5-pruned.safetensors"
    assert not _fire("config.missing_path", run)


def test_batch_known_only_from_trainer_state_says_nothing_about_accumulation(tmp_path):
    # trainer_state.json records train_batch_size but not gradient_accumulation_steps
    run = _run(tmp_path, {"batch_size": 2}, file="checkpoint-60/trainer_state.json")
    assert _fire("config.small_batch", run) == []
    run = _run(tmp_path, {"batch_size": 2}, file="train.yaml")
    assert [f.severity for f in _fire("config.small_batch", run)] == ["warning"]


def test_epochs_high_with_unknown_dataset_size_is_info(tmp_path):
    run = _run(tmp_path, {"epochs": 20})
    f = _fire("config.epochs_high", run)[0]
    assert f.severity == "info" and "dataset size unknown" in f.title
    run = _run(tmp_path, {"epochs": 20, "num_train_items": 500})
    assert _fire("config.epochs_high", run)[0].severity == "warning"
