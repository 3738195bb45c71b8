"""Data fixes: `exclude_files` trains on a filtered copy of the dataset, never the original."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from PIL import Image

from helpers import fixture_run, lorascope, tree_digest
from lorascope.rerun.data_fix import filter_image_dir
from lorascope.rerun.plan import RerunError, find_checkpoints

TRAINER = Path(__file__).resolve().parents[1] / "trainers" / "sd_train.py"


def _images(root: Path, names: list[str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(names):
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (10 * i, 100, 200)).save(root / n)


def test_filter_drops_files_rows_and_sidecars_and_links_the_rest(tmp_path):
    src = tmp_path / "ds"
    _images(src, ["a.png", "b.png", "c.png", "sub/d.png"])
    (src / "b.txt").write_text("caption of b", encoding="utf-8")
    (src / "b.npz").write_bytes(b"latents")
    (src / "a.txt").write_text("caption of a", encoding="utf-8")
    # BOM, CRLF and a quoted caption holding a comma and a newline survive the rewrite
    (src / "metadata.csv").write_bytes(
        "file_name,text\r\na.png,\"a, red\r\nsquare\"\r\nb.png,black\r\n./c.png,c\r\n"
        "sub/d.png,d\r\n".encode("utf-8-sig"))
    before = tree_digest(src)
    rep = filter_image_dir(src, tmp_path / "out", {"b.png", "sub/d.png"})
    dst = tmp_path / "out"
    assert tree_digest(src) == before                       # the original is untouched
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()) == [
        "a.png", "a.txt", "c.png", "metadata.csv"]
    raw = (dst / "metadata.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    assert raw.decode("utf-8-sig") == "file_name,text\r\na.png,\"a, red\r\nsquare\"\r\n./c.png,c\r\n"
    assert rep.dropped_rows == 2 and sorted(rep.dropped) == ["b.npz", "b.png", "b.txt", "sub/d.png"]
    # kept files are links to the originals (hard links on one file system), not copies
    assert rep.linked + rep.symlinked == 3 and rep.copied == 1       # the rewritten CSV
    assert (dst / "a.png").read_bytes() == (src / "a.png").read_bytes()
    if rep.linked:
        assert os.path.samefile(dst / "a.png", src / "a.png")
    with pytest.raises(RerunError, match="already exists"):
        filter_image_dir(src, dst, set())


def test_kohya_lora_files_are_checkpoints_at_their_saved_step(tmp_path):
    run = fixture_run("sd-nan-degenerate")
    cks = find_checkpoints(run)
    assert [(c.step, c.path.name, c.kind) for c in cks] == [
        (126, "shapesdemo-000002.safetensors", "safetensors"),
        (252, "shapesdemo-000004.safetensors", "safetensors"),
        (315, "shapesdemo.safetensors", "safetensors")]       # models/base.safetensors: no ss_steps


@pytest.mark.parametrize("name,file", [("sd-nan-degenerate", "dataset/image_024.png"),
                                       ("sd-corrupt-jpeg", "dataset/image_013.jpg")])
def test_analyze_offers_exclude_files(name, file):
    r = lorascope("analyze", fixture_run(name), "--format", "json", "--no-html")
    doc = json.loads(r.stdout)
    rule = "data.degenerate_image" if "nan" in name else "data.corrupt_image"
    f = next(f for f in doc["findings"] if f["rule"] == rule)
    assert f["fix"] == {"exclude_files": [file]}
    if "nan" in name:
        nan = next(f for f in doc["findings"] if f["rule"] == "loss.nonfinite")
        assert nan["causes"][0]["rule"] == rule and nan["fix"] == {"exclude_files": [file]}
    text = lorascope("analyze", fixture_run(name), "--no-html").stdout
    assert f"fix: exclude_files: {file}" in text


@pytest.mark.slow
def test_rerun_without_the_black_image_is_fixed(tmp_path):
    run = fixture_run("sd-nan-degenerate")
    before = tree_digest(run)
    out = tmp_path / "out"
    r = lorascope("rerun", run, "--fix", "--cmd", f"{sys.executable} {TRAINER} {{config}}",
                  "--format", "json", "--out", out)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["diagnosis"] == {"rule": "loss.nonfinite", "step": 6}
    assert doc["applied_fix"] == {"exclude_files": ["dataset/image_024.png"]}
    # no LoRA file was saved before step 6 (the first is at 126): replayed from scratch
    assert doc["resumed_from"] == {"checkpoint": None, "step": 0}
    assert doc["fixed"]["findings"] == [] and doc["verdict"] == "fixed"
    assert tree_digest(run) == before                       # the original run untouched
    fixed = out / "sd-nan-degenerate-fixed"
    ds = fixed / "_data" / "0-dataset"
    assert not (ds / "image_024.png").exists() and (ds / "image_023.png").is_file()
    assert "image_024.png" not in (ds / "metadata.csv").read_text(encoding="utf-8")
    cfg = (fixed / "lorascope-rerun-config.toml").read_text(encoding="utf-8")
    assert f'train_data_dir = "{ds.resolve()}"' in cfg
    # the replay trained on 24 images and its loss stayed finite through step 315
    a = json.loads(lorascope("analyze", fixed, "--format", "json", "--no-html").stdout)
    loss = next(s for s in a["series"] if s["name"] == "loss/current")
    assert loss["last_step"] == 315 and loss["nonfinite"] == 0
    assert "found directory" in (fixed / "train.log").read_text(encoding="utf-8")
    assert "contains 24 image files" in (fixed / "train.log").read_text(encoding="utf-8")


def test_list_valued_fix_reads_well_in_text_and_html_and_stays_a_list_in_json():
    from lorascope.model import Config, ConfigValue, Finding, Run
    from lorascope.report.html import fix_diff
    from lorascope.report.text import fmt_fix

    files = [f"dataset/{i:03d}.png" for i in range(7)]
    assert fmt_fix({"exclude_files": files[:1]}) == "exclude_files: dataset/000.png"
    assert fmt_fix({"exclude_files": files, "learning_rate": 1e-4}) == (
        "exclude_files: dataset/000.png, dataset/001.png, dataset/002.png, dataset/003.png, "
        "dataset/004.png (+2 more); learning_rate=0.0001")
    assert fmt_fix({"learning_rate": 1e-4, "max_grad_norm": 1.0}) == \
        "learning_rate=0.0001, max_grad_norm=1.0"
    cfg = Config(values={"train_data_dir": "./dataset"},
                 origins={"train_data_dir": ConfigValue("train_data_dir", "./dataset",
                                                        "config.toml", "train_data_dir")})
    row, = fix_diff(Run(path="r", name="r", config=cfg), {"exclude_files": files[:2]})
    assert (row["old"], row["new"]) == ("none", "dataset/000.png, dataset/001.png")
    assert row["where"].startswith("config.toml: train_data_dir = ./dataset")
    f = Finding("data.corrupt_image", "critical", "t", fix={"exclude_files": files[:2]})
    assert f.to_json()["fix"] == {"exclude_files": files[:2]}


@pytest.mark.slow
def test_kohya_adapter_only_resume_continues_the_original_run(tmp_path):
    """From the LoRA file saved at step 120 (network_weights + initial_step): the first
    replayed step runs the saved adapter on the original's batch, so it logs its loss.
    sd-lr-spike spikes from step 116, so `rerun --from-step 120` is refused (that replay
    could not show the spike); the backend is driven here with a window after that save."""
    from dataclasses import replace

    from lorascope.pipeline import analyze
    from lorascope.rerun import backend_cmd, verify
    from lorascope.rerun.plan import make_plan
    run = fixture_run("sd-lr-spike")
    out = tmp_path / "out"
    r = lorascope("rerun", run, "--fix", "--cmd", f"{sys.executable} {TRAINER} {{config}}",
                  "--out", out, "--from-step", "120", "--steps", "10")
    assert r.returncode == 2 and "at or after the onset of loss.spike (step 116)" in r.stderr
    a = analyze(run)
    ck = next(c for c in find_checkpoints(run) if c.step == 120)
    plan = replace(make_plan(a, from_step=0), checkpoint=ck, start=120, end=130)
    (out / "sd-lr-spike-fixed").mkdir(parents=True)
    res = backend_cmd.replay(a.run, plan, plan.fix, out / "sd-lr-spike-fixed",
                             f"{sys.executable} {TRAINER} {{config}}")
    assert res.ok, res.error
    assert ck.path.name == "shapesdemo-000002.safetensors"
    cfg = (out / "sd-lr-spike-fixed" / "lorascope-rerun-config.toml").read_text(encoding="utf-8")
    assert "initial_step = 120" in cfg and "shapesdemo-000002.safetensors" in cfg
    _, an = verify.findings_in_window(res.out_dir, 120, 130, a.run)
    assert an.run.primary("train_loss").steps[-1] == 130
    rep = verify.check_reproduction(a.run.primary("train_loss"), an.run.primary("train_loss"),
                                    120, "fixed")
    assert rep.ok and rep.reason().startswith("the fixed replay reproduces the original run "
                                              "at step 121")


def test_dataset_toml_image_dir_is_pointed_at_the_filtered_copy(tmp_path):
    """kohya `dataset_config`: the subset's image_dir (found through Config.origins) is
    replaced in a patched copy of the dataset TOML; the run's files stay as they were."""
    import tomllib

    import numpy as np
    import tomli_w

    from lorascope.pipeline import analyze
    from lorascope.rerun.backend_cmd import patch_config
    from lorascope.rerun.plan import Plan

    run = tmp_path / "run"
    rng = np.random.default_rng(0)
    (run / "img").mkdir(parents=True)
    for i in range(12):
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype("uint8")).save(run / "img" / f"{i:02d}.png")
        (run / "img" / f"{i:02d}.txt").write_text(f"a photo of thing {i}", encoding="utf-8")
    Image.new("RGB", (32, 32)).save(run / "img" / "black.png")
    (run / "img" / "black.txt").write_text("a black frame", encoding="utf-8")
    (run / "config.toml").write_text(tomli_w.dumps({
        "pretrained_model_name_or_path": "model.safetensors", "dataset_config": "dataset.toml",
        "output_dir": "out", "learning_rate": 1e-4, "network_dim": 4, "max_train_epochs": 2}))
    (run / "dataset.toml").write_text(tomli_w.dumps({
        "general": {"caption_extension": ".txt"},
        "datasets": [{"resolution": 512, "batch_size": 2,
                      "subsets": [{"image_dir": "img", "num_repeats": 2}]}]}))
    before = tree_digest(run)
    a = analyze(str(run))
    f = next(f for f in a.findings if f.rule == "data.degenerate_image")
    assert f.fix == {"exclude_files": ["img/black.png"]}
    plan = Plan(run_dir=run, run_name="run", rule=f.rule, onset=1, symptom_end=1,
                checkpoint=None, start=0, end=20, fix=dict(f.fix), planned=None)
    out = tmp_path / "out"
    out.mkdir()
    cfg_path = patch_config(a.run, plan, plan.fix, out)
    cfg = tomllib.loads(cfg_path.read_text(encoding="utf-8"))
    ds_cfg = tomllib.loads(Path(cfg["dataset_config"]).read_text(encoding="utf-8"))
    image_dir = Path(ds_cfg["datasets"][0]["subsets"][0]["image_dir"])
    assert image_dir.is_relative_to(out.resolve())
    assert sorted(p.name for p in image_dir.iterdir()) == sorted(
        p.name for p in (run / "img").iterdir() if p.stem != "black")
    assert "exclude_files" not in cfg and cfg["max_train_steps"] == 20
    assert tree_digest(run) == before
