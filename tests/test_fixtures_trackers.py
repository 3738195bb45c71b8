"""Issue 17's fixture runs: runs logged to W&B or MLflow are diagnosed like their
TensorBoard twins (the same Trainer wrote both), and the new trainers' layouts
(axolotl, ai-toolkit, OneTrainer, SimpleTuner) are read and patched in their own keys."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from helpers import FIXTURES, fixture_run
from lorascope.pipeline import analyze


def _variant(tmp_path: Path, name: str, label: str, drop: list[str]) -> Path:
    """A copy of a fixture without some of its files, at the fixture's depth, beside a
    link to fixtures/models (its configs name ../../models/tiny-llama)."""
    src = fixture_run(name)
    root = tmp_path / label
    (root / "runs").mkdir(parents=True)
    if not (root / "models").exists():
        (root / "models").symlink_to(FIXTURES.parent / "models", target_is_directory=True)
    dst = root / "runs" / name
    shutil.copytree(src, dst, symlinks=True)
    for d in drop:
        for p in list(dst.glob(d)):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    return dst


def _diagnosis(run: Path) -> set[tuple[str, int | None]]:
    return {(f.rule, f.step) for f in analyze(run).findings}


@pytest.mark.parametrize("name, tracker, expect", [
    ("wandb-lr-diverge", "wandb", ("loss.divergence", "config.lr_high", "config.no_grad_clip")),
    ("mlflow-overfit", "mlruns", ("overfit", "config.epochs_high", "config.lr_high")),
])
def test_tracker_run_is_diagnosed_like_its_tensorboard_twin(tmp_path, name, tracker, expect):
    only_tracker = _variant(tmp_path, name, "tracker", ["runs", "training_args.json", "train.log"])
    only_tb = _variant(tmp_path, name, "tb", [tracker])
    both = _variant(tmp_path, name, "both", [])
    a = analyze(only_tracker)
    kinds = {s.kind for s in a.run.sources}
    assert "tfevents" not in kinds and ({"wandb"} <= kinds or {"mlflow_run"} <= kinds)
    got = {(f.rule, f.step) for f in a.findings}
    assert {r for r, _ in got} >= set(expect)
    assert got == _diagnosis(only_tb) == _diagnosis(both)
    # the config came from the tracker alone
    lr = a.run.config.origin("learning_rate")
    assert lr is not None and not lr.derived and (lr.file.endswith(".wandb") or lr.file.endswith("meta.yaml"))


def test_wandb_console_events_reach_the_run(tmp_path):
    """An offline W&B run keeps the console in its record log (and in files/output.log
    when wandb wrote one): the text-log events are the run's, read once."""
    import wandblog as WL
    d = tmp_path / "wandb" / "offline-run-20250101_000000-abc"
    d.mkdir(parents=True)
    recs = [WL.history(i + 1, [WL.item("train/loss", repr(2.0 - i / 100)), WL.item("_step", str(i)),
                               WL.item("train/global_step", str(i + 1))], i) for i in range(40)]
    text = ("Traceback (most recent call last):\n  File \"train.py\", line 3, in <module>\n"
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a "
            "total capacity of 7.6 GiB\n")
    recs += [WL.output(50, text[:30]), WL.output(51, text[30:])]      # a line split across records
    WL.write(d / "run-abc.wandb", recs)
    a = analyze(tmp_path)
    assert {e.kind for e in a.run.events} >= {"oom", "traceback"}
    assert all(e.file.endswith("run-abc.wandb") for e in a.run.events)
    assert "log.oom" in {f.rule for f in a.findings}
    (d / "files").mkdir()
    (d / "files" / "output.log").write_text(text, encoding="utf-8")
    b = analyze(tmp_path)
    oom = [e for e in b.run.events if e.kind == "oom"]
    assert len(oom) == 1 and oom[0].file.endswith("files/output.log")


SD_RUNS = [("aitk-lr-spike", "ai-toolkit"), ("onetrainer-lr-spike", "onetrainer"),
           ("simpletuner-lr-spike", "simpletuner")]


@pytest.mark.parametrize("name, trainer", SD_RUNS)
def test_sd_trainer_layouts(name, trainer):
    a = analyze(fixture_run(name))
    assert a.run.trainer == trainer and a.run.task == "sd"
    rules = {f.rule: f for f in a.findings}
    assert {"loss.spike", "config.lr_high", "config.no_grad_clip"} <= set(rules)
    # the spike is where the lr (0.08 by warmup over 150 steps) wrecks the adapter: each
    # trainer numbers the step its own way (ai-toolkit / OneTrainer from 0, SimpleTuner from 1)
    assert 120 <= rules["loss.spike"].step <= 135
    cfg = a.run.config
    assert cfg.get("learning_rate") == 0.08 and cfg.get("lora_rank") == 8 and cfg.get("max_grad_norm") == 0
    assert a.run.steps.planned == 300
    steps = sorted(c.step for c in a.run.checkpoints if c.step)
    assert steps[:5] == [50, 100, 150, 200, 250]


def test_aitk_loss_log_is_diagnosed_like_its_tensorboard_twin(tmp_path):
    src = fixture_run("aitk-lr-spike")
    db_only = tmp_path / "db"
    tb_only = tmp_path / "tb"
    shutil.copytree(src, db_only)
    shutil.copytree(src, tb_only)
    shutil.rmtree(db_only / "logs")
    (tb_only / "output" / "shapes_lora_v1" / "loss_log.db").unlink()
    a = analyze(db_only)
    assert {s.kind for s in a.run.sources} >= {"aitk_loss_log"} and "tfevents" not in {s.kind for s in a.run.sources}
    assert _diagnosis(db_only) == _diagnosis(tb_only)
    assert any(s.name == "loss/loss" and s.role == "train_loss" for s in a.run.series)


def test_axolotl_project():
    a = analyze(fixture_run("axolotl-lr-diverge"))
    assert a.run.trainer == "axolotl" and a.run.task == "llm"
    o = a.run.config.origin("learning_rate")
    assert o.file == "lora.yml" and o.orig_key == "learning_rate" and o.value == 0.35
    assert a.run.config.get("batch_size") == 8 and a.run.config.get("lora_rank") == 8
    assert {"loss.divergence", "config.lr_high", "config.no_grad_clip"} <= {f.rule for f in a.findings}


# -- rerun --cmd writes the fix in each dialect ------------------------------------------------

def _patched(run: Path, tmp_path: Path):
    from lorascope.rerun.backend_cmd import patch_config
    from lorascope.rerun.plan import make_plan
    a = analyze(run)
    plan = make_plan(a)
    out = tmp_path / "out"
    out.mkdir()
    target = patch_config(a.run, plan, plan.fix, out)
    text = target.read_text(encoding="utf-8")
    doc = json.loads(text) if target.suffix == ".json" else yaml.safe_load(text)
    return plan, doc, out


def test_rerun_cmd_axolotl(tmp_path):
    run = _variant(tmp_path, "axolotl-lr-diverge", "ax", [])
    plan, doc, out = _patched(run, tmp_path)
    assert plan.checkpoint is not None and plan.checkpoint.step < plan.onset
    assert doc["learning_rate"] == plan.fix["learning_rate"] < 0.35
    assert doc["max_grad_norm"] == 1.0 and doc["max_steps"] == plan.end and "num_epochs" not in doc
    assert doc["output_dir"] == str(out.resolve())
    assert Path(doc["resume_from_checkpoint"]).name == f"checkpoint-{plan.start}"
    assert Path(doc["base_model"]).is_absolute() and Path(doc["base_model"]).is_dir()


def test_rerun_cmd_ai_toolkit(tmp_path):
    run = tmp_path / "aitk"
    shutil.copytree(fixture_run("aitk-lr-spike"), run)
    plan, doc, out = _patched(run, tmp_path)
    proc = doc["config"]["process"][0]
    assert proc["train"]["lr"] == plan.fix["learning_rate"] < 0.08
    assert proc["train"]["max_grad_norm"] == 1.0 and proc["train"]["steps"] == plan.end
    assert proc["training_folder"] == str(out.resolve())
    assert Path(proc["model"]["name_or_path"]).is_file() and Path(proc["datasets"][0]["folder_path"]).is_dir()
    assert plan.checkpoint is not None and plan.checkpoint.step in (50, 100)
    assert (out / "shapes_lora_v1" / f"shapes_lora_v1_{plan.start:09d}.safetensors").is_file()


def test_rerun_cmd_onetrainer(tmp_path):
    run = tmp_path / "ot"
    shutil.copytree(fixture_run("onetrainer-lr-spike"), run)
    plan, doc, out = _patched(run, tmp_path)
    assert doc["learning_rate"] == plan.fix["learning_rate"] and doc["clip_grad_norm"] == 1.0
    assert doc["workspace_dir"].startswith(str(out.resolve()))
    assert 1 <= doc["epochs"] <= 50 and doc["training_method"] == "LORA"


def test_rerun_cmd_simpletuner(tmp_path):
    run = tmp_path / "st"
    shutil.copytree(fixture_run("simpletuner-lr-spike"), run)
    plan, doc, out = _patched(run, tmp_path)
    assert doc["--learning_rate"] == plan.fix["learning_rate"] and doc["--max_grad_norm"] == 1.0
    assert "learning_rate" not in doc           # the user's spelling, not a second key
    assert doc["--max_train_steps"] == plan.end and doc["--output_dir"] == str(out.resolve())
    assert Path(doc["--resume_from_checkpoint"]).name == f"checkpoint-{plan.start}"
