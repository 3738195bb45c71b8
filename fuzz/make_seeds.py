"""Write the starting corpus of every fuzz target into fuzz/seeds/<target>/ (small, real files).

    .venv/bin/python fuzz/make_seeds.py
"""
from __future__ import annotations

import json
import math
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SEEDS = HERE / "seeds"


def put(target: str, name: str, data: bytes, variant: int | None = None) -> None:
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes((bytes([variant]) if variant is not None else b"") + data)


def events_file() -> bytes:
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    from tensorboard.compat.proto import event_pb2, summary_pb2
    with tempfile.TemporaryDirectory() as d:
        w = EventFileWriter(d)
        for s in range(1, 13):
            v = [summary_pb2.Summary.Value(tag="train/loss", simple_value=2.0 * math.exp(-s / 5)),
                 summary_pb2.Summary.Value(tag="lr/unet", simple_value=1e-4)]
            if s == 7:
                v.append(summary_pb2.Summary.Value(tag="train/grad_norm", simple_value=float("nan")))
            w.add_event(event_pb2.Event(wall_time=1.7e9 + s, step=s, summary=summary_pb2.Summary(value=v)))
        w.close()
        return next(Path(d).iterdir()).read_bytes()


def safetensors_file(meta: dict | None = None) -> bytes:
    from safetensors.numpy import save
    rng = np.random.default_rng(0)
    t = {"lora_unet_down_0.lora_down.weight": rng.standard_normal((4, 8), dtype=np.float32),
         "lora_unet_down_0.lora_up.weight": np.zeros((8, 4), np.float16),
         "lora_unet_down_0.alpha": np.array(4.0, np.float32)}
    return save(t, metadata=meta)


def png(w: int, h: int) -> bytes:
    def chunk(t, b):
        return struct.pack(">I", len(b)) + t + b + struct.pack(">I", zlib.crc32(t + b) & 0xFFFFFFFF)
    raw = b"".join(b"\0" + b"\x80\x40\x20" * w for _ in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def main() -> None:
    put("tfevents", "summarywriter", events_file())
    put("safetensors", "kohya", safetensors_file({"ss_network_dim": "4", "ss_network_alpha": "4",
                                                   "ss_learning_rate": "1e-4", "ss_resolution": "(512, 512)"}))
    put("safetensors", "plain", safetensors_file())
    put("config", "kohya.toml", b'pretrained_model_name_or_path = "m"\ntrain_data_dir = "data"\n'
        b'learning_rate = 1e-4\nnetwork_dim = 8\nnetwork_alpha = 4\nmax_train_epochs = 10\n'
        b'train_batch_size = 2\nresolution = "512,512"\n', variant=1)
    put("config", "llamafactory.yaml", b"model_name_or_path: m\nstage: sft\nfinetuning_type: lora\n"
        b"lora_rank: 8\nlearning_rate: 1.0e-4\nnum_train_epochs: 3.0\ncutoff_len: 1024\n"
        b"dataset: alpaca\nper_device_train_batch_size: 1\n", variant=0)
    put("config", "adapter.json", json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16,
                                              "target_modules": ["q_proj", "v_proj"]}).encode(), variant=2)
    put("config", "args.json", json.dumps({"learning_rate": 2e-4, "per_device_train_batch_size": 4,
                                           "gradient_accumulation_steps": 2, "max_steps": 100,
                                           "warmup_steps": 0, "max_grad_norm": 1.0}).encode(), variant=3)
    put("config", "dataset.toml", b'[general]\nresolution = 512\n[[datasets]]\n[[datasets.subsets]]\n'
        b'image_dir = "img"\nnum_repeats = 10\n', variant=4)
    hist = [{"step": s, "epoch": s / 10, "loss": 2 * math.exp(-s / 8), "learning_rate": 1e-4,
             "grad_norm": 0.5} for s in range(1, 21)] + [{"step": 20, "eval_loss": 1.0}]
    put("trainer_state", "state", json.dumps({"log_history": hist, "max_steps": 40, "global_step": 20,
                                              "logging_steps": 1, "num_train_epochs": 4}, indent=2).encode())
    put("llamafactory", "trainer_log", b"".join(json.dumps(
        {"current_steps": s, "total_steps": 20, "loss": 1 / s, "learning_rate": 1e-4, "epoch": s / 10,
         "percentage": s * 5, "elapsed_time": "0:00:%02d" % s, "remaining_time": "0:00:01"}).encode() + b"\n"
        for s in range(1, 11)), variant=0)
    put("llamafactory", "results", json.dumps({"epoch": 3.0, "train_loss": 0.5, "train_runtime": 12.5,
                                               "eval_loss": 0.7}).encode(), variant=1)
    put("textlog", "hf", b"[INFO|trainer.py:2128] >> ***** Running training *****\n"
        b"[INFO|trainer.py:2129] >>   Num examples = 1,000\n"
        b"[INFO|trainer.py:2134] >>   Total optimization steps = 30\n"
        b"[INFO|trainer.py:2135] >>   Number of trainable parameters = 4,194,304\n"
        b"{'loss': 2.1, 'grad_norm': 1.5, 'learning_rate': 0.0001, 'epoch': 0.1}\n"
        b"{'loss': 1.9, 'grad_norm': nan, 'learning_rate': 0.0001, 'epoch': 0.2}\n"
        b"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n", variant=0)
    put("textlog", "kohya", b"steps:  10%|#         | 10/100 [00:10<01:30, avr_loss=0.123]\n"
        b"steps:  20%|##        | 20/100 [00:20<01:20, avr_loss=0.119]\n"
        b"Traceback (most recent call last):\n  File \"train.py\", line 1, in <module>\nRuntimeError: x\n",
        variant=1)
    put("model_config", "llama", json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 64}).encode())
    put("dataset", "metadata.csv", b"file_name,text\na.png,a red square\nmissing.png,x\n../x.png,y\n", variant=0)
    put("dataset", "train.jsonl", b'{"instruction": "hi", "input": "", "output": "hello"}\n'
        b'{"conversations": [{"from": "human", "value": "a\\u0001b"}]}\n', variant=1)
    put("dataset", "train.json", b'[{"instruction": "hi", "output": "hello"}, {"text": "plain"}]', variant=3)
    # output targets: strings a run can carry (0xFE separates them), escape sequences and all
    strings = ["output/run-1", "logs/train\r\x1b[2Kverdict: HEALTHY.log", "truncated final record",
               "caption \u202egpj.exe", "cosine", "train/loss", "Out of memory at train.log:3",
               "\x1b]0;title\x07\x1b]8;;https://e/\x1b\\link\x1b]8;;\x1b\\", "a\bb\x9b1m",
               "learning_rate 5e-4 is high", "img/\u2066x\u2069.png", "lorascope-report/run.html"]
    blob = b"\xfe".join(s.encode("utf-8") for s in strings)
    put("terminal", "strings", blob)
    put("terminal", "latin1", blob.replace(b"run-1", b"r\xe9sum\xe9"))
    put("html", "strings", blob.replace(b"output/run-1", b"javascript:alert(document.domain)"))
    put("html", "markup", b"\xfe".join([b"<script>alert(1)</script>", b"\" onmouseover=\"x", b"</textarea>",
                                        b"<img src=x onerror=alert(2)>", b"\x00\x1b[31m"] * 3))
    put("image", "png", png(8, 8), variant=0)
    try:
        import io
        from PIL import Image
        for v, fmt in ((1, "JPEG"), (2, "WEBP"), (3, "GIF"), (4, "BMP"), (5, "TIFF")):
            buf = io.BytesIO()
            Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, format=fmt)
            put("image", fmt.lower(), buf.getvalue(), variant=v)
    except Exception:  # noqa: BLE001 - a Pillow without a codec: fewer seeds
        pass


def tracker_seeds() -> None:
    """W&B record log, W&B run files, MLflow run files, ai-toolkit's loss_log.db."""
    import sqlite3
    import sys
    sys.path.insert(0, str(HERE.parent / "tests"))
    import wandblog as WL
    with tempfile.TemporaryDirectory() as d:
        recs = [WL.config_record(1, [WL.item("learning_rate", "0.0002", nested=False),
                                     WL.item("peft_config", '{"default": {"r": 8, "lora_alpha": 16}}')]),
                WL.metric(2, name="train/global_step"),
                WL.metric(3, glob="*", step_metric="train/global_step", sync=True)]
        for s in range(1, 25):
            recs.append(WL.history(3 + s, [WL.item("train/loss", repr(2 * math.exp(-s / 8))),
                                           WL.item("train/global_step", str(s)), WL.item("_step", str(s - 1)),
                                           WL.item("_timestamp", repr(1.7e9 + s)),
                                           WL.item(["eval", "loss"], "NaN" if s == 7 else "1.5")], s - 1))
        recs.append(WL.output(40, "torch.OutOfMemoryError: CUDA out of memory\n"))
        recs.append(WL.history(41, [WL.item("pad", json.dumps("x" * 33000))], 30))   # spans blocks
        put("wandb", "offline", WL.write(Path(d) / "r.wandb", recs).read_bytes())
        db = Path(d) / "loss_log.db"
        con = sqlite3.connect(str(db))
        con.execute("CREATE TABLE steps (step INTEGER PRIMARY KEY, wall_time REAL NOT NULL)")
        con.execute("CREATE TABLE metrics (step INTEGER NOT NULL, key TEXT NOT NULL, value_real REAL, "
                    "value_text TEXT, PRIMARY KEY (step, key))")
        for s in range(1, 30):
            con.execute("INSERT INTO steps VALUES (?, ?)", (s, 1.7e9 + s))
            con.execute("INSERT INTO metrics VALUES (?, 'loss/loss', ?, NULL)", (s, None if s == 9 else 1 / s))
            con.execute("INSERT INTO metrics VALUES (?, 'learning_rate', 1e-4, NULL)", (s,))
        con.commit()
        con.close()
        put("aitk", "loss_log", db.read_bytes())
    put("wandb_files", "config.yaml", b"_wandb:\n  value:\n    cli_version: 0.31.0\nlearning_rate:\n"
        b"  desc: null\n  value: 0.0002\nper_device_train_batch_size:\n  value: 4\n"
        b"gradient_accumulation_steps:\n  value: 2\n", variant=0)
    put("wandb_files", "summary.json", b'{"train/global_step": 100, "train/loss": 0.5, "_runtime": 12.5}',
        variant=1)
    put("mlflow", "metric", b"".join(b"%d %r %d\n" % (1700000000000 + s, 1 / s, s) for s in range(1, 30))
        + b"1700000000999 nan 30\n", variant=0)
    put("mlflow", "param", b"['q_proj', 'v_proj']", variant=1)
    put("mlflow", "meta", b"artifact_uri: file:///x\nend_time: 1700000009000\nexperiment_id: '1'\n"
        b"lifecycle_stage: active\nrun_id: run\nstart_time: 1700000000000\nstatus: 3\n", variant=2)


if __name__ == "__main__":
    main()
