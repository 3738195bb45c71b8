"""The issue's acceptance check: `lorascope rerun fixtures/runs/hf-lr-diverge --fix` ends `fixed`."""
import json

import pytest

from helpers import fixture_run, lorascope, tree_digest
from lorascope.rerun.verify import REPRO_RTOL

pytestmark = pytest.mark.slow


def test_diverging_fixture_is_fixed_from_the_checkpoint_before_onset(tmp_path):
    run = fixture_run("hf-lr-diverge")
    before = tree_digest(run)
    r = lorascope("rerun", run, "--fix", "--format", "json", "--out", tmp_path / "out", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["schema"] == "lorascope.rerun/1"
    assert doc["diagnosis"]["rule"] == "loss.divergence"
    # resumed strictly before the onset, from the run's own checkpoint
    assert doc["resumed_from"]["step"] < doc["diagnosis"]["step"]
    assert doc["resumed_from"]["checkpoint"].endswith("checkpoint-25")
    assert doc["applied_fix"]["learning_rate"] < 0.25 and doc["applied_fix"]["max_grad_norm"] > 0
    assert doc["fixed"]["findings"] == [] and doc["verdict"] == "fixed"
    assert doc["fixed"]["steps"][0] == doc["resumed_from"]["step"]
    assert (tmp_path / "out").is_dir() and tree_digest(run) == before
    html = list((tmp_path / "out").glob("*.html"))
    assert html and "fixed" in html[0].read_text()
    # the replay continues the original run: its first step ran checkpoint-25's weights on
    # the same batch, so it logs the original's loss there (the check behind the verdict)
    start = doc["resumed_from"]["step"]
    orig = {h["step"]: h["loss"] for h in json.loads((run / "trainer_state.json").read_text())
            ["log_history"] if "loss" in h}
    state = json.loads((tmp_path / "out" / "hf-lr-diverge-fixed" / "trainer_state.json").read_text())
    first = next(h for h in state["log_history"] if "loss" in h)
    assert first["step"] == start + 1
    assert first["loss"] == pytest.approx(orig[start + 1], rel=REPRO_RTOL)
    assert f"the fixed replay reproduces the original run at step {start + 1}" in r.stderr
