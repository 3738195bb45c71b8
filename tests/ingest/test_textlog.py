"""Trainer text logs: events with file and line, curves from printed dicts and bars.

The log lines below are copied from what the libraries print (transformers 4.x and
5.x, PEFT, LLaMA-Factory, kohya sd-scripts, torch 2.x); the real files in
shared/wild-runs are read where present.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lorascope.ingest.textlog import MAX_EVENTS_PER_KIND, parse

WILD = Path(__file__).resolve().parents[3] / "shared" / "wild-runs"

TF_NOISE = """\
2025-05-28 16:36:36.758691: E external/local_xla/xla/stream_executor/cuda/cuda_fft.cc:467] Unable to register cuFFT factory: Attempting to register factory for plugin cuFFT when one has already been registered
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
E0000 00:00:1748450196.782070   34559 cuda_dnn.cc:8579] Unable to register cuDNN factory: Attempting to register factory for plugin cuDNN when one has already been registered
E0000 00:00:1748450196.789089   34559 cuda_blas.cc:1407] Unable to register cuBLAS factory: Attempting to register factory for plugin cuBLAS when one has already been registered
"""

OOM_TAIL = """\
Traceback (most recent call last):
  File "/root/LLaMA-Factory/src/train.py", line 28, in <module>
    main()
  File "/usr/local/lib/python3.10/site-packages/torch/utils/checkpoint.py", line 264, in forward
    outputs = run_function(*args)
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 23.55 GiB of which 1.19 GiB is free. Including non-PyTorch memory, this process has 22.35 GiB memory in use. If reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.
"""

HF_TRAIN = """\
[INFO|modeling_utils.py:3934] 2024-11-26 22:07:10,120 >> loading weights file /root/autodl-tmp/Qwen2-7B/model.safetensors.index.json
[INFO|modeling_utils.py:4800] 2024-11-26 22:07:13,001 >> All model checkpoint weights were used when initializing Qwen2ForCausalLM.
[INFO|2024-11-26 22:07:14] llamafactory.model.loader:143 >> trainable params: 20,185,088 || all params: 7,635,801,600 || trainable%: 0.2643
[INFO|trainer.py:2313] 2024-11-26 22:07:15,000 >> ***** Running training *****
[INFO|trainer.py:2314] 2024-11-26 22:07:15,000 >>   Num examples = 2,182
[INFO|trainer.py:2315] 2024-11-26 22:07:15,000 >>   Num Epochs = 3
[INFO|trainer.py:2316] 2024-11-26 22:07:15,000 >>   Instantaneous batch size per device = 4
[INFO|trainer.py:2320] 2024-11-26 22:07:15,000 >>   Gradient Accumulation steps = 8
[INFO|trainer.py:2321] 2024-11-26 22:07:15,000 >>   Total optimization steps = 204
[INFO|trainer.py:2322] 2024-11-26 22:07:15,000 >>   Number of trainable parameters = 20,185,088
{'loss': 2.2818, 'grad_norm': 1.95, 'learning_rate': 2.5e-06, 'epoch': 0.29}
{'loss': 2.2647, 'grad_norm': nan, 'learning_rate': 5e-06, 'epoch': 0.59}
[INFO|trainer.py:3801] 2024-11-26 22:43:00,000 >> Saving model checkpoint to saves/qwen/lora/checkpoint-20
 10%|█         | 20/204 [10:12<1:30:00, 30.1s/it]{'loss': nan, 'grad_norm': nan, 'learning_rate': 7.5e-06, 'epoch': 0.88}
{'eval_loss': 2.1, 'eval_runtime': 12.3, 'eval_samples_per_second': 19.7, 'eval_steps_per_second': 2.5, 'epoch': 0.88}
"""


def _write(tmp_path: Path, text: str, name="train.log") -> Path:
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return p


def _kinds(parsed) -> dict[str, list]:
    out: dict[str, list] = {}
    for e in parsed.events:
        out.setdefault(e.kind, []).append(e)
    return out


def _series(parsed) -> dict:
    return {s.tag: s for s in parsed.series}


def test_hf_training_log_events_curves_and_oom(tmp_path):
    p = _write(tmp_path, TF_NOISE + HF_TRAIN + OOM_TAIL)
    r = parse(p, "logs/train.log")
    k = _kinds(r)
    assert {e.file for e in r.events} == {"logs/train.log"}
    loaded = k["base_model_loaded"]
    assert loaded[0].line == 5 and loaded[0].data["path"].endswith("model.safetensors.index.json")
    tp = k["trainable_params"]
    assert tp[0].data == {"trainable": 20185088, "total": 7635801600, "percent": 0.2643}
    assert tp[1].data["trainable"] == 20185088
    assert "no_trainable_params" not in k and "base_model_not_loaded" not in k
    # the OOM: once in the traceback's last line, not in the TensorFlow "E ..." noise
    assert [e.line for e in k["oom"]] == [25]
    assert k["oom"][0].data == {"tried": "2.00 GiB", "gpu": 0, "capacity": "23.55 GiB", "device": "cuda"}
    tb = k["traceback"][0]
    assert tb.line == 20 and tb.data["exception"].startswith("torch.OutOfMemoryError: CUDA out of memory")
    # {'loss': nan, ...}; not the line where only grad_norm is nan
    assert [e.line for e in k["nonfinite_warning"]] == [18]
    # curves with synthetic steps: checkpoint-20 after 2 loss lines -> interval 10
    s = _series(r)
    assert r.facts["steps_synthetic"] is True and r.facts["logging_interval"] == 10
    assert s["loss"].steps.tolist() == [10, 20, 30]
    assert np.isnan(s["loss"].values[2]) and np.isnan(s["grad_norm"].values[1])
    assert s["learning_rate"].values.tolist() == [2.5e-06, 5e-06, 7.5e-06]
    assert s["epoch"].steps.tolist() == [10, 20, 30]
    assert s["eval_loss"].steps.tolist() == [30]
    assert "eval_runtime" not in s
    assert r.facts["planned_steps"] == 204
    cfg = {c.key: c.value for c in r.config}
    # "Num examples" of the training banner: the dataset size the epoch rules need
    assert cfg == {"epochs": 3, "batch_size": 4, "grad_accum": 8, "num_train_items": 2182}
    assert r.facts["trainer"] == "llamafactory"


def test_ordinal_steps_without_interval(tmp_path):
    r = parse(_write(tmp_path, "{'loss': 2.0, 'learning_rate': 1e-4, 'epoch': 0.1}\n" * 3), "t.log")
    assert "trainer" not in r.facts
    assert _series(r)["loss"].steps.tolist() == [1, 2, 3]
    assert r.facts["logging_interval"] == 1 and r.facts["steps_synthetic"] is True


def test_logging_steps_line_gives_interval(tmp_path):
    text = ("Training/evaluation parameters TrainingArguments(\n_n_gpu=1,\nlogging_steps=25,\n)\n"
            + "{'loss': 2.0, 'learning_rate': 1e-4, 'epoch': 0.1}\n" * 2
            + "{'train_runtime': 100.0, 'train_samples_per_second': 1.0, 'train_steps_per_second': 0.5, "
              "'train_loss': 1.95, 'epoch': 1.0}\n")
    r = parse(_write(tmp_path, text), "t.log")
    assert _series(r)["loss"].steps.tolist() == [25, 50]
    assert r.facts["final_train_loss"] == 1.95
    assert "train_runtime" not in _series(r)


def test_base_model_missing(tmp_path):
    text = """\
Traceback (most recent call last):
  File "/root/LLaMA-Factory/src/llamafactory/model/loader.py", line 70, in load_tokenizer
    tokenizer = AutoTokenizer.from_pretrained(
OSError: /root/autodl-tmp/Qwen2-7B is not a local folder and is not a valid model identifier listed on 'https://huggingface.co/models'
If this is a private repository, make sure to pass a token having permission to this repo
"""
    r = parse(_write(tmp_path, text), "train.log")
    k = _kinds(r)
    (e,) = k["base_model_not_loaded"]
    assert e.line == 4 and e.data["path"] == "/root/autodl-tmp/Qwen2-7B"
    assert k["traceback"][0].data["exception"].startswith("OSError: /root/autodl-tmp/Qwen2-7B")


@pytest.mark.parametrize("line, expect", [
    ("OSError: Can't load the model for 'models/sd15'. If you were trying to load it from "
     "'https://huggingface.co/models', make sure you don't have a local directory", "models/sd15"),
    ("OSError: Error no file named pytorch_model.bin, model.safetensors, tf_model.h5 found in "
     "directory /data/llama.", "/data/llama"),
    ("ValueError: model is not found as a file or in Hugging Face, perhaps file name is wrong? / "
     "指定したモデル名のファイル、またはHugging Faceのモデルが見つかりません。ファイル名が誤っているかもしれません: "
     "/models/v1-5.safetensors", "/models/v1-5.safetensors"),
    ("FileNotFoundError: [Errno 2] No such file or directory: '/root/models/chatglm2-6b/config.json'",
     "/root/models/chatglm2-6b/config.json"),
])
def test_base_model_not_loaded_variants(tmp_path, line, expect):
    r = parse(_write(tmp_path, "starting\n" + line + "\n"), "train.log")
    (e,) = _kinds(r)["base_model_not_loaded"]
    assert e.line == 2 and e.data["path"] == expect


def test_missing_data_file_is_not_a_model(tmp_path):
    line = "FileNotFoundError: [Errno 2] No such file or directory: 'data/train.jsonl'\n"
    assert "base_model_not_loaded" not in _kinds(parse(_write(tmp_path, line), "t.log"))


def test_newly_initialized_head_vs_body(tmp_path):
    head = ("Some weights of DistilBertForSequenceClassification were not initialized from the model "
            "checkpoint at distilbert-base-uncased and are newly initialized: ['classifier.bias', "
            "'classifier.weight', 'pre_classifier.bias', 'pre_classifier.weight']\n"
            "You should probably TRAIN this model on a down-stream task to be able to use it for "
            "predictions and inference.\n")
    body = ("Some weights of LlamaForCausalLM were not initialized from the model checkpoint at "
            "./llama-7b and are newly initialized: ['model.layers.0.self_attn.q_proj.weight', "
            "'model.layers.0.self_attn.k_proj.weight', 'lm_head.weight']\n")
    k = _kinds(parse(_write(tmp_path, head), "a.log"))
    assert k["weights_not_initialized"][0].data["head_only"] is True
    assert "base_model_not_loaded" not in k
    k = _kinds(parse(_write(tmp_path, body), "b.log"))
    assert k["weights_not_initialized"][0].data["head_only"] is False
    assert k["base_model_not_loaded"][0].data == {"path": "./llama-7b", "newly_initialized": 3}


def test_transformers5_load_report(tmp_path):
    # LoadStateDictInfo.create_loading_report() output, as logger.warning prints it
    text = """\
[WARNING|loading_report.py:300] 2026-01-10 10:00:00,000 >> LlamaForCausalLM LOAD REPORT from: /models/llama
Key                                         | Status     | 
--------------------------------------------+------------+-
foo.bias                                    | UNEXPECTED | 
model.layers.{0, 1}.self_attn.q_proj.weight | MISSING    | 
lm_head.weight                              | MISSING    | 

Notes:
- MISSING:	those params were newly initialized because missing from the checkpoint. Consider training on your downstream task.
"""
    k = _kinds(parse(_write(tmp_path, text), "t.log"))
    (e,) = k["base_model_not_loaded"]
    assert e.line == 1 and e.data == {"path": "/models/llama", "newly_initialized": 2}
    assert k["weights_not_initialized"][0].data["names"][1] == "lm_head.weight"


def test_zero_trainable_and_empty_optimizer(tmp_path):
    text = ("trainable params: 0 || all params: 1,100,048,384 || trainable%: 0.0000\n"
            "ValueError: optimizer got an empty parameter list\n")
    k = _kinds(parse(_write(tmp_path, text), "t.log"))
    assert k["trainable_params"][0].data["trainable"] == 0
    assert [e.line for e in k["no_trainable_params"]] == [1, 2]


def test_llamafactory_predict_all_params_is_not_zero_trainable(tmp_path):
    text = "[INFO|2025-03-06 08:43:30] logging.py:157 >> all params: 3,085,938,688\n"
    k = _kinds(parse(_write(tmp_path, text), "running_log.txt"))
    assert "no_trainable_params" not in k and "trainable_params" not in k


def test_kohya_log(tmp_path):
    text = """\
INFO     load StableDiffusion checkpoint: /models/v1-5-pruned.safetensors              train_util.py:5530
INFO     loading u-net: <All keys matched successfully>                                 model_util.py:1011
INFO     create LoRA for Text Encoder: 0 modules.                                             lora.py:1035
INFO     create LoRA for U-Net: 0 modules.                                                    lora.py:1043
running training / 学習開始
  num train images * repeats / 学習画像の数×繰り返し回数: 200
  num epochs / epoch数: 10
  batch size per device / バッチサイズ: 2
  gradient accumulation steps / 勾配を合計するステップ数 = 1
  total optimization steps / 学習ステップ数: 1000
steps:   0%|          | 1/1000 [00:02<40:00,  2.40s/it, avr_loss=0.151]\rsteps:   0%|          | 2/1000 [00:03<30:00,  1.80s/it, avr_loss=0.142]
steps:   0%|          | 3/1000 [00:04<30:00,  1.80s/it, avr_loss=nan]
"""
    r = parse(_write(tmp_path, text), "log.txt")
    k = _kinds(r)
    assert k["base_model_loaded"][0].data["path"] == "/models/v1-5-pruned.safetensors"
    assert k["no_trainable_params"][0].line == 4
    s = _series(r)["loss/average"]
    assert s.steps.tolist() == [1, 2, 3] and np.isnan(s.values[2])
    assert r.facts["planned_steps"] == 1000 and r.facts["trainer"] == "kohya"
    assert {c.key: c.value for c in r.config} == {"epochs": 10, "batch_size": 2, "grad_accum": 1}


def test_kohya_text_encoder_only_is_not_zero(tmp_path):
    text = ("INFO create LoRA for Text Encoder: 72 modules.\n"
            "INFO create LoRA for U-Net: 0 modules.\n")
    assert "no_trainable_params" not in _kinds(parse(_write(tmp_path, text), "t.log"))


@pytest.mark.parametrize("line, what", [
    ("UserWarning: Loss is NaN at step 120, skipping", "loss"),
    ("RuntimeError: Function 'MmBackward0' returned nan values. NaN or Inf found in input tensor.", "grad"),
    ("[deepspeed] fp16 dynamic loss scale overflow! Gradient overflow.  Skipping step, loss scale 1024", "grad_overflow"),
    ("WARNING: nan loss detected, skipping batch", "loss"),
])
def test_nonfinite_warnings(tmp_path, line, what):
    (e,) = _kinds(parse(_write(tmp_path, line + "\n"), "t.log"))["nonfinite_warning"]
    assert e.data["what"] == what


@pytest.mark.parametrize("line", [
    "logging_nan_inf_filter=True,",
    "E0000 00:00:1748450196.782070   34559 cuda_dnn.cc:8579] Unable to register cuDNN factory",
    "[deepspeed] OVERFLOW! Rank 0 Skipping step. Attempted loss scale: 65536, reducing to 32768",
    "auto_find_batch_size=False, skip_memory_metrics=True,",
])
def test_harmless_lines_give_no_event(tmp_path, line):
    assert parse(_write(tmp_path, line + "\n"), "t.log").events == []


def test_rank_prefixes_and_repeated_oom_bounded(tmp_path):
    one = "[rank1]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB.\n"
    r = parse(_write(tmp_path, one * (MAX_EVENTS_PER_KIND + 50)), "t.log")
    k = _kinds(r)
    assert len(k["oom"]) == MAX_EVENTS_PER_KIND
    assert r.facts["event_counts"]["oom"] == MAX_EVENTS_PER_KIND + 50
    assert any("oom events" in x for x in r.source.problems)
    assert k["oom"][0].text.startswith("torch.OutOfMemoryError")


def test_unfinished_traceback(tmp_path):
    text = "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
    (e,) = _kinds(parse(_write(tmp_path, text), "t.log"))["traceback"]
    assert e.line == 1 and e.data["exception"] is None


def test_enormous_line_binary_and_empty(tmp_path):
    p = tmp_path / "train.log"
    p.write_bytes(b"x" * 5_000_000 + b"\nCUDA out of memory\n" + bytes(range(256)) * 1000)
    r = parse(p, "train.log")
    assert [e.line for e in r.events if e.kind == "oom"] == [2]
    assert all(len(e.text) <= 300 for e in r.events)
    assert any("cut" in x for x in r.source.problems)
    p.write_bytes(b"")
    r = parse(p, "train.log")
    assert r.events == [] and r.series == [] and r.source.problems == ["empty file"]
    p.write_bytes(b"{'loss': \xff\xfe, 'epoch': }\n\x00\x00{'lo")
    assert parse(p, "train.log").series == []


# -- real files ---------------------------------------------------------------------

def _wild(rel: str) -> Path:
    p = WILD / rel
    if not p.is_file():
        pytest.skip(f"{p} not present")
    return p


def test_wild_running_log_with_checkpoints():
    r = parse(_wild("lf-finetune-llm-runlog/running_log.txt"), "running_log.txt")
    s = _series(r)
    assert len(s["loss"].steps) == 421
    assert r.facts["logging_interval"] == 5 and s["loss"].steps[-1] == 2105
    assert s["loss"].values[0] == pytest.approx(2.2818)
    k = _kinds(r)
    assert k["trainable_params"][0].data["trainable"] == 18739200
    assert "oom" not in k and "base_model_not_loaded" not in k
    assert r.facts["trainer"] == "llamafactory"


def test_wild_stdout_log_matches_trainer_log():
    r = parse(_wild("lf-tfm-adapter/training_v3.log"), "training_v3.log")
    s = _series(r)
    # 48 loss lines, 240 planned steps, finished -> the same steps trainer_log.jsonl has
    assert s["loss"].steps.tolist() == list(range(5, 241, 5))
    assert r.facts["final_train_loss"] == pytest.approx(0.198475, abs=1e-5)
    k = _kinds(r)
    assert "oom" not in k and "traceback" not in k      # only TensorFlow "E ..." noise there
    assert r.facts["trainer"] == "llamafactory"        # "llamafactory.model.loader" lines


def test_wild_prediction_run_log():
    r = parse(_wild("lf-sunxiaochuan/running_log.txt"), "running_log.txt")
    assert r.series == []
    assert {e.kind for e in r.events} == {"base_model_loaded"}


def test_every_wild_text_log_parses():
    if not WILD.is_dir():
        pytest.skip("wild runs not present")
    from lorascope.discover import classify
    files = [f for f in WILD.rglob("*") if f.is_file()
             and classify(f.relative_to(WILD).as_posix()) == "text_log"]
    assert files
    for f in files:
        r = parse(f, f.name)
        assert r.source.kind == "text_log"
        for e in r.events:
            assert e.line >= 1 and e.file == f.name
