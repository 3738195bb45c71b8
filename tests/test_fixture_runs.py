"""End to end on the bundled fixture runs: each intended symptom is found at the right
step with the right cause, and the healthy runs stay quiet (fixtures/runs/README.md)."""
import json

import pytest

from helpers import fixture_run, lorascope


def analyze(name, *extra):
    r = lorascope("analyze", fixture_run(name), "--format", "json", "--no-html", *extra)
    assert r.returncode in (0, 1), r.stderr
    doc = json.loads(r.stdout)
    assert r.returncode == (1 if doc["verdict"] == "failed" else 0)
    return doc


def finding(doc, rule):
    hits = [f for f in doc["findings"] if f["rule"] == rule]
    assert hits, f"{rule} not found; got {[f['rule'] for f in doc['findings']]}"
    return hits[0]


def rules_at(doc, *severities):
    return sorted(f["rule"] for f in doc["findings"] if f["severity"] in severities)


# (run, rule, severity, expected step or None, tolerance in steps, a cause rule or None)
EXPECTED = [
    ("hf-lr-diverge", "loss.divergence", "critical", 37, 12, "config.lr_high"),
    ("hf-overfit", "overfit", "warning", 50, 10, "config.epochs_high"),
    ("hf-zero-lr", "ckpt.zero_adapter", "critical", None, None, "config.lr_low"),
    ("hf-zero-lr", "loss.plateau", "critical", None, None, "ckpt.zero_adapter"),
    ("hf-killed", "run.incomplete", "warning", 53, 2, None),
    ("hf-reused-dir", "run.mixed", "warning", None, None, None),
    ("lf-base-not-loaded", "log.base_model_not_loaded", "critical", None, None, None),
    ("lf-base-not-loaded", "loss.plateau", "critical", None, None, "log.base_model_not_loaded"),
    ("sd-lr-spike", "loss.spike", "critical", None, None, "config.lr_high"),
    ("sd-nan-degenerate", "loss.nonfinite", "critical", None, None, "data.degenerate_image"),
    ("sd-nan-degenerate", "ckpt.nonfinite", "critical", None, None, None),
    ("sd-corrupt-jpeg", "data.corrupt_image", "critical", None, None, None),
    ("sd-corrupt-jpeg", "run.incomplete", "warning", 184, 1, "data.corrupt_image"),
    ("sd-bad-metadata", "data.encoding", "warning", None, None, None),
    ("sd-bad-metadata", "data.case_mismatch", "critical", None, None, None),
    ("sd-bad-metadata", "data.missing_file", "critical", None, None, None),
    ("sd-bad-metadata", "data.caption_quality", "warning", None, None, None),
    ("sd-epoch-jump", "loss.epoch_jump", "warning", None, None, None),
    ("sd-zero-lr", "ckpt.zero_adapter", "critical", None, None, None),
]


@pytest.mark.parametrize("run,rule,severity,step,tol,cause", EXPECTED,
                         ids=[f"{e[0]}:{e[1]}" for e in EXPECTED])
def test_intended_symptom_is_found(run, rule, severity, step, tol, cause):
    doc = analyze(run)
    f = finding(doc, rule)
    assert f["severity"] == severity
    if step is not None:
        assert f["step"] is not None and abs(f["step"] - step) <= tol, f["step"]
    if cause is not None:
        assert cause in [c["rule"] for c in f["causes"]], f["causes"]


@pytest.mark.parametrize("run", ["hf-healthy", "lf-healthy", "sd-healthy", "sd-loha"])
def test_healthy_runs_have_no_warning_or_critical(run):
    doc = analyze(run)
    assert rules_at(doc, "critical", "warning") == []
    assert doc["verdict"] == "healthy"


def test_diverging_run_fix_lowers_lr_and_enables_clipping():
    f = finding(analyze("hf-lr-diverge"), "loss.divergence")
    assert f["fix"]["learning_rate"] < 0.25
    assert f["fix"]["max_grad_norm"] > 0


def test_killed_run_reports_where_it_stopped():
    doc = analyze("hf-killed")
    assert doc["run"]["steps"]["last"] == 53 and doc["run"]["steps"]["planned"] == 200


def test_mixed_run_names_both_event_files():
    f = finding(analyze("hf-reused-dir"), "run.mixed")
    assert any("both start at step 1" in e for e in f["evidence"])


def test_zero_adapter_names_the_files():
    f = finding(analyze("hf-zero-lr"), "ckpt.zero_adapter")
    assert "adapter_model.safetensors" in f["files"]
    assert any(p.startswith("checkpoint-") for p in f["files"])


def test_corrupt_image_is_named():
    doc = analyze("sd-corrupt-jpeg")
    f = finding(doc, "data.corrupt_image")
    assert len(f["files"]) == 1 and f["files"][0].lower().endswith((".jpg", ".jpeg"))


def test_run_sources_are_reported_with_kinds():
    doc = analyze("hf-lr-diverge")
    kinds = {s["kind"] for s in doc["run"]["sources"]}
    assert {"tfevents", "trainer_state", "config", "safetensors"} <= kinds
    assert doc["run"]["trainer"] == "hf-trainer" and doc["run"]["task"] == "llm"
    assert doc["run"]["config"]["learning_rate"] == 0.25
    assert doc["run"]["config"]["lora_rank"] == 8 and doc["run"]["config"]["lora_alpha"] == 16


def test_spike_aftermath_is_not_an_epoch_jump():
    # sd-lr-spike: the spike starts at 115 and an epoch starts at 121 inside it; only the
    # spike is reported
    doc = analyze("sd-lr-spike")
    assert [f["rule"] for f in doc["findings"] if f["rule"].startswith("loss.")
            and f["severity"] != "info"] == ["loss.spike"]


def test_crash_cites_the_exception_and_its_fix_drops_the_corrupt_file():
    f = finding(analyze("sd-corrupt-jpeg"), "run.incomplete")
    assert any("OSError: image file is truncated" in e for e in f["evidence"])
    assert f["fix"] == {"exclude_files": ["dataset/image_013.jpg"]}


def test_lycoris_loha_checkpoints_are_read_as_layers():
    """sd-loha trains LyCORIS LoHa layers: every checkpoint is read as 30 layers of rank
    4 and alpha 2, none zero, and the layers move away from their start as training
    goes on (the norm of each update grows from epoch 2 to the end)."""
    import numpy as np
    from safetensors import safe_open

    from lorascope.ingest.safetensors import read_checkpoint
    out = fixture_run("sd-loha") / "output"
    cks = [read_checkpoint(out / n, n) for n in ("shapesdemo-000002.safetensors",
                                                 "shapesdemo.safetensors")]
    for ck in cks:
        assert ck.format == "kohya" and ck.problems == [] and ck.rank == 4 and ck.alpha == 2
        assert len(ck.modules) == 30 and not any(m.zero or m.nonfinite for m in ck.modules)
    early, final = ({m.name: m.norm for m in ck.modules} for ck in cks)
    assert sum(final[k] > early[k] for k in final) >= 25
    # one layer's norm against the LoHa update computed from the file's own tensors
    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    with safe_open(str(out / "shapesdemo.safetensors"), framework="np") as f:
        w = {k: f.get_tensor(f"{name}.{k}").astype(np.float64)
             for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha")}
    dw = (w["hada_w1_a"] @ w["hada_w1_b"].reshape(4, -1)) * (w["hada_w2_a"] @ w["hada_w2_b"].reshape(4, -1))
    assert final[name] == pytest.approx(float(np.linalg.norm(dw)) * float(w["alpha"]) / 4, rel=1e-6)
