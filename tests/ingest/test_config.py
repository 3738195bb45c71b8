"""Config files of each trainer -> normalized ConfigValues; bad files -> problems."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import tomli_w
import yaml

from lorascope.ingest.config import parse, parse_resolution, parse_safetensors_metadata
from lorascope.model import CONTRACT_CONFIG_KEYS, EXTRA_CONFIG_KEYS

WILD = Path(__file__).resolve().parents[3] / "shared" / "wild-runs"
if not WILD.is_dir():
    WILD = Path("/work/shared/wild-runs")


def _write(tmp_path: Path, rel: str, text: str | bytes) -> Path:
    p = tmp_path / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    return p


def _vals(parsed) -> dict:
    return {c.key: c.value for c in parsed.config}


def _origins(parsed) -> dict:
    return {c.key: c.orig_key for c in parsed.config}


def _check_keys(parsed, rel):
    for c in parsed.config:
        assert c.key in CONTRACT_CONFIG_KEYS + EXTRA_CONFIG_KEYS, c.key
        assert c.file == rel


# -- trainers -------------------------------------------------------------------------

def test_lora_scripts_sectioned_toml(tmp_path):
    doc = {
        "model_arguments": {"pretrained_model_name_or_path": "./sd-models/model.ckpt"},
        "dataset_arguments": {"train_data_dir": "./train/aki", "resolution": "512,768"},
        "additional_network_arguments": {"network_dim": 32, "network_alpha": 16,
                                         "network_module": "networks.lora"},
        "optimizer_arguments": {"unet_lr": "1e-4", "text_encoder_lr": 1e-5,
                                "optimizer_type": "AdamW8bit",
                                "lr_scheduler": "cosine_with_restarts",
                                "lr_warmup_steps": 0, "lr_restart_cycles": 1},
        "training_arguments": {"train_batch_size": 1, "max_train_epochs": 10,
                               "max_train_steps": 1600, "seed": 1337,
                               "mixed_precision": "fp16"},
        "saving_arguments": {"output_name": "aki", "output_dir": "./output"},
    }
    rel = "config/lora.toml"
    p = parse(_write(tmp_path, rel, tomli_w.dumps(doc)), rel)
    _check_keys(p, rel)
    v, o = _vals(p), _origins(p)
    assert p.facts["trainer"] == "lora-scripts" and p.facts["task"] == "sd"
    assert v["learning_rate"] == pytest.approx(1e-4) and isinstance(v["learning_rate"], float)
    assert o["learning_rate"] == "optimizer_arguments.unet_lr"
    assert v["resolution"] == 768
    assert v["lora_rank"] == 32 and v["lora_alpha"] == 16
    assert v["batch_size"] == 1 and v["epochs"] == 10
    assert "max_steps" not in v            # max_train_epochs overrides max_train_steps
    assert v["warmup_steps"] == 0
    assert v["base_model"] == "./sd-models/model.ckpt"
    assert v["train_data_dir"] == "./train/aki"
    assert v["network_module"] == "networks.lora"
    assert v["lr_scheduler"] == "cosine_with_restarts"
    assert v["lr_scheduler_num_cycles"] == 1
    assert v["mixed_precision"] == "fp16" and v["seed"] == 1337
    assert p.source.records == len(p.config) and not p.source.problems


def test_kohya_flat_toml(tmp_path):
    text = """
pretrained_model_name_or_path = "/models/v1-5-pruned.safetensors"
train_data_dir = "/data/chara"
output_dir = "/out"
output_name = "chara"
network_module = "networks.lora"
network_dim = 16
network_alpha = 8.0
learning_rate = 1e-3
unet_lr = 5e-4
train_batch_size = 2
gradient_accumulation_steps = 2
max_train_steps = 3000
lr_warmup_steps = 0.1
max_grad_norm = 0.0
resolution = "256"
lr_scheduler = "constant"
"""
    rel = "train_config.toml"
    p = parse(_write(tmp_path, rel, text), rel)
    v = _vals(p)
    assert p.facts["trainer"] == "kohya" and p.facts["task"] == "sd"
    assert v["learning_rate"] == pytest.approx(5e-4)       # unet_lr wins
    assert v["max_steps"] == 3000 and "epochs" not in v
    assert v["warmup_ratio"] == pytest.approx(0.1) and "warmup_steps" not in v
    assert v["max_grad_norm"] == 0.0                        # 0 kept: clipping off
    assert v["resolution"] == 256 and v["grad_accum"] == 2
    assert v["lora_alpha"] == 8
    assert p.facts["output_name"] == "chara"


def test_kohya_dataset_toml(tmp_path):
    text = r"""
[general]
shuffle_caption = true
resolution = [768, 512]

[[datasets]]
batch_size = 4

  [[datasets.subsets]]
  image_dir = 'C:\train\10_chara'
  num_repeats = 10

  [[datasets.subsets]]
  is_reg = true
  image_dir = 'C:\reg'
  num_repeats = 1
"""
    rel = "dataset.toml"
    p = parse(_write(tmp_path, rel, text), rel)
    v, o = _vals(p), _origins(p)
    assert p.facts["task"] == "sd" and "trainer" not in p.facts
    assert v["resolution"] == 768 and o["resolution"] == "general.resolution"
    assert v["batch_size"] == 4 and o["batch_size"] == "datasets.0.batch_size"
    assert v["train_data_dir"] == "C:\\train\\10_chara"
    assert o["train_data_dir"] == "datasets.0.subsets.0.image_dir"
    assert p.facts["num_repeats"] == 10


def test_llamafactory_yaml(tmp_path):
    text = """\
### model
model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 16
lora_alpha: 32
lora_target: q_proj,v_proj
dataset: my_data,alpaca_en_demo
dataset_dir: data
template: llama3
cutoff_len: 2048
max_samples: 1000
output_dir: saves/llama3-8b/lora/sft
logging_steps: 10
save_steps: 500
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
learning_rate: 1e-4
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
val_size: 0.1
evaluation_strategy: steps
eval_steps: 500
"""
    run = tmp_path / "run"
    _write(run, "data/dataset_info.json",
           json.dumps({"my_data": {"file_name": "my_data.jsonl"},
                       "alpaca_en_demo": {"hf_hub_url": "llamafactory/alpaca_en"}}))
    rel = "training_args.yaml"
    p = parse(_write(run, rel, text), rel)
    v, o = _vals(p), _origins(p)
    assert p.facts["trainer"] == "llamafactory" and p.facts["task"] == "llm"
    assert v["learning_rate"] == pytest.approx(1e-4)       # "1e-4" is a str to YAML 1.1
    assert v["batch_size"] == 1 and v["grad_accum"] == 8
    assert v["epochs"] == 3 and isinstance(v["epochs"], int)
    assert v["lora_rank"] == 16 and v["lora_alpha"] == 32
    assert v["target_modules"] == ["q_proj", "v_proj"]
    assert v["cutoff_len"] == 2048 and v["eval_strategy"] == "steps"
    assert o["eval_strategy"] == "evaluation_strategy"
    assert v["warmup_ratio"] == pytest.approx(0.1)
    assert v["mixed_precision"] == "bf16"
    assert v["base_model"] == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert v["dataset_files"] == ["data/my_data.jsonl"]    # hub dataset is not a file
    assert p.facts["dataset_names"] == ["my_data", "alpaca_en_demo"]
    assert v["output_dir"] == "saves/llama3-8b/lora/sft"


def test_peft_adapter_config(tmp_path):
    doc = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16,
           "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"],
           "base_model_name_or_path": "/root/autodl-tmp/Qwen2-7B"}
    rel = "checkpoint-100/adapter_config.json"
    p = parse(_write(tmp_path, rel, json.dumps(doc, indent=2).replace("\n", "\r\n")), rel)
    v = _vals(p)
    assert v == {"lora_rank": 8, "lora_alpha": 16, "lora_dropout": 0.05,
                 "target_modules": ["q_proj", "v_proj"],
                 "base_model": "/root/autodl-tmp/Qwen2-7B"}
    assert p.facts["task"] == "llm" and "trainer" not in p.facts


def test_hf_training_args_json_with_nan_and_bom(tmp_path):
    # The shape of TrainingArguments.to_json_string() (importing transformers takes
    # ~20 s here, so the document is written out; keys and defaults as transformers 4.x/5.x).
    doc = {"output_dir": "out", "overwrite_output_dir": False, "do_train": False,
           "do_eval": False, "eval_strategy": "no", "prediction_loss_only": False,
           "per_device_train_batch_size": 4, "per_device_eval_batch_size": 8,
           "gradient_accumulation_steps": 2, "eval_accumulation_steps": None,
           "learning_rate": 3e-4, "weight_decay": 0.0, "adam_beta1": 0.9,
           "adam_beta2": 0.999, "adam_epsilon": 1e-08, "max_grad_norm": 1.0,
           "num_train_epochs": 3, "max_steps": 500, "lr_scheduler_type": "cosine",
           "lr_scheduler_kwargs": {}, "warmup_ratio": 0.0, "warmup_steps": 0,
           "logging_dir": "out/runs/Nov26", "logging_strategy": "steps",
           "logging_first_step": False, "logging_steps": 5, "logging_nan_inf_filter": True,
           "save_strategy": "steps", "save_steps": 500, "seed": 7, "bf16": False,
           "fp16": True, "eval_steps": None, "label_names": None, "optim": "adamw_torch",
           "gradient_checkpointing": False, "report_to": []}
    text = json.dumps(doc, indent=2).replace('"max_grad_norm": 1.0', '"max_grad_norm": NaN')
    rel = "training_args.json"
    p = parse(_write(tmp_path, rel, b"\xef\xbb\xbf" + text.encode()), rel)
    v = _vals(p)
    assert not p.source.problems
    assert p.facts["trainer"] == "hf-trainer"
    assert v["learning_rate"] == pytest.approx(3e-4)
    assert v["batch_size"] == 4 and v["grad_accum"] == 2
    assert v["max_steps"] == 500 and "epochs" not in v     # max_steps overrides epochs
    assert v["lr_scheduler"] == "cosine" and v["seed"] == 7
    assert v["warmup_steps"] == 0
    assert "eval_strategy" not in v                        # "no" -> None
    assert "max_grad_norm" not in v                        # NaN is no value
    assert v["mixed_precision"] == "fp16" and v["optimizer"] == "adamw_torch"
    assert v["logging_steps"] == 5 and v["warmup_ratio"] == 0.0


def test_ss_metadata():
    meta = {"ss_learning_rate": "0.0001", "ss_unet_lr": "None", "ss_text_encoder_lr": "5e-05",
            "ss_network_dim": "32", "ss_network_alpha": "16.0",
            "ss_batch_size_per_device": "2", "ss_gradient_accumulation_steps": "1",
            "ss_num_epochs": "10", "ss_max_train_steps": "1000", "ss_lr_warmup_steps": "0",
            "ss_max_grad_norm": "0.0", "ss_resolution": "(512, 768)",
            "ss_lr_scheduler": "cosine", "ss_num_train_images": "200",
            "ss_network_module": "networks.lora", "ss_sd_model_name": "v1-5.safetensors",
            "ss_output_name": "chara", "ss_seed": "42",
            "ss_dataset_dirs": json.dumps({"10_chara": {"n_repeats": 10, "img_count": 20}}),
            "format": "pt"}
    facts: dict = {}
    vals = parse_safetensors_metadata(meta, "chara.safetensors", facts)
    v = {c.key: c.value for c in vals}
    o = {c.key: c.orig_key for c in vals}
    assert v["learning_rate"] == pytest.approx(1e-4) and o["learning_rate"] == "ss_learning_rate"
    assert v["lora_rank"] == 32 and v["lora_alpha"] == 16
    assert v["resolution"] == 768 and v["epochs"] == 10 and v["max_steps"] == 1000
    assert v["max_grad_norm"] == 0.0 and v["warmup_steps"] == 0
    assert v["num_train_items"] == 20                      # unique images, not repeats
    # kohya keeps only the model's file name: a name, never checked as a path
    assert v["base_model_name"] == "v1-5.safetensors" and "base_model" not in v
    assert facts == {"trainer": "kohya", "task": "sd", "num_repeats": 10, "train_views": 200,
                     "output_name": "chara"}
    assert all(c.file == "chara.safetensors" for c in vals)
    assert parse_safetensors_metadata({"format": "pt"}, "x.safetensors") == []
    assert parse_safetensors_metadata({"ss_datasets": "{not json", "ss_network_dim": "x"},
                                      "x.safetensors") == []


@pytest.mark.parametrize("raw,want", [(512, 512), ("512", 512), ("512,768", 768),
                                      ("(1024, 768)", 1024), ([640, 512], 640),
                                      ("None", None), ("abc", None), (True, None)])
def test_resolution_forms(raw, want):
    assert parse_resolution(raw) == want


# -- unknown and broken files ---------------------------------------------------------

def test_unknown_yaml_gives_nothing(tmp_path):
    rel = "docker-compose.yml"
    p = parse(_write(tmp_path, rel, "services:\n  web:\n    image: nginx\n"), rel)
    assert p.config == [] and p.source.records == 0 and p.source.problems == []


@pytest.mark.parametrize("rel,text,needle", [
    ("bad.yaml", "a: [1, 2\nb: }", "invalid YAML"),
    ("bad.toml", "network_dim = \n[[", "invalid TOML"),
    ("adapter_config.json", '{"r": 8, ', "invalid JSON"),
])
def test_broken_files_are_problems(tmp_path, rel, text, needle):
    p = parse(_write(tmp_path, rel, text), rel)
    assert p.config == [] and any(needle in s for s in p.source.problems)


def test_python_tag_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    rel = "evil.yaml"
    text = f'learning_rate: !!python/object/apply:os.system ["touch {marker}"]\n'
    p = parse(_write(tmp_path, rel, text), rel)
    assert not marker.exists()
    assert p.config == [] and any("tag not allowed" in s for s in p.source.problems)


def test_alias_bomb_returns_quickly(tmp_path):
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 30):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 9)}]")
    lines.append("stage: sft\nfinetuning_type: lora\nlearning_rate: 1.0e-4")
    rel = "bomb.yaml"
    t0 = time.perf_counter()
    p = parse(_write(tmp_path, rel, "\n".join(lines)), rel)
    assert time.perf_counter() - t0 < 2.0
    assert p.config == [] and any("alias" in s for s in p.source.problems)


def test_large_file_and_non_dict_documents(tmp_path):
    big = _write(tmp_path, "big.yaml", "x: " + "a" * (5 * 1024 * 1024))
    p = parse(big, "big.yaml")
    assert p.config == [] and any("too large" in s for s in p.source.problems)
    for rel, text in [("list.yaml", "- 1\n- 2\n"), ("empty.toml", ""),
                      ("scalar.json", "3")]:
        p = parse(_write(tmp_path, rel, text), rel)
        assert p.config == [] and p.source.problems == []


def test_deep_and_recursive_yaml(tmp_path):
    rel = "rec.yaml"
    p = parse(_write(tmp_path, rel, "a: &x\n  b: *x\nstage: sft\nlora_rank: 8\n"), rel)
    assert _vals(p).get("lora_rank") == 8
    deep = "[" * 5000 + "]" * 5000
    p = parse(_write(tmp_path, "deep.json", deep), "deep.json")
    assert p.config == []


def test_missing_file_is_a_problem(tmp_path):
    p = parse(tmp_path / "nope.yaml", "nope.yaml")
    assert p.config == [] and p.source.problems


# -- wild runs ------------------------------------------------------------------------

def _wild_configs():
    if not WILD.is_dir():
        return []
    from lorascope.discover import classify
    out = []
    for f in sorted(WILD.rglob("*")):
        if f.is_file():
            parts = f.relative_to(WILD).as_posix().split("/", 1)
            if len(parts) == 2 and classify(parts[1]) == "config":
                rel = parts[1]
                out.append((f, rel))
    return out


def test_wild_configs_parse_without_problems():
    files = _wild_configs()
    if not files:
        pytest.skip("shared/wild-runs not available")
    seen_peft = 0
    for f, rel in files:
        p = parse(f, rel)
        assert not p.source.problems, (f, p.source.problems)
        _check_keys(p, rel)
        if f.name == "adapter_config.json":
            seen_peft += 1
            v = _vals(p)
            doc = json.loads(f.read_text(encoding="utf-8-sig"))
            assert v["lora_rank"] == doc["r"] and v["lora_alpha"] == doc["lora_alpha"]
    assert seen_peft > 0


def test_wild_llamafactory_training_args():
    f = WILD / "lf-sunxiaochuan" / "training_args.yaml"
    if not f.is_file():
        pytest.skip("shared/wild-runs not available")
    p = parse(f, "training_args.yaml")
    doc = yaml.safe_load(f.read_text(encoding="utf-8"))
    v = _vals(p)
    assert p.facts["trainer"] == "llamafactory"
    assert v["cutoff_len"] == doc["cutoff_len"]
    assert v["base_model"] == doc["model_name_or_path"]


def test_seed_articles_lora_scripts_yaml(tmp_path):
    """The lora-scripts YAML of ../shared/seeds, read fully, keys as the user wrote them."""
    text = """\
train_data_dir: "./data/style_train"
metadata_path: "./data/style_train/metadata.csv"
base_model: "./models/Stable-diffusion/v1-5-pruned.safetensors"
task_type: sd
lora_rank: 8
lora_alpha: 16
target_modules: ["q_proj", "v_proj"]
batch_size: 4
grad_accumulation_steps: 4
epochs: 10
learning_rate: 2e-4
resolution: 768
save_steps: 100
output_dir: "./output/my_style_lora"
"""
    rel = "configs/my_lora_config.yaml"
    p = parse(_write(tmp_path, rel, text), rel)
    _check_keys(p, rel)
    v, o = _vals(p), _origins(p)
    assert p.facts["trainer"] == "lora-scripts" and p.facts["task"] == "sd"
    assert p.facts["layout"] == "lora-scripts-yaml"
    assert v["learning_rate"] == pytest.approx(2e-4)        # "2e-4" is a YAML string
    assert v["lora_rank"] == 8 and v["lora_alpha"] == 16
    assert v["target_modules"] == ["q_proj", "v_proj"]
    assert v["batch_size"] == 4 and v["epochs"] == 10 and "max_steps" not in v
    assert v["grad_accum"] == 4 and o["grad_accum"] == "grad_accumulation_steps"
    assert v["save_steps"] == 100 and v["resolution"] == 768
    assert v["base_model"].endswith("v1-5-pruned.safetensors") and o["base_model"] == "base_model"
    assert v["train_data_dir"] == "./data/style_train"
    assert v["metadata_path"] == "./data/style_train/metadata.csv"
    assert v["output_dir"] == "./output/my_style_lora"


def test_seed_yaml_llm_task_names_its_data_file(tmp_path):
    text = ("base_model: ./models/qwen\ntask_type: llm\ntrain_data_dir: ./data/chat.jsonl\n"
            "lora_rank: 64\nbatch_size: 1\nepochs: 3\nlearning_rate: 3e-4\nmax_seq_length: 2048\n")
    p = parse(_write(tmp_path, "cfg.yaml", text), "cfg.yaml")
    v = _vals(p)
    assert p.facts["task"] == "llm" and v["dataset_files"] == ["./data/chat.jsonl"]
    assert v["cutoff_len"] == 2048 and v["batch_size"] == 1


def test_llamafactory_yaml_is_not_taken_for_the_seed_dialect(tmp_path):
    text = ("model_name_or_path: m\nstage: sft\nfinetuning_type: lora\nlora_rank: 8\n"
            "dataset: alpaca\ntemplate: llama3\nlearning_rate: 1.0e-4\n")
    p = parse(_write(tmp_path, "x.yaml", text), "x.yaml")
    assert p.facts["layout"] == "llamafactory"
