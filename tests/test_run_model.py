"""The run model on the fixtures made for it (fixtures/runs/README.md): the seed articles'
lora-scripts projects, a kohya run killed in its first epoch, a reused output dir with an
unfinished earlier run, a truncated adapter, a trainer state with an empty log."""
import json
import shutil

import pytest

from helpers import fixture_run, lorascope, tree_digest
from lorascope.build import build_folder, build_run

# every config rule the seed articles describe, and the fixture it fires on
ARTICLE_CONFIG_RULES = {
    "config.missing_path": "seed-config-faults",     # base model path typo: random init
    "config.lr_low": "seed-config-faults",           # "误设为1e-6"
    "config.small_batch": "seed-config-faults",      # bs=1 without accumulation
    "config.rank_capacity": "seed-config-faults",    # rank > 32 on < 50 images
    "config.epochs_high": "seed-config-faults",      # 30 epochs on 30 images (<50: <= 15)
    "config.no_grad_clip": "seed-config-faults",     # clipping off
    "config.lr_high": "seed-lr-high",                # > 5e-4
}


def analyze(target, *extra):
    r = lorascope("analyze", target, "--format", "json", "--no-html", *extra)
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout)


def rules(doc, *severities):
    return {f["rule"] for f in doc["findings"] if not severities or f["severity"] in severities}


# -- the seed articles' dialect -------------------------------------------------------------

@pytest.mark.parametrize("rule,run", sorted(ARTICLE_CONFIG_RULES.items()))
def test_every_config_rule_of_the_articles_fires_on_their_dialect(rule, run):
    doc = analyze(fixture_run(run))
    assert doc["run"]["trainer"] == "lora-scripts" and doc["run"]["task"] == "sd"
    f = next(f for f in doc["findings"] if f["rule"] == rule)
    # the evidence names the key as the user wrote it, in the file they wrote it in
    assert any("configs/my_lora_config.yaml: " in e for e in f["evidence"]), f["evidence"]


def test_the_seed_config_is_read_in_full():
    run = build_run(fixture_run("seed-config-faults"))
    cfg = run.config
    want = {"learning_rate": 1e-6, "batch_size": 1, "grad_accum": 1, "epochs": 30,
            "lora_rank": 64, "lora_alpha": 64, "resolution": 512, "save_steps": 300,
            "max_grad_norm": 0.0, "warmup_steps": 0, "lr_scheduler": "cosine",
            "train_data_dir": "./data/style_train", "output_dir": "./output/my_style_lora",
            "target_modules": ["to_q", "to_k", "to_v", "to_out.0", "q_proj", "v_proj"]}
    assert {k: cfg.get(k) for k in want} == want
    assert all(cfg.origins[k].file == "configs/my_lora_config.yaml" for k in want)
    assert cfg.origins["grad_accum"].orig_key == "gradient_accumulation_steps"
    # 30 images from metadata.csv, 1 pass each per epoch: 30 epochs x 30 steps
    assert run.data.items == 30 and run.steps.planned == 900 and run.steps.last == 900
    assert "30 epochs x ceil(30 samples / batch 1)" in run.steps.planned_from
    # the log says what the articles tell their readers to look for
    assert "base_model_not_loaded" in {e.kind for e in run.events}


def test_the_healthy_seed_project_stays_quiet():
    doc = analyze(fixture_run("seed-healthy"))
    assert rules(doc, "critical", "warning") == set() and doc["verdict"] == "healthy"
    assert not {r for r in rules(doc) if r.startswith("config.")}
    assert doc["run"]["steps"] == {"first": 1, "last": 120, "planned": 120}
    assert doc["run"]["config"]["num_train_items"] == 48


def test_the_seed_layout_is_what_the_articles_describe():
    root = fixture_run("seed-healthy")
    assert (root / "configs/my_lora_config.yaml").is_file()
    assert (root / "data/style_train/metadata.csv").is_file()
    assert (root / "logs/train.log").is_file()
    assert list((root / "output/my_style_lora/logs").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (root / "output/my_style_lora").glob("checkpoint-*")) == [
        "checkpoint-40", "checkpoint-80"]
    # "learning_rate: 3e-4" as the articles write it: a string to YAML 1.1
    assert "learning_rate: 3e-4\n" in (root / "configs/my_lora_config.yaml").read_text()


@pytest.mark.slow
def test_rerun_writes_the_fix_into_the_seed_yaml_and_resumes_from_the_last_good_save(tmp_path):
    import sys

    import yaml
    from helpers import ROOT
    run = fixture_run("seed-lr-high")
    before = tree_digest(run)
    out = tmp_path / "out"
    cmd = f"{sys.executable} {ROOT / 'fixtures' / 'lora_scripts_train.py'} --config {{config}}"
    r = lorascope("rerun", run, "--fix", "--cmd", cmd, "--format", "json", "--out", out)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["resumed_from"]["checkpoint"].endswith("output/my_style_lora/checkpoint-100")
    assert doc["resumed_from"]["step"] == 100 < doc["diagnosis"]["step"]
    assert doc["verdict"] == "fixed"
    patched = (out / "seed-lr-high-fixed" / "lorascope-rerun-config.yaml")
    cfg = yaml.safe_load(patched.read_text(encoding="utf-8"))
    orig = yaml.safe_load((run / "configs/my_lora_config.yaml").read_text(encoding="utf-8"))
    # the fix under the keys as the user wrote them, nothing renamed, no key dropped
    assert cfg["learning_rate"] == doc["applied_fix"]["learning_rate"] < 0.08
    assert cfg["max_grad_norm"] == doc["applied_fix"]["max_grad_norm"] > 0
    assert set(orig) <= set(cfg) and set(cfg) - set(orig) == {"max_steps", "resume_from_checkpoint"}
    assert cfg["epochs"] == orig["epochs"] and cfg["lora_rank"] == orig["lora_rank"]
    assert cfg["resume_from_checkpoint"].endswith("checkpoint-100")
    assert cfg["max_steps"] == doc["fixed"]["steps"][1]
    assert "the fixed replay reproduces the original run at step 101" in r.stderr
    assert tree_digest(run) == before


# -- kohya killed before its first epoch ended ------------------------------------------------

def test_kohya_run_killed_mid_epoch_is_incomplete_by_its_own_step_count():
    doc = analyze(fixture_run("sd-killed-midepoch"))
    assert doc["run"]["trainer"] == "kohya"
    assert doc["run"]["steps"] == {"first": 1, "last": 37, "planned": 300}
    f = next(f for f in doc["findings"] if f["rule"] == "run.incomplete")
    assert f["severity"] == "warning" and f["step"] == 37
    assert any("24 images x 10 repeats / batch 4" in e for e in f["evidence"])
    assert not any(s["kind"] == "text_log" for s in doc["run"]["sources"])


def test_kohya_dataset_sizes_from_what_kohya_leaves(tmp_path):
    """meta_lat.json entries, a dataset TOML's subsets, ss_* metadata: each gives the
    images x repeats kohya's step count needs."""
    import tomli_w
    run = tmp_path / "run"
    (run / "img").mkdir(parents=True)
    for i in range(12):
        (run / "img" / f"{i}.png").write_bytes(b"\x89PNG")
    (run / "config.toml").write_text(tomli_w.dumps({
        "pretrained_model_name_or_path": "m.safetensors", "dataset_config": "dataset.toml",
        "network_module": "networks.lora", "network_dim": 8, "max_train_epochs": 4,
        "gradient_accumulation_steps": 2}))
    (run / "dataset.toml").write_text(tomli_w.dumps({"datasets": [{
        "batch_size": 2, "subsets": [{"image_dir": "img", "num_repeats": 5}]}]}))
    r = build_run(run)
    # 4 epochs x ceil(ceil(12 x 5 / 2) / 2) = 4 x 15
    assert (r.data.items, r.data.repeats, r.steps.planned) == (12, 5, 60)
    # fine-tuning metadata instead: 7 images, batch 2, no accumulation
    fine = tmp_path / "fine"
    fine.mkdir()
    (fine / "meta_lat.json").write_text(json.dumps({f"img{i}": {"caption": "x"} for i in range(7)}))
    (fine / "config.toml").write_text(tomli_w.dumps({
        "pretrained_model_name_or_path": "m.safetensors", "in_json": "meta_lat.json",
        "network_module": "networks.lora", "train_batch_size": 2, "max_train_epochs": 3}))
    r = build_run(fine)
    assert r.data.items == 7 and r.steps.planned == 12
    # neither epochs nor steps in the config: sd-scripts' default --max_train_steps
    (fine / "config.toml").write_text(tomli_w.dumps({
        "pretrained_model_name_or_path": "m.safetensors", "network_module": "networks.lora",
        "train_batch_size": 2}))
    assert build_run(fine).steps.planned == 1600


# -- one folder, two runs ----------------------------------------------------------------------

def test_reused_dir_with_an_unfinished_earlier_run():
    folder = build_folder(fixture_run("hf-reused-unfinished"))
    first, latest = folder.runs
    assert (first.steps.planned, latest.steps.planned) == (200, 60)
    assert first.steps.last < 200 and latest.steps.last == 60
    # each run's curve is its own: no point of one run in the other's series
    a, b = first.primary("train_loss"), latest.primary("train_loss")
    assert int(b.steps[-1]) == 60 and int(a.steps[-1]) == first.steps.last
    assert set(first.series[0].sources).isdisjoint(latest.series[0].sources)
    doc = analyze(fixture_run("hf-reused-unfinished"))
    assert doc["run"]["steps"] == {"first": 1, "last": 60, "planned": 60}
    assert "run.incomplete" not in rules(doc)          # the latest run finished
    assert "run.mixed" in rules(doc)
    ids = [r["id"] for r in doc["runs"]]
    assert ids == ["run-1", "run-2"] and [r["latest"] for r in doc["runs"]] == [False, True]
    earlier = doc["runs"][0]
    inc = next(f for f in earlier["findings"] if f["rule"] == "run.incomplete")
    assert inc["step"] == first.steps.last and "of 200 planned" in inc["title"]
    assert any(s.startswith("checkpoint-40/") for s in earlier["sources"])
    assert not any(s.startswith("checkpoint-60/") for s in earlier["sources"])
    # the analysed run's entry repeats the top-level document
    me = doc["runs"][1]
    assert me["analysed"] and me["findings"] == doc["findings"] and me["verdict"] == doc["verdict"]


def test_run_option_picks_another_run_of_the_folder():
    doc = analyze(fixture_run("hf-reused-unfinished"), "--run", "run-1")
    assert doc["run"]["steps"]["planned"] == 200 and "run.incomplete" in rules(doc)
    r = lorascope("analyze", fixture_run("hf-reused-unfinished"), "--run", "run-7", "--no-html")
    assert r.returncode == 2 and "no run 'run-7'" in r.stderr


def test_findings_never_quote_another_runs_numbers():
    folder = build_folder(fixture_run("hf-reused-dir"))
    a, b = folder.runs
    assert a.steps.last == 60 and b.steps.last == 40
    assert a.primary("train_loss").steps.max() == 60 and b.primary("train_loss").steps.max() == 40
    va = dict(zip(a.primary("train_loss").steps.tolist(), a.primary("train_loss").values.tolist()))
    vb = dict(zip(b.primary("train_loss").steps.tolist(), b.primary("train_loss").values.tolist()))
    assert va[1] != vb[1]


def test_a_single_run_folder_keeps_the_contract_document_exactly():
    doc = analyze(fixture_run("hf-healthy"))
    assert set(doc) == {"schema", "tool", "run", "series", "verdict", "findings"}


# -- a truncated adapter ------------------------------------------------------------------------

def test_truncated_adapter_is_truncated_never_a_zero_adapter():
    doc = analyze(fixture_run("hf-truncated-adapter"))
    f = next(f for f in doc["findings"] if f["rule"] == "ckpt.truncated")
    assert f["severity"] == "critical" and f["files"] == ["adapter_model.safetensors"]
    assert "ckpt.zero_adapter" not in rules(doc)
    assert doc["verdict"] == "failed"
    r = lorascope("inspect", fixture_run("hf-truncated-adapter") / "adapter_model.safetensors")
    assert r.returncode == 2 and "cut short" in r.stdout


# -- a trainer state with an empty log ----------------------------------------------------------

def test_empty_log_history_reports_what_the_state_holds(tmp_path):
    d = tmp_path / "only-state"
    d.mkdir()
    shutil.copy(fixture_run("hf-empty-log") / "checkpoint-10" / "trainer_state.json", d)
    assert json.loads((d / "trainer_state.json").read_text())["log_history"] == []
    doc = analyze(d)
    assert doc["run"]["steps"] == {"first": None, "last": 10, "planned": 20}
    assert doc["run"]["config"]["epochs"] == 1 and doc["run"]["config"]["batch_size"] == 8
    f = next(f for f in doc["findings"] if f["rule"] == "run.incomplete")
    assert f["step"] == 10
    # the whole run: finished at its planned 20 steps though no loss was ever logged
    doc = analyze(fixture_run("hf-empty-log"))
    assert doc["run"]["steps"]["last"] == 20 and doc["run"]["steps"]["planned"] == 20
    assert "run.incomplete" not in rules(doc)


def test_llamafactory_steps_from_the_training_split_its_log_counted(tmp_path):
    """Without trainer_log.jsonl or a state: the YAML's 3 epochs of batch 8 over the 270
    examples running_log.txt counted after val_size held 30 out: 3 x 34 = 102."""
    src = fixture_run("lf-healthy")
    run = tmp_path / "lf"
    run.mkdir()
    shutil.copy(src / "training_args.yaml", run)
    # the log without HF's own total, as when the banner scrolled out of a captured log
    log = (src / "running_log.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    (run / "running_log.txt").write_text("".join(x for x in log if "Total optimization" not in x),
                                         encoding="utf-8")
    shutil.copytree(src / "data", run / "data")
    r = build_run(run)
    assert r.data.items == 270 and r.steps.planned == 102
    assert "3 epochs x ceil(ceil(270 examples / batch 8) / accumulation 1)" in r.steps.planned_from
