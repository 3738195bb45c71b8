"""MLflow file-store runs: the reader against MLflow's own client on the fixture, and
the file format's edge cases."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from helpers import fixture_run
from lorascope.ingest import mlflow as M


def _run_meta():
    run = fixture_run("mlflow-overfit")
    (meta,) = [p for p in run.glob("mlruns/*/*/meta.yaml") if (p.parent / "metrics").is_dir()]
    return run, meta


def test_fixture_matches_the_mlflow_client(monkeypatch, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run, meta = _run_meta()
    # the client wants each run's (empty) artifacts folder, which git does not keep: it
    # reads a copy of the store that has them
    store = tmp_path / "mlruns"
    shutil.copytree(run / "mlruns", store)
    for m in store.glob("*/*/meta.yaml"):
        (m.parent / "artifacts").mkdir(exist_ok=True)
    client = mlflow.tracking.MlflowClient(tracking_uri=store.resolve().as_uri())
    run_id = meta.parent.name
    parsed = M.parse(meta, meta.relative_to(run).as_posix())
    got = {s.tag: s for s in parsed.series}
    assert {"loss", "eval_loss", "learning_rate", "grad_norm", "epoch"} <= set(got)
    assert "train_loss" not in got and "train_runtime" not in got     # HF's one-off summary
    for key, s in got.items():
        hist = client.get_metric_history(run_id, key)
        assert s.steps.tolist() == [m.step for m in hist], key
        assert np.array_equal(s.values, np.asarray([m.value for m in hist]), equal_nan=True), key
        assert np.allclose(s.wall_times, [m.timestamp / 1000 for m in hist])
    params = client.get_run(run_id).data.params
    cfg = {c.key: c for c in parsed.config}
    assert cfg["learning_rate"].value == float(params["learning_rate"]) == 0.01
    assert cfg["epochs"].value == 60 and cfg["batch_size"].value == 4
    assert parsed.facts["trainer"] == "hf-trainer" and parsed.facts["run_status"] == "FINISHED"


def _store(tmp_path, metrics: dict[str, bytes], params: dict[str, str] | None = None, meta: str = ""):
    r = tmp_path / "mlruns" / "1" / "abc"
    (r / "metrics").mkdir(parents=True)
    for k, data in metrics.items():
        p = r / "metrics" / k
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (r / "params").mkdir()
    for k, v in (params or {}).items():
        (r / "params" / k).write_text(v)
    (r / "meta.yaml").write_text(meta or "run_id: abc\nstatus: 4\nstart_time: 1700000000000\n")
    return r / "meta.yaml"


def test_lines_nan_inf_and_nested_keys(tmp_path):
    meta = _store(tmp_path, {"loss": b"1700000000000 0.5 1\n1700000000100 nan 2\n1700000000200 inf 3\n",
                             "train/grad_norm": b"1700000000000 1.5 1\n"})
    p = M.parse(meta, "mlruns/1/abc/meta.yaml")
    s = {x.tag: x for x in p.series}
    assert s["loss"].steps.tolist() == [1, 2, 3]
    assert s["loss"].values[0] == 0.5 and np.isnan(s["loss"].values[1]) and np.isinf(s["loss"].values[2])
    assert s["train/grad_norm"].values.tolist() == [1.5]
    assert p.facts["run_status"] == "FAILED" and p.facts["started_at"] == 1.7e9


def test_bad_lines_are_reported_and_good_lines_kept(tmp_path):
    meta = _store(tmp_path, {"loss": b"1 0.5 1\nGARBAGE\n2 0.25\n3 x 3\n4 0.125 4\n\x00\xff\n"})
    p = M.parse(meta, "m/meta.yaml")
    (s,) = p.series
    assert s.steps.tolist() == [1, 0, 4]            # "2 0.25": MLflow < 1.0 wrote no step
    assert s.values.tolist() == [0.5, 0.25, 0.125]
    assert any("lines are not" in pr for pr in p.source.problems)


def test_params_are_read_as_config(tmp_path):
    meta = _store(tmp_path, {"loss": b"1 0.5 1\n"}, {
        "learning_rate": "0.0002", "per_device_train_batch_size": "4", "gradient_accumulation_steps": "2",
        "num_train_epochs": "3.0", "max_steps": "-1", "lr_scheduler_type": "SchedulerType.COSINE",
        "label_names": "['labels']", "bogus": "[" * 5000})
    cfg = {c.key: c.value for c in M.parse(meta, "m/meta.yaml").config}
    assert cfg["learning_rate"] == 0.0002 and cfg["batch_size"] == 4 and cfg["grad_accum"] == 2
    assert cfg["epochs"] == 3 and "max_steps" not in cfg and cfg["lr_scheduler"] == "cosine"
    assert cfg["label_names"] == ["labels"]


def test_deleted_and_empty_runs(tmp_path):
    meta = _store(tmp_path, {}, meta="lifecycle_stage: deleted\n")
    p = M.parse(meta, "m/meta.yaml")
    assert any("deleted" in pr for pr in p.source.problems)
    assert any("no metrics" in pr for pr in p.source.problems)
