"""Every real run in ../shared/wild-runs is read without a crash and without a claim its
numbers rule out (skipped where that folder is absent, as in a user's clone)."""
import json

import pytest

from helpers import WILD

RUNS = sorted(p.name for p in WILD.iterdir() if p.is_dir()) if WILD.is_dir() else []


# What the numbers (and PROVENANCE.md) show, checked by hand: runs that really mixed
# several trainings into one folder, and runs whose loss really drops at each epoch.
MIXED = {"peft-poetry-mixed", "peft-unsloth-beancount", "peft-unsloth-nlpqa-mixed", "trl-grpo-verified"}
PREFERENCE = {"hf-agent-redteam", "hf-chaos-economy", "lf-360-grpo", "trl-grpo-telelogs", "trl-grpo-verified"}


@pytest.fixture(scope="module")
def reports():
    if not RUNS:
        pytest.skip("../shared/wild-runs is not present")
    from lorascope.pipeline import analyze, report_document
    out = {}
    for name in RUNS:
        out[name] = report_document(analyze(WILD / name))
    return out


def test_every_run_is_read(reports):
    for name, doc in reports.items():
        json.dumps(doc, allow_nan=False)
        assert doc["run"]["sources"], name
        assert any(s["records"] > 0 for s in doc["run"]["sources"]), name


# Public runs whose numbers do show a failure, checked by hand: qlora-justinbstrong's loss
# climbs from 1.0 to 29.6 over its ten logged points at a constant learning rate.
BROKEN = {"qlora-justinbstrong": ["loss.divergence"]}
# Runs whose eval loss rises 30-150% from its best while the train loss keeps falling
# (Whisper / T5-style runs with few evaluations, HF named eval sets eval_g0..g2_loss).
OVERFIT = {"hf-neiro", "hf-swapnil-ckpts", "hf-trainer-state-viz", "hf-whisper-hi", "hf-whisper-ja-5k"}


def test_critical_findings_on_the_public_runs_are_the_broken_ones(reports):
    # the other published runs are not broken in a way their files show: a critical
    # finding there would be a claim the numbers do not support
    crit = {n: [f["rule"] for f in d["findings"] if f["severity"] == "critical"] for n, d in reports.items()}
    assert {n: r for n, r in crit.items() if r} == BROKEN


def test_overfitting_public_runs_are_reported(reports):
    flagged = {n for n, d in reports.items() if any(f["rule"] == "overfit" for f in d["findings"])}
    assert flagged == OVERFIT


def test_preference_and_rl_losses_get_no_ratio_based_curve_warning(reports):
    for name in PREFERENCE & set(reports):
        rules = [f["rule"] for f in reports[name]["findings"] if f["severity"] != "info"]
        assert not [r for r in rules if r in ("loss.spike", "loss.plateau", "loss.divergence")], (name, rules)


def test_mixed_runs_are_the_ones_provenance_names(reports):
    flagged = {n for n, d in reports.items() if any(f["rule"] == "run.mixed" for f in d["findings"])}
    assert flagged == MIXED


def test_fp16_skipped_steps_are_not_a_nan_loss(reports):
    # hf-kg-llm: grad_norm NaN at skipped fp16 steps, loss finite throughout
    rules = {f["rule"]: f["severity"] for f in reports["hf-kg-llm"]["findings"]}
    assert "loss.nonfinite" not in rules and rules.get("grad.nonfinite") == "info"
