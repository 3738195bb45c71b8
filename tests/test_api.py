"""lorascope from Python: `lorascope.load` (tidy pandas frames) and `lorascope.analyze`
(a report with its findings as a frame, shown inline by Jupyter)."""
import json
import subprocess
import sys

import numpy as np
import pytest

from helpers import fixture_run, lorascope as cli, write_trainer_state

import lorascope


def test_import_lorascope_stays_light():
    """`import lorascope` (and reaching its API names) loads neither numpy, scipy nor
    pandas; pandas comes with the first frame."""
    code = ("import sys, lorascope; lorascope.load; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'scipy', 'pandas', 'matplotlib'}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "pandas" not in r.stdout and "scipy" not in r.stdout, r.stdout
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", "import lorascope"],
                       capture_output=True, text=True, timeout=120)
    mods = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in r.stderr.splitlines() if "|" in line}
    assert "lorascope" in mods and not mods & {"numpy", "scipy", "pandas", "matplotlib"}, mods


def test_scalars_are_the_event_files_points(tmp_path):
    """The tidy frame holds every point TensorBoard's own reader (tbparse) finds, with
    its wall time and file."""
    tbparse = pytest.importorskip("tbparse")
    run = fixture_run("hf-lr-diverge")
    data = lorascope.load(run)
    df = data.scalars
    assert list(df.columns) == ["run", "source", "tag", "step", "wall_time", "value"]
    ref = tbparse.SummaryReader(str(run / "runs"), pivot=False, extra_columns={"wall_time", "dir_name"}).scalars
    for tag in ("train/loss", "train/learning_rate", "eval/loss"):
        mine = df[df.tag == tag].sort_values("step")
        theirs = ref[ref.tag == tag].sort_values("step")
        assert mine.step.tolist() == theirs.step.tolist()
        assert np.allclose(mine.value, theirs.value, rtol=1e-6)
        assert np.allclose(mine.wall_time, theirs.wall_time, rtol=0, atol=1e-3)
        assert (mine.run == "run-1").all() and mine.source.str.startswith("runs/").all()
        assert mine.source.str.contains("events.out.tfevents").all()
    assert data.run.trainer == "hf-trainer" and data.config["learning_rate"] == 0.25


def test_scalars_from_a_trainer_state_have_no_wall_time(tmp_path):
    hist = [{"step": s, "loss": 1.0 / s, "learning_rate": 1e-4} for s in range(1, 31)] + \
           [{"step": 31, "loss": float("nan"), "learning_rate": 1e-4}]
    write_trainer_state(tmp_path / "r", hist, max_steps=31, global_step=31)
    df = lorascope.load(tmp_path / "r").scalars
    loss = df[df.tag == "loss"]
    assert loss.step.tolist() == list(range(1, 32)) and loss.value.iloc[:30].tolist() == [1.0 / s for s in range(1, 31)]
    assert np.isnan(loss.value.iloc[30]) and loss.wall_time.isna().all()
    assert (loss.source == "trainer_state.json").all()


def test_a_folder_of_two_runs_has_both_in_the_frames():
    data = lorascope.load(fixture_run("hf-reused-dir"))
    assert len(data.runs) == 2 and data.run is data.runs[-1]
    assert set(data.scalars.run) == {"run-1", "run-2"}
    last = data.scalars.groupby("run").step.max()
    assert last["run-1"] == 60 and last["run-2"] == 40
    assert set(data.checkpoints.run) <= {"run-1", "run-2"} and len(data.checkpoints) >= 3
    assert lorascope.load(fixture_run("hf-reused-dir"), run="run-1").run.id == "run-1"


def test_checkpoints_and_dataset_frames():
    data = lorascope.load(fixture_run("hf-lr-diverge"))
    ck = data.checkpoints
    assert sorted(ck.step.dropna().astype(int).tolist())[:4] == [25, 50, 75, 100]
    assert (ck["rank"] == 8).all() and (ck.modules > 0).all() and (ck.norm > 0).all()
    ds = lorascope.load(fixture_run("sd-bad-metadata")).dataset
    assert len(ds) >= 20 and set(ds.kind) == {"images"}
    assert ds[ds.file.str.endswith("image_099.png", na=False)].exists.tolist() == [False]


def test_analyze_returns_the_report_with_findings_as_a_frame(tmp_path):
    run = fixture_run("hf-lr-diverge")
    report = lorascope.analyze(run)
    doc = json.loads(cli("analyze", run, "--format", "json", "--no-html").stdout)
    assert report.verdict == doc["verdict"] == "failed"
    f = report.findings
    assert list(f.columns) == ["severity", "rule", "step", "step_start", "step_end", "title", "evidence",
                               "causes", "fix", "files"]
    assert f.rule.tolist() == [x["rule"] for x in doc["findings"]]
    top = f.iloc[0]
    assert top.rule == "loss.divergence" and top.step == 34 and top.step_start == 34 and top.step_end == 100
    assert top.fix == doc["findings"][0]["fix"] and str(f.step.dtype) == "Int64"
    assert json.loads(report.to_json())["findings"] == doc["findings"]
    assert "verdict: FAILED" in repr(report)
    page = report.save_html(tmp_path / "r.html")
    assert "chart-data" in page.read_text()


def test_repr_html_is_a_sandboxed_frame_with_the_verdict_outside():
    run = fixture_run("hf-lr-diverge")
    html = lorascope.analyze(run)._repr_html_()
    head, _, frame = html.partition("<iframe")
    assert "FAILED" in head and "Loss diverged" in head
    assert 'sandbox="allow-scripts"' in frame and "allow-same-origin" not in frame
    assert "<script" not in html                 # the page is escaped inside srcdoc
    assert "&lt;script&gt;" in frame or "&lt;script" in frame


def test_the_pipeline_module_keeps_working():
    import lorascope.pipeline as pipeline
    from lorascope.pipeline import analyze, report_document
    a = analyze(fixture_run("hf-healthy"))
    assert report_document(a)["verdict"] == lorascope.analyze(fixture_run("hf-healthy")).verdict
    # importing the pipeline (as the CLI does) leaves lorascope.analyze the API function
    assert pipeline.analyze is analyze and lorascope.analyze is lorascope.api.analyze
