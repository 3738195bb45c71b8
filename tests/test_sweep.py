"""Comparing a batch: the runs ranked, the settings that differ, the failed runs' telling
values marked; the same comparison in `--format json` (inside lorascope.batch/1)."""
import json
import math

import pytest

from helpers import lorascope, write_trainer_state
from lorascope.report.sweep import comparison, display_names


def history(n=120, lr=2e-4, diverge_at=None):
    out = []
    for s in range(1, n + 1):
        loss = 2.0 * math.exp(-s / 30) + 0.3 + 0.01 * math.sin(s)
        if diverge_at and s > diverge_at:
            loss += (s - diverge_at) * 0.08
        out.append({"step": s, "epoch": s / 60, "loss": round(loss, 4), "learning_rate": lr, "grad_norm": 1.0})
    return out


@pytest.fixture
def sweep(tmp_path):
    runs = {}
    for name, lr, div, n in (("a-lr1e-4", 1e-4, None, 120), ("b-lr5e-3", 5e-3, 70, 120),
                             ("c-lr2e-4", 2e-4, None, 120), ("d-stopped", 2e-4, None, 60)):
        runs[name] = tmp_path / "sweep" / name
        write_trainer_state(runs[name], history(n, lr, div), max_steps=120, global_step=n, logging_steps=1)
    return runs


def test_batch_json_carries_the_comparison(sweep, tmp_path):
    args = [sweep[k] for k in ("a-lr1e-4", "b-lr5e-3", "c-lr2e-4", "d-stopped")]
    r = lorascope("analyze", *args, "--format", "json", "--no-html")
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    # backwards compatible: the same schema and reports, in argument order
    assert doc["schema"] == "lorascope.batch/1" and "errors" not in doc
    assert [d["run"]["path"] for d in doc["reports"]] == [str(p) for p in args]
    comp = doc["comparison"]
    ranked = [doc["reports"][e["report"]]["run"]["path"] for e in comp["runs"]]
    assert ranked[0] == str(sweep["b-lr5e-3"])               # the failed run first
    assert ranked[1] == str(sweep["d-stopped"])              # then the warning (stopped early)
    assert [e["rank"] for e in comp["runs"]] == [1, 2, 3, 4]
    assert [e["verdict"] for e in comp["runs"]] == ["failed", "warning", "healthy", "healthy"]
    assert comp["runs"][0]["top"]["rule"] == "loss.divergence" and comp["runs"][0]["critical"] == 1
    # only what differs; the failed run's learning rate is outside every other run's
    assert "learning_rate" in comp["keys"] and "trainer" not in comp["keys"]
    assert comp["runs"][0]["settings"]["learning_rate"] == pytest.approx(5e-3)
    assert comp["runs"][0]["marked"] == ["learning_rate"]
    assert all(e["marked"] == [] for e in comp["runs"][1:])
    # the same with the index page written, and with workers
    r2 = lorascope("analyze", *args, "--format", "json", "--html", tmp_path / "rep", "--jobs", "2")
    assert json.loads(r2.stdout)["comparison"] == comp
    page = (tmp_path / "rep" / "index.html").read_text()
    assert page.index("b-lr5e-3") < page.index("a-lr1e-4")


def _doc(path, verdict, cfg, findings=()):
    return {"run": {"path": path, "trainer": "hf-trainer", "task": "llm", "config": cfg},
            "verdict": verdict, "findings": list(findings)}


def test_marking_numbers_by_range_and_other_values_by_equality():
    crit = {"rule": "loss.nan", "severity": "critical", "step": 5, "title": "NaN"}
    docs = [_doc("h1", "healthy", {"learning_rate": 1e-4, "lora_rank": 8, "lr_scheduler": "cosine"}),
            _doc("h2", "warning", {"learning_rate": 3e-4, "lora_rank": 32, "lr_scheduler": "cosine"}),
            _doc("f1", "failed", {"learning_rate": 2e-4, "lora_rank": 64, "lr_scheduler": "constant"}, [crit]),
            _doc("f2", "failed", {"learning_rate": 1e-2, "lora_rank": 16, "lr_scheduler": None}, [crit, crit])]
    c = comparison(docs)
    assert c["keys"] == ["learning_rate", "lora_rank", "lr_scheduler"]
    by = {e["path"]: e for e in c["runs"]}
    assert [e["path"] for e in c["runs"]] == ["f2", "f1", "h2", "h1"]     # more critical findings first
    assert by["f1"]["marked"] == ["lora_rank", "lr_scheduler"]            # 2e-4 lies within 1e-4..3e-4
    assert by["f2"]["marked"] == ["learning_rate", "lr_scheduler"]        # an unset scheduler is a value
    assert by["h1"]["marked"] == [] and by["h2"]["marked"] == []


def test_nothing_marked_without_a_run_that_did_not_fail():
    crit = {"rule": "loss.nan", "severity": "critical", "step": 5, "title": "NaN"}
    docs = [_doc("a", "failed", {"learning_rate": 1e-4}, [crit]), _doc("b", "failed", {"learning_rate": 1e-2}, [crit])]
    assert all(e["marked"] == [] for e in comparison(docs)["runs"])


def test_display_names_drop_the_shared_folder():
    assert display_names(["out/sweep/a", "out/sweep/b"]) == ["a", "b"]
    assert display_names(["x/run", "y/run"]) == ["x/run", "y/run"]
    assert display_names(["/abs/a", "rel/b"]) == ["/abs/a", "rel/b"]
