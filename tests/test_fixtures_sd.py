"""The Stable-Diffusion (kohya-style) fixture runs hold what a user would find in them.

These tests read the committed files only (not lorascope's analysis): event files load
with TensorBoard's own EventAccumulator, LoRA files with safetensors, images with Pillow.
"""
from __future__ import annotations

import csv
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import fixture_run as run

SD_RUNS = ["sd-healthy", "sd-lr-spike", "sd-nan-degenerate", "sd-corrupt-jpeg",
           "sd-bad-metadata", "sd-epoch-jump", "sd-zero-lr", "sd-loha"]
LORA_RUNS = [n for n in SD_RUNS if n != "sd-loha"]
KOHYA_STEP_TAGS = {"loss/current", "loss/average", "lr/unet", "lr/textencoder"}


def events(name: str) -> EventAccumulator:
    files = sorted(run(name).glob("log/*/network_train/events.out.tfevents.*"))
    assert len(files) == 1, files
    ea = EventAccumulator(str(files[0]), size_guidance={"scalars": 0})
    ea.Reload()
    return ea


def losses(name: str) -> tuple[np.ndarray, np.ndarray]:
    ev = events(name).Scalars("loss/current")
    return np.array([e.step for e in ev]), np.array([e.value for e in ev])


def lora(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    with safe_open(str(path), framework="np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def config(name: str) -> dict:
    return tomllib.loads((run(name) / "config.toml").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", SD_RUNS)
def test_layout_and_relative_config_paths(name):
    cfg = config(name)
    base = run(name)
    for key in ("pretrained_model_name_or_path", "train_data_dir", "output_dir", "logging_dir"):
        assert not Path(cfg[key]).is_absolute(), (key, cfg[key])
    assert (base / cfg["pretrained_model_name_or_path"]).is_file()
    assert (base / cfg["train_data_dir"] / "metadata.csv").is_file()
    assert (base / "train.log").is_file()
    for key in ("resolution", "train_batch_size", "max_train_epochs", "learning_rate",
                "network_dim", "network_alpha", "lr_scheduler", "lr_warmup_steps", "max_grad_norm"):
        assert key in cfg, key


@pytest.mark.parametrize("name", SD_RUNS)
def test_events_hold_kohya_tags(name):
    tags = set(events(name).Tags()["scalars"])
    assert KOHYA_STEP_TAGS <= tags
    epoch_tag = "loss/epoch" if name == "sd-epoch-jump" else "loss/epoch_average"
    assert epoch_tag in tags
    steps, _ = losses(name)
    assert steps[0] == 1 and np.all(np.diff(steps) == 1)
    # per-epoch value logged with step = epoch number
    ep_steps = [e.step for e in events(name).Scalars(epoch_tag)]
    assert ep_steps == list(range(1, len(ep_steps) + 1))


@pytest.mark.parametrize("name", [n for n in LORA_RUNS if n != "sd-corrupt-jpeg"])
def test_final_lora_has_kohya_keys_and_metadata(name):
    cfg = config(name)
    out = run(name) / cfg["output_dir"]
    final = out / f"{cfg['output_name']}.safetensors"
    assert final.is_file()
    assert (out / f"{cfg['output_name']}-000002.safetensors").is_file()
    tensors, meta = lora(final)
    downs = [k for k in tensors if k.endswith(".lora_down.weight")]
    assert downs and all(k.startswith(("lora_unet_", "lora_te_")) for k in tensors)
    for k in downs:
        stem = k[: -len(".lora_down.weight")]
        assert f"{stem}.lora_up.weight" in tensors
        assert tensors[f"{stem}.alpha"].shape == ()
        assert tensors[k].shape[0] == cfg["network_dim"]
    assert any(k.startswith("lora_unet_down_blocks_0_attentions_0_") for k in tensors)
    assert meta["ss_network_module"] == "networks.lora"
    assert meta["ss_network_dim"] == str(cfg["network_dim"])
    assert float(meta["ss_network_alpha"]) == cfg["network_alpha"]
    assert meta["ss_resolution"] == "(512, 512)"
    assert meta["ss_epoch"] == str(cfg["max_train_epochs"])
    assert int(meta["ss_steps"]) == int(meta["ss_max_train_steps"]) == losses(name)[0][-1]
    for key in ("ss_learning_rate", "ss_unet_lr", "ss_batch_size_per_device", "ss_num_epochs",
                "ss_lr_warmup_steps", "ss_base_model_version", "ss_num_train_images", "ss_output_name"):
        assert key in meta, key


def test_healthy_loss_finite_and_lower_at_the_end():
    _, v = losses("sd-healthy")
    assert np.isfinite(v).all()
    assert np.median(v[-60:]) < np.median(v[:60])
    tensors, _ = lora(run("sd-healthy") / "output" / "shapesdemo.safetensors")
    ups = [v for k, v in tensors.items() if k.endswith("lora_up.weight")]
    assert all(np.isfinite(u).all() and np.abs(u).max() > 0 for u in ups)


def test_lr_spike_jumps_mid_run_and_stays_up():
    steps, v = losses("sd-lr-spike")
    assert np.isfinite(v).all()
    before, after = np.median(v[30:80]), np.median(v[-80:])
    assert after > 2 * before and after - before > 0.5
    assert config("sd-lr-spike")["learning_rate"] > 1e-3


def test_nan_run_has_nan_loss_from_the_first_black_image_on():
    steps, v = losses("sd-nan-degenerate")
    bad = ~np.isfinite(v)
    first = int(np.argmax(bad))
    assert bad.any() and first > 0 and bad[first:].all()
    black = run("sd-nan-degenerate") / "dataset" / "image_024.png"
    assert np.asarray(Image.open(black)).max() == 0
    tensors, _ = lora(run("sd-nan-degenerate") / "output" / "shapesdemo.safetensors")
    assert any(np.isnan(t.astype(np.float32)).any() for t in tensors.values())


def test_corrupt_jpeg_fails_full_decode_and_run_stops_early():
    base = run("sd-corrupt-jpeg")
    bad = base / "dataset" / "image_013.jpg"
    with Image.open(bad) as im:
        with pytest.raises(OSError, match="truncated"):
            im.load()
    for other in sorted((base / "dataset").glob("*.jpg")):
        if other != bad:
            with Image.open(other) as im:
                im.load()
    log = (base / "train.log").read_text(encoding="utf-8")
    assert "Traceback (most recent call last):" in log
    assert log.rstrip().splitlines()[-1].startswith("OSError: image file is truncated")
    assert "model saved." not in log
    steps, _ = losses("sd-corrupt-jpeg")
    planned = int(log.split("total optimization steps / 学習ステップ数: ")[1].split()[0])
    assert steps[-1] < planned
    assert not (base / "output" / "shapesdemo.safetensors").exists()
    assert (base / "output" / "shapesdemo-000002.safetensors").is_file()


def test_bad_metadata_csv():
    ddir = run("sd-bad-metadata") / "dataset"
    raw = (ddir / "metadata.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    with open(ddir / "metadata.csv", encoding="utf-8") as f:
        assert next(csv.reader(f))[0] == "\ufefffile_name"
    with open(ddir / "metadata.csv", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    names = [r["file_name"] for r in rows]
    on_disk = {p.name for p in ddir.iterdir()}
    assert "Image_003.png" in names and "Image_003.png" not in on_disk and "image_003.png" in on_disk
    assert "image_099.png" in names and not any(n.lower() == "image_099.png" for n in on_disk)
    caps = [r["text"] for r in rows]
    assert "" in caps and "a nice picture" in caps and len(set(caps)) < len(caps)
    sizes = {Image.open(ddir / n).size for n in on_disk if n.endswith(".png")}
    assert {(384, 384), (240, 540), (576, 384)} <= sizes
    log = (run("sd-bad-metadata") / "train.log").read_text(encoding="utf-8")
    assert log.count("WARNING: image file not found") == 2 and "model saved." in log


def test_epoch_jump_loss_rises_at_each_epoch_start():
    steps, v = losses("sd-epoch-jump")
    per_epoch = len(steps) // config("sd-epoch-jump")["max_train_epochs"]
    v = v.reshape(-1, per_epoch)
    starts, ends = v[1:, :10].mean(axis=1), v[:-1, -10:].mean(axis=1)
    assert (starts > ends).all()


def test_zero_lr_adapter_stays_zero():
    cfg = config("sd-zero-lr")
    assert cfg["learning_rate"] == 0 and "unet_lr" not in cfg
    lrs = [e.value for e in events("sd-zero-lr").Scalars("lr/unet")]
    assert max(lrs) == 0
    for f in sorted((run("sd-zero-lr") / "output").glob("*.safetensors")):
        tensors, _ = lora(f)
        ups = [t for k, t in tensors.items() if k.endswith("lora_up.weight")]
        assert ups and all(not t.any() for t in ups)


def test_loha_run_holds_lycoris_layers():
    cfg = config("sd-loha")
    assert cfg["network_module"] == "lycoris.kohya" and cfg["network_args"] == ["algo=loha"]
    tensors, meta = lora(run("sd-loha") / "output" / "shapesdemo.safetensors")
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert meta["ss_network_args"] == '{"algo": "loha"}'
    names = {k.rsplit(".", 1)[0] for k in tensors}
    assert len(names) == 30 and not any(k.endswith("lora_down.weight") for k in tensors)
    for n in names:
        for part in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"):
            assert f"{n}.{part}" in tensors, (n, part)
        assert tensors[f"{n}.hada_w1_b"].shape[0] == cfg["network_dim"]
        assert tensors[f"{n}.hada_w2_a"].any()          # LyCORIS starts it at zero: trained


def test_total_size_is_small():
    total = sum(p.stat().st_size for n in SD_RUNS for p in run(n).rglob("*") if p.is_file())
    assert total < 3 * 1024 * 1024
