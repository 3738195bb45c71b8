"""log.* rules on Runs whose events come from parsing realistic trainer logs."""
from __future__ import annotations

from pathlib import Path

import pytest

from lorascope.ingest.textlog import parse
from lorascope.model import Config, Run
from lorascope.rules.registry import DOC_SECTIONS, REGISTRY, load_catalog, load_rule_modules, params_for

IDS = ("log.base_model_not_loaded", "log.no_trainable_params", "log.oom")
WILD = Path(__file__).resolve().parents[3] / "shared" / "wild-runs"

HEALTHY = """\
2025-05-28 16:36:36.758691: E external/local_xla/xla/stream_executor/cuda/cuda_fft.cc:467] Unable to register cuFFT factory: Attempting to register factory for plugin cuFFT when one has already been registered
E0000 00:00:1748450196.782070   34559 cuda_dnn.cc:8579] Unable to register cuDNN factory: Attempting to register factory for plugin cuDNN when one has already been registered
[INFO|modeling_utils.py:1149] 2025-05-28 16:36:43,854 >> loading weights file model.safetensors from cache at /root/.cache/huggingface/hub/models--microsoft--Phi-4-mini-instruct/model.safetensors.index.json
[INFO|modeling_utils.py:5170] 2025-05-28 16:36:46,276 >> All model checkpoint weights were used when initializing Phi3ForCausalLM.
Some weights of DistilBertForSequenceClassification were not initialized from the model checkpoint at distilbert-base-uncased and are newly initialized: ['classifier.bias', 'classifier.weight']
[INFO|2025-05-28 16:36:48] llamafactory.model.loader:143 >> trainable params: 184,549,376 || all params: 4,020,571,136 || trainable%: 4.5901
{'loss': 2.0905, 'grad_norm': 1.9506487846374512, 'learning_rate': 0.0005, 'epoch': 0.44}
"""

OOM = """\
[INFO|trainer.py:2322] 2024-11-26 22:07:15,000 >>   Number of trainable parameters = 20,185,088
Traceback (most recent call last):
  File "/root/train.py", line 28, in <module>
    trainer.train()
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 23.55 GiB of which 1.19 GiB is free.
[rank1]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 23.55 GiB of which 1.19 GiB is free.
"""

MISSING_MODEL = """\
[INFO|2024-11-26 22:07:06] parser.py:355 >> Process rank: 0, device: cuda:0, n_gpu: 1
Traceback (most recent call last):
  File "/root/LLaMA-Factory/src/llamafactory/model/loader.py", line 70, in load_tokenizer
OSError: /root/autodl-tmp/Qwen2-7B is not a local folder and is not a valid model identifier listed on 'https://huggingface.co/models'
"""

ZERO = """\
INFO     create LoRA for Text Encoder: 0 modules.                                             lora.py:1035
INFO     create LoRA for U-Net: 0 modules.                                                    lora.py:1043
trainable params: 0 || all params: 1,100,048,384 || trainable%: 0.0000
"""


@pytest.fixture(scope="module")
def catalog():
    load_rule_modules()
    return load_catalog()


def _run(tmp_path: Path, text: str, name="train.log", **config) -> Run:
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")
    parsed = parse(p, name)
    return Run(path=str(tmp_path), name="r", events=parsed.events, config=Config(values=dict(config)))


def _fire(rule_id: str, run: Run, catalog) -> list:
    return REGISTRY[rule_id].func(run, params_for(rule_id, catalog))


def test_catalog_and_docs(catalog):
    for rid in IDS:
        assert rid in REGISTRY and rid in catalog
        assert catalog[rid]["severity"] == "critical"
        assert REGISTRY[rid].needs == ("events",)
        for sec in DOC_SECTIONS:
            assert f"## {sec}" in REGISTRY[rid].doc, (rid, sec)


@pytest.mark.parametrize("rule_id", IDS)
def test_healthy_log_is_silent(tmp_path, catalog, rule_id):
    assert _fire(rule_id, _run(tmp_path, HEALTHY), catalog) == []


def test_empty_run_is_silent(catalog):
    for rid in IDS:
        assert _fire(rid, Run(path=".", name="x"), catalog) == []


def test_oom_fires_with_line_and_fix(tmp_path, catalog):
    run = _run(tmp_path, OOM, name="logs/train.log", batch_size=8, grad_accum=2)
    (f,) = _fire("log.oom", run, catalog)
    assert f.severity == "critical" and f.rule == "log.oom"
    assert f.evidence[0].startswith("logs/train.log:5: torch.OutOfMemoryError: CUDA out of memory")
    assert len([e for e in f.evidence if "OutOfMemoryError" in e]) == 1     # rank copy counted once
    assert "2.00 GiB" in f.title and f.files == ["logs/train.log"]
    assert f.fix == {"batch_size": 4, "grad_accum": 4}
    assert f.step is None


def test_oom_fix_unknown_or_batch_one(tmp_path, catalog):
    (f,) = _fire("log.oom", _run(tmp_path, OOM), catalog)
    assert f.fix == {}
    (f,) = _fire("log.oom", _run(tmp_path, OOM, batch_size=1), catalog)
    assert f.fix == {"gradient_checkpointing": True}
    (f,) = _fire("log.oom", _run(tmp_path, OOM, batch_size=1, gradient_checkpointing=True), catalog)
    assert f.fix == {}
    (f,) = _fire("log.oom", _run(tmp_path, OOM, batch_size=6), catalog)
    assert f.fix == {"batch_size": 3, "grad_accum": 2}


def test_base_model_not_loaded(tmp_path, catalog):
    (f,) = _fire("log.base_model_not_loaded", _run(tmp_path, MISSING_MODEL), catalog)
    assert f.severity == "critical"
    assert f.title == "The base model was not loaded: /root/autodl-tmp/Qwen2-7B"
    assert f.evidence[0].startswith("train.log:4: OSError: /root/autodl-tmp/Qwen2-7B is not a local folder")
    assert f.files == ["train.log"] and f.fix == {}


def test_base_model_body_newly_initialized(tmp_path, catalog):
    text = ("Some weights of LlamaForCausalLM were not initialized from the model checkpoint at "
            "./llama-7b and are newly initialized: ['model.layers.0.self_attn.q_proj.weight', "
            "'model.layers.0.mlp.up_proj.weight']\n")
    (f,) = _fire("log.base_model_not_loaded", _run(tmp_path, text), catalog)
    assert "2 layers" in f.title and f.evidence[0].startswith("train.log:1: Some weights of")


def test_base_model_retry_downgrades(tmp_path, catalog):
    text = MISSING_MODEL + ("[INFO|modeling_utils.py:5170] 2025-05-28 16:36:46,276 >> All model "
                            "checkpoint weights were used when initializing Qwen2ForCausalLM.\n")
    (f,) = _fire("log.base_model_not_loaded", _run(tmp_path, text), catalog)
    assert f.severity == "warning"
    assert any("train.log:5" in e for e in f.evidence)


def test_no_trainable_params(tmp_path, catalog):
    run = _run(tmp_path, ZERO, target_modules=["q", "v"])
    (f,) = _fire("log.no_trainable_params", run, catalog)
    assert f.severity == "critical"
    assert f.evidence[0].startswith("train.log:2: INFO     create LoRA for U-Net: 0 modules")
    assert any(e.startswith("train.log:3: trainable params: 0") for e in f.evidence)
    assert "target_modules = ['q', 'v']" in f.evidence
    assert f.fix == {}


def test_severity_override_by_user_catalog(tmp_path, catalog):
    user = tmp_path / "rules.toml"
    user.write_text('["log.oom"]\nseverity = "warning"\n')
    cat = load_catalog(user)
    (f,) = REGISTRY["log.oom"].func(_run(tmp_path, OOM), params_for("log.oom", cat))
    assert f.severity == "warning"


def test_wild_logs_raise_nothing(catalog):
    if not WILD.is_dir():
        pytest.skip("wild runs not present")
    for rel in ("lf-tfm-adapter/training_v3.log", "lf-finetune-llm-runlog/running_log.txt",
                "lf-sunxiaochuan/running_log.txt"):
        p = WILD / rel
        if not p.is_file():
            continue
        run = Run(path=str(p.parent), name=p.parent.name, events=parse(p, p.name).events)
        for rid in IDS:
            assert _fire(rid, run, catalog) == [], (rel, rid)
