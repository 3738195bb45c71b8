"""The command line as CONTRACT §1-2 pins it: JSON shape, exit codes, no writes into RUN_DIR."""
import json
import math

import pytest

from helpers import lorascope, tree_digest, write_trainer_state

CONTRACT_CONFIG = ["learning_rate", "batch_size", "grad_accum", "epochs", "max_steps", "lora_rank",
                   "lora_alpha", "warmup_steps", "max_grad_norm", "resolution", "lr_scheduler",
                   "eval_strategy", "num_train_items"]


def healthy_history(n=60):
    return [{"step": s, "epoch": s / 30, "loss": round(2.0 * math.exp(-s / 40) + 0.3, 4),
             "learning_rate": 2e-4, "grad_norm": 0.8} for s in range(1, n + 1)]


@pytest.fixture
def stopped_run(tmp_path):
    """A run stopped at step 30 of 60: run.incomplete (a warning)."""
    d = tmp_path / "stopped"
    write_trainer_state(d, healthy_history(30), max_steps=60, global_step=30, logging_steps=1)
    return d


@pytest.fixture
def complete_run(tmp_path):
    d = tmp_path / "complete"
    write_trainer_state(d, healthy_history(60), max_steps=60, global_step=60, logging_steps=1)
    return d


def test_empty_directory_is_exit_2_with_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    r = lorascope("analyze", tmp_path / "empty", "--no-html", subprocess_=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "empty" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_directory_is_exit_2(tmp_path):
    r = lorascope("analyze", tmp_path / "nope", "--format", "json", "--no-html")
    assert r.returncode == 2 and r.stdout == ""
    assert "no such directory" in r.stderr and "Traceback" not in r.stderr


def test_directory_with_only_unreadable_files_is_exit_2(tmp_path):
    d = tmp_path / "junk"
    d.mkdir()
    (d / "training_args.bin").write_bytes(b"\x80\x04garbage pickle")
    (d / "trainer_state.json").write_text("{ not json")
    r = lorascope("analyze", d, "--no-html")
    assert r.returncode == 2 and "nothing readable" in r.stderr


def test_json_document_has_the_contract_shape(complete_run):
    r = lorascope("analyze", complete_run, "--format", "json", "--no-html")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)          # one document, nothing else on stdout
    assert doc["schema"] == "lorascope.report/1"
    assert doc["tool"] == {"name": "lorascope", "version": "0.1.0"}
    assert set(doc) == {"schema", "tool", "run", "series", "verdict", "findings"}
    assert set(doc["run"]) == {"path", "trainer", "task", "sources", "config", "steps"}
    assert list(doc["run"]["config"]) == CONTRACT_CONFIG
    assert doc["run"]["trainer"] == "hf-trainer"
    assert doc["run"]["steps"] == {"first": 1, "last": 60, "planned": 60}
    assert doc["run"]["sources"] == [{"path": "trainer_state.json", "kind": "trainer_state",
                                      "records": 60, "problems": []}]
    loss = next(s for s in doc["series"] if s["role"] == "train_loss")
    assert loss == {"name": "loss", "role": "train_loss", "points": 60, "first_step": 1,
                    "last_step": 60, "nonfinite": 0}
    assert {s["role"] for s in doc["series"]} <= {"train_loss", "eval_loss", "lr", "grad_norm", "other"}
    assert doc["verdict"] == "healthy"


def test_stopped_run_is_a_warning_and_fail_on_gates_it(stopped_run):
    r = lorascope("analyze", stopped_run, "--format", "json", "--no-html")
    doc = json.loads(r.stdout)
    assert r.returncode == 0            # default --fail-on critical
    assert doc["verdict"] == "warning"
    f = next(f for f in doc["findings"] if f["rule"] == "run.incomplete")
    assert f["severity"] == "warning" and f["step"] == 30
    assert set(f) == {"rule", "severity", "title", "step", "step_range", "evidence", "causes", "fix", "files"}
    assert lorascope("analyze", stopped_run, "--no-html", "--fail-on", "warning").returncode == 1
    assert lorascope("analyze", stopped_run, "--no-html", "--fail-on", "never").returncode == 0


def test_rules_file_overrides_severity(stopped_run, tmp_path):
    rules = tmp_path / "strict.toml"
    rules.write_text('["run.incomplete"]\nseverity = "critical"\n')
    r = lorascope("analyze", stopped_run, "--format", "json", "--no-html", "--rules", rules)
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    assert doc["verdict"] == "failed"
    off = tmp_path / "off.toml"
    off.write_text('["run.incomplete"]\nseverity = "off"\n')
    doc = json.loads(lorascope("analyze", stopped_run, "--format", "json", "--no-html", "--rules", off).stdout)
    assert not any(f["rule"] == "run.incomplete" for f in doc["findings"])


@pytest.mark.parametrize("content,msg", [
    ('["no.such.rule"]\nseverity = "critical"\n', "unknown rule id"),
    ('["run.incomplete"]\nseverity = "fatal"\n', "severity"),
    ("this is [not toml", "not valid TOML"),
])
def test_bad_rules_file_is_exit_2(stopped_run, tmp_path, content, msg):
    f = tmp_path / "bad.toml"
    f.write_text(content)
    r = lorascope("analyze", stopped_run, "--no-html", "--rules", f)
    assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr


def test_several_runs_make_one_batch_document(stopped_run, complete_run, tmp_path):
    r = lorascope("analyze", stopped_run, complete_run, "--format", "json", "--html", tmp_path / "rep",
                  "--jobs", "2")
    doc = json.loads(r.stdout)
    assert doc["schema"] == "lorascope.batch/1"
    assert [d["run"]["path"] for d in doc["reports"]] == [str(stopped_run), str(complete_run)]
    assert (tmp_path / "rep" / "index.html").is_file()
    assert (tmp_path / "rep" / "stopped.html").is_file() and (tmp_path / "rep" / "complete.html").is_file()


def test_one_unreadable_run_in_a_batch_is_exit_2_but_others_reported(complete_run, tmp_path):
    (tmp_path / "empty").mkdir()
    r = lorascope("analyze", complete_run, tmp_path / "empty", "--format", "json", "--no-html")
    assert r.returncode == 2
    assert len(json.loads(r.stdout)["reports"]) == 1


def test_analyze_never_writes_into_the_run_dir(stopped_run, tmp_path):
    before = tree_digest(stopped_run)
    r = lorascope("analyze", stopped_run, cwd=tmp_path, subprocess_=True)   # default HTML path under cwd
    assert r.returncode == 0
    assert (tmp_path / "lorascope-report" / "stopped.html").is_file()
    assert tree_digest(stopped_run) == before
    r = lorascope("analyze", stopped_run, "--html", stopped_run / "r.html")
    assert r.returncode == 2 and "inside the run directory" in r.stderr
    assert tree_digest(stopped_run) == before


def test_text_output_is_plain_when_not_a_terminal(stopped_run):
    r = lorascope("analyze", stopped_run, "--no-html")
    assert "\x1b[" not in r.stdout
    assert "verdict: WARNING" in r.stdout and "[run.incomplete]" in r.stdout


def test_usage_error_is_exit_2():
    r = lorascope("analyze")
    assert r.returncode == 2
    r = lorascope("analyze", ".", "--format", "yaml")
    assert r.returncode == 2


def test_rules_command_lists_every_contract_id():
    r = lorascope("rules", "--format", "json")
    assert r.returncode == 0
    ids = {x["id"] for x in json.loads(r.stdout)["rules"]}
    assert "loss.spike" in ids and "run.incomplete" in ids


def _pid_of_worker(args):
    """Stands in for the per-run work: says which process took the run."""
    import os
    return args[0], None, None, str(os.getpid()), None, None


def test_jobs_workers_start_once_and_take_many_runs(monkeypatch):
    """`--jobs 2` over eight runs: two worker processes, each analysing several runs
    (not a process per run), and the results come back in the runs' order."""
    import os

    from lorascope import cli
    monkeypatch.setattr(cli, "_analyze_one", _pid_of_worker)
    tasks = [(f"run{i}", None, None, False, None) for i in range(8)]
    results = cli._run_pool(tasks, 2)
    assert [r[0] for r in results] == [f"run{i}" for i in range(8)]
    pids = [r[3] for r in results]
    assert str(os.getpid()) not in pids
    assert 1 <= len(set(pids)) <= 2 and len(set(pids)) < len(pids)
