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


def test_baseline_from_the_checkpoint_is_inconclusive_with_the_reason_and_the_remedy(tmp_path):
    """The faulty settings replayed from checkpoint-25 take another path than the original
    run (a fresh optimizer: lorascope never unpickles optimizer.pt): the loss jumps at once
    and comes back, below the catalog's ratios, so the baseline does not call the
    divergence back and the verdict is inconclusive. The verdict says so in numbers a user
    can check in the two trainer_state.json files, and names the remedy; following it
    (--from-step 0: the original's optimizer was fresh there too) confirms the symptom and
    ends fixed."""
    run = fixture_run("hf-lr-diverge")
    r = lorascope("rerun", run, "--fix", "--baseline", "--out", tmp_path / "a", "--device", "cpu")
    assert r.returncode == 1, r.stderr
    lines = r.stdout.splitlines()
    i = lines.index("verdict: INCONCLUSIVE")
    why = lines[i + 1].strip()
    assert why.startswith("inconclusive because the baseline replay's loss ")
    assert f"lorascope: {why}" in r.stderr.splitlines()
    assert "loss.divergence needs a climb that stays x1.4 up" in why
    hist = lambda p: {h["step"]: h["loss"] for h in json.loads(p.read_text())["log_history"]
                      if "loss" in h}
    orig, base = hist(run / "trainer_state.json"), hist(tmp_path / "a" / "hf-lr-diverge-baseline"
                                                        / "trainer_state.json")
    off = next(s for s in sorted(base) if abs(base[s] - orig[s]) > REPRO_RTOL * orig[s])
    assert off == 27          # step 26 ran checkpoint-25's weights: equal; 27 the first update
    assert (f"left it at step {off} (loss {base[off]:.4g} where the original logged "
            f"{orig[off]:.4g})") in why
    assert "fresh optimizer" in why and "rerun with --from-step 0" in why
    html = (tmp_path / "a" / "hf-lr-diverge-rerun.html").read_text()
    assert "proves nothing. The baseline replay&#39;s loss " in html and "rerun with --from-step 0" in html

    r = lorascope("rerun", run, "--fix", "--baseline", "--from-step", "0", "--format", "json",
                  "--out", tmp_path / "b", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["resumed_from"] == {"checkpoint": None, "step": 0}
    assert doc["baseline"] == {"reproduced": True, "findings": ["loss.divergence"]}
    assert doc["verdict"] == "fixed" and "inconclusive because" not in r.stderr
