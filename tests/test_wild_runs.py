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
    from lorascope.analyze import analyze, report_document
    out = {}
    for name in RUNS:
        out[name] = report_document(analyze(WILD / name))
    return out


def test_every_run_is_read(reports):
    for name, doc in reports.items():
        json.dumps(doc, allow_nan=False)
        assert doc["run"]["sources"], name
        assert any(s["records"] > 0 for s in doc["run"]["sources"]), name


def test_no_critical_finding_on_the_public_runs(reports):
    # none of these published runs is broken in a way their files show: a critical
    # finding here would be a claim the numbers do not support
    crit = {n: [f["rule"] for f in d["findings"] if f["severity"] == "critical"] for n, d in reports.items()}
    assert {n: r for n, r in crit.items() if r} == {}


def test_preference_and_rl_losses_get_no_ratio_based_curve_warning(reports):
    for name in PREFERENCE & set(reports):
        rules = [f["rule"] for f in reports[name]["findings"] if f["severity"] != "info"]
        assert not [r for r in rules if r in ("loss.spike", "loss.plateau", "loss.divergence")], (name, rules)


def test_mixed_runs_are_the_ones_provenance_names(reports):
    flagged = {n for n, d in reports.items() if any(f["rule"] == "run.mixed" for f in d["findings"])}
    assert flagged == MIXED


def test_fp16_skipped_steps_are_not_a_nan_loss(reports):
    # hf-kg-llm: grad_norm NaN at skipped fp16 steps, loss finite throughout
    fs = [f for f in reports["hf-kg-llm"]["findings"] if f["rule"] == "loss.nonfinite"]
    assert all(f["severity"] == "info" for f in fs)
