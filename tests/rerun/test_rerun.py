"""End to end: real HF Trainer + PEFT runs (fixtures/tinyllm.py), `lorascope rerun --fix`.

* lr too high (warmup towards 0.2 with AdamW, no clipping): the loss falls, then diverges
  from step ~10-14. rerun resumes from the last checkpoint before that with the diagnosed fix
  (learning_rate 2e-4, max_grad_norm 1.0): the baseline replay reproduces loss.divergence,
  the fixed one does not -> `fixed`.
* base model not loaded (weights saved under the wrong prefix: random init): the loss
  plateaus from step 1. The diagnosis (loss.plateau) carries the catalog's fix,
  learning_rate 2e-4, which cannot help a model that has nothing pretrained in it: the
  replay from scratch still plateaus -> `not_fixed`. Honest: the fault is not the setting
  being changed.
* the external-command backend runs tests/trainers/hf_train.py (HF Trainer + PEFT) on the
  run's YAML patched with the fix.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from lorascope.cli import cli
from tests.rerun import llmruns

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("rerun")
    llmruns.build_base(root / "base")
    return root


@pytest.fixture(scope="module")
def diverging(lab):
    return llmruns.train_from_yaml(lab / "lr-diverge", llmruns.yaml_config(
        model_name_or_path=str(lab / "base")))


def _rerun(args):
    res = CliRunner().invoke(cli, ["rerun", *args], catch_exceptions=False)
    return res.exit_code, res.stdout, res.stderr


def _device(name):
    if name == "cuda":
        import torch
        if not torch.cuda.is_available():
            pytest.skip("no CUDA device")
    return name


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_lr_divergence_is_fixed(diverging, tmp_path, device):
    code, out, err = _rerun([str(diverging), "--fix", "--baseline", "--device", _device(device),
                             "--out", str(tmp_path / "o"), "--format", "json"])
    doc = json.loads(out)
    assert set(doc) == {"schema", "run", "diagnosis", "resumed_from", "applied_fix", "device",
                        "baseline", "fixed", "verdict"}
    assert doc["schema"] == "lorascope.rerun/1"
    assert doc["diagnosis"]["rule"] == "loss.divergence"
    assert doc["resumed_from"]["step"] < doc["diagnosis"]["step"]
    assert doc["resumed_from"]["checkpoint"].endswith(f"checkpoint-{doc['resumed_from']['step']}")
    assert doc["applied_fix"]["learning_rate"] <= 2e-4
    assert doc["device"] == device
    assert doc["baseline"] == {"reproduced": True, "findings": doc["baseline"]["findings"]}
    # the replay without the fix blows up again (it may jump where the run climbed: the
    # same episode, by the other shape); with the fix it does neither
    rose = {"loss.divergence", "loss.spike"}
    assert rose & set(doc["baseline"]["findings"])
    assert not rose & set(doc["fixed"]["findings"])
    assert doc["verdict"] == "fixed" and code == 0
    # the replays continue the original step numbering, and the first replayed step
    # reproduces the original loss (same weights, same batch)
    fixed = Path(doc["fixed"]["out"])
    state = json.loads((fixed / "trainer_state.json").read_text())
    steps = [h["step"] for h in state["log_history"] if "loss" in h]
    assert steps[0] == doc["resumed_from"]["step"] + 1 and steps[-1] == doc["fixed"]["steps"][1]
    orig = {h["step"]: h["loss"] for h in
            json.loads((diverging / "trainer_state.json").read_text())["log_history"] if "loss" in h}
    base = json.loads((tmp_path / "o" / "lr-diverge-baseline" / "trainer_state.json").read_text())
    first = next(h for h in base["log_history"] if "loss" in h)
    assert first["loss"] == pytest.approx(orig[first["step"]], rel=0.02 if device == "cpu" else 0.1)
    assert list(fixed.glob("runs/**/events.out.tfevents.*"))
    assert (tmp_path / "o" / "lr-diverge-rerun.html").read_text().count("<svg") >= 1
    assert not list(diverging.glob("lr-diverge-*"))          # nothing written into the run


def test_replay_on_another_data_pipeline_is_inconclusive(diverging, tmp_path):
    """The run was trained with labels on the prompt (train_on_prompt: true), but the copy's
    config no longer says so: the built-in backend falls back to answers-only labels, so
    its first replayed step (checkpoint weights, same batch) logs another loss than the
    original run did there. Whatever the fixed replay then shows says nothing about the
    original run: inconclusive, with the reason on stderr and in the text."""
    import shutil

    import yaml
    run = tmp_path / "lr-diverge"
    shutil.copytree(diverging, run)
    cfg = yaml.safe_load((run / "train_lora.yaml").read_text())
    del cfg["train_on_prompt"]
    (run / "train_lora.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    from lorascope.pipeline import analyze
    from lorascope.rerun.plan import make_plan
    plan = make_plan(analyze(run))
    few = plan.onset - plan.start          # the shortest window that still holds the onset
    code, out, err = _rerun([str(run), "--fix", "--device", "cpu", "--steps", str(few),
                             "--out", str(tmp_path / "o")])
    assert code == 1 and "verdict: INCONCLUSIVE" in out
    start = int(out.split("at step ")[1].split()[0])
    line = next(x for x in err.splitlines() if "does not reproduce the original run" in x)
    assert line.startswith(f"lorascope: the fixed replay does not reproduce the original run "
                           f"at step {start + 1}: loss ")
    assert line.endswith("the data pipeline or the base model differ; use --cmd with your own "
                         "trainer")
    assert "reproduction: the fixed replay does not reproduce" in out
    html = (tmp_path / "o" / "lr-diverge-rerun.html").read_text()
    assert 'class="banner v-warning"' in html and "does not reproduce the original run" in html


def test_fix_that_cannot_help_is_not_fixed(lab, tmp_path):
    broken = tinyllm_broken(lab)
    run = llmruns.train_from_yaml(lab / "no-base", llmruns.yaml_config(
        model_name_or_path=str(broken), lora_target=["q_proj", "v_proj"], learning_rate=1e-4,
        warmup_steps=0, lr_scheduler_type="constant", max_grad_norm=1.0, max_steps=24,
        save_steps=8))
    code, out, err = _rerun([str(run), "--fix", "--device", "cpu", "--out", str(tmp_path),
                             "--format", "json"])
    doc = json.loads(out)
    assert doc["diagnosis"]["rule"] == "loss.plateau"
    assert doc["resumed_from"] == {"checkpoint": None, "step": 0}     # onset at step 1
    assert doc["baseline"] is None
    assert "loss.plateau" in doc["fixed"]["findings"]
    assert doc["verdict"] == "not_fixed" and code == 1


def tinyllm_broken(lab: Path) -> Path:
    dst = lab / "base-renamed"
    if not dst.exists():
        llmruns.tinyllm.write_renamed_copy(lab / "base", dst)
    return dst


def test_external_trainer_command(diverging, tmp_path):
    cmd = f"{sys.executable} {ROOT / 'tests' / 'trainers' / 'hf_train.py'} {{config}}"
    code, out, err = _rerun([str(diverging), "--fix", "--cmd", cmd, "--steps", "15",
                             "--out", str(tmp_path), "--format", "json"])
    doc = json.loads(out)
    fixed = Path(doc["fixed"]["out"])
    cfg = (fixed / "lorascope-rerun-config.yaml").read_text()
    import yaml
    patched = yaml.safe_load(cfg)
    assert patched["learning_rate"] == doc["applied_fix"]["learning_rate"]
    start = doc["resumed_from"]["step"]
    assert 0 < start < doc["diagnosis"]["step"]
    assert patched["max_grad_norm"] == 1.0 and patched["max_steps"] == start + 15
    assert patched["resume_from_checkpoint"].endswith(f"checkpoint-{start}")
    assert not (Path(patched["resume_from_checkpoint"]) / "optimizer.pt").exists()
    assert (fixed / "trainer.log").read_text()
    state = json.loads((fixed / "trainer_state.json").read_text())
    assert state["global_step"] == start + 15 and doc["fixed"]["steps"] == [start, start + 15]
    assert doc["verdict"] == "fixed" and code == 0
    # the original run is untouched
    assert yaml.safe_load((diverging / "train_lora.yaml").read_text())["learning_rate"] == 0.2


def test_errors_exit_2_with_one_line(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "trainer_state.json").write_text(json.dumps(
        {"global_step": 3, "log_history": [{"step": i, "loss": 1.0} for i in (1, 2, 3)]}))
    code, out, err = _rerun([str(tmp_path / "run"), "--fix", "--out", str(tmp_path / "o")])
    assert code == 2 and out == ""
    assert err.startswith("lorascope: ") and err.count("\n") == 1
