"""The batch and the report files: a folder name that is a `javascript:` URL, runs whose
names collide (`a/run`, `b/run`, a run called `index`), names too long for the file
system, one poisoned run among good ones, and `--html` pointing somewhere it must not
write (a folder, a file of the run through a hard link, inside the run, nowhere)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from helpers import lorascope, tree_digest
from hostile.util import base_run, strict_json

pytestmark = pytest.mark.timeout(300)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine")
    pw = pytest.importorskip("playwright.sync_api")
    with pw.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield b
        b.close()


def diverging_run(d: Path) -> Path:
    """A run that fails (the loss diverges): its report differs from a healthy one's."""
    from helpers import write_trainer_state
    hist = [{"step": s, "loss": 2.0 / s + (0 if s < 20 else (s - 20) * 0.8), "learning_rate": 1e-3,
             "grad_norm": 1.0} for s in range(1, 41)]
    write_trainer_state(d, hist, max_steps=40, global_step=40, logging_steps=1)
    return d


# -- 2. the index page never runs a script from a folder name ---------------------------

@pytest.mark.slow
def test_javascript_folder_name_is_a_plain_relative_link(browser, tmp_path):
    runs = [base_run(tmp_path / "javascript:alert(document.domain)"),
            diverging_run(tmp_path / "javascript:document.title='pwned'")]
    out = tmp_path / "rep"
    r = lorascope("analyze", *runs, "--format", "json", "--html", out)
    assert r.returncode == 1, r.stderr
    index = out / "index.html"
    page = browser.new_page()
    dialogs, problems = [], []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(index.as_uri())
    links = page.locator("a")
    assert links.count() == 2
    for i in range(2):
        href = links.nth(i).get_attribute("href")
        assert href.startswith("./") and ":" not in href, href
    # each link opens a report file (not a script), the one for its own run (the index
    # ranks the runs, failures first: the link is found by its run's name)
    for run in runs:
        page.goto(index.as_uri())
        page.locator("#runs-table a", has_text=run.name).click()
        page.wait_for_load_state("load")
        assert page.url.startswith("file://") and page.url.endswith(".html"), page.url
        assert run.name in page.locator("#verdict").inner_text()
    assert dialogs == [] and page.title() != "pwned", dialogs
    # the policy itself refuses javascript: navigation, whatever a link becomes
    page.goto(index.as_uri())
    csp = []
    page.on("console", lambda m: csp.append(m.text))
    page.evaluate("""() => { const a = document.createElement('a');
        a.href = "javascript:document.title='pwned'"; document.body.appendChild(a); a.click(); }""")
    page.wait_for_timeout(300)
    assert page.title() != "pwned", "the page's policy allows javascript: URLs"
    assert any("Content Security Policy" in m for m in csp), csp
    # the page's own script still works under that policy: the table sorts
    page.locator("th").first.click()
    assert problems == [], problems
    page.close()


# -- 3. report names are unique, safe and deterministic -----------------------------

def test_same_named_runs_and_a_run_called_index_keep_their_own_reports(tmp_path):
    a = base_run(tmp_path / "a" / "run")
    b = diverging_run(tmp_path / "b" / "run")
    idx = base_run(tmp_path / "index")
    upper = base_run(tmp_path / "c" / "RUN")              # case-insensitive file systems
    out = tmp_path / "rep"
    args = ["analyze", a, b, idx, upper, "--format", "json", "--html", out]
    r = lorascope(*args)
    assert r.returncode == 1, r.stderr
    reports = sorted(p.name for p in out.glob("*.html"))
    assert len(reports) == 5 and "index.html" in reports, reports
    assert len({n.casefold() for n in reports}) == 5
    page = (out / "index.html").read_text()
    assert "runs compared" in page
    # each run's report is its own: the failed run's page says FAILED, the others not
    verdicts = {}
    for n in reports:
        if n == "index.html":
            continue
        text = (out / n).read_text()
        for run in (a, b, idx, upper):
            if f"— {run}</h1>" in text:
                verdicts[str(run)] = "FAILED" in text.split("</h1>")[0]
    assert verdicts == {str(a): False, str(b): True, str(idx): False, str(upper): False}, verdicts
    # the same arguments give the same names
    shutil.rmtree(out)
    lorascope(*args)
    assert sorted(p.name for p in out.glob("*.html")) == reports


def test_names_too_long_or_odd_for_the_file_system(tmp_path):
    long = base_run(tmp_path / ("é" * 120 + "x" * 12))       # 252 bytes: NAME_MAX with .html is not
    odd = base_run(tmp_path / "..\\con:*?<>|\"'\x01\u202e")
    r = lorascope("analyze", long, "--format", "json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    strict_json(r.stdout)
    written = list((tmp_path / "lorascope-report").glob("*.html"))
    assert len(written) == 1 and len(written[0].name.encode()) <= 255
    r = lorascope("analyze", long, odd, "--format", "json", "--html", tmp_path / "rep")
    assert r.returncode == 0, r.stderr
    names = [p.name for p in (tmp_path / "rep").glob("*.html")]
    assert len(names) == 3, names
    for n in names:
        assert not n.startswith(".") and all(c not in n for c in "\\:*?<>|\"'\x01\u202e"), n


# -- 4. one poisoned run does not lose the batch ----------------------------------------

def poisoned_run(d: Path) -> Path:
    """An LLM run (LLaMA-Factory layout) whose JSONL text dataset holds deeply nested
    lines, and whose other JSON files are nested just below and far above Python's
    recursion limit."""
    base_run(d)
    (d / "data").mkdir()
    deep = "[" * 100_000 + "]" * 100_000
    (d / "data" / "train.jsonl").write_text('{"text": "fine"}\n' + deep + "\n" + '{"text": "also fine"}\n'
                                            + '{"text": ' + "[" * 950 + "]" * 950 + "}\n")
    (d / "data" / "dataset_info.json").write_text('{"train": {"file_name": "train.jsonl"}}')
    (d / "train_config.yaml").write_text("stage: sft\nfinetuning_type: lora\ndataset: train\n"
                                         "dataset_dir: data\nlearning_rate: 1.0e-4\n")
    (d / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16, "target_modules": '
                                           + "[" * 900 + "]" * 900 + "}")
    (d / "trainer_log.jsonl").write_text('{"current_steps": 1, "loss": 0.5, "x": ' + "[" * 990 + "]" * 990 + "}\n"
                                         + '{"current_steps": 2, "loss": ' + "[" * 90_000 + "}\n")
    (d / "all_results.json").write_text('{"train_loss": ' + "{\"a\":" * 950 + "1" + "}" * 950 + "}")
    (d / "checkpoint-40").mkdir()
    (d / "checkpoint-40" / "trainer_state.json").write_text(
        '{"global_step": ' + "[" * 950 + "]" * 950 + ', "log_history": [' + "[" * 5000 + "]" * 5000 + "]}")
    return d


def test_deeply_nested_json_is_a_problem_of_its_source(tmp_path):
    run = poisoned_run(tmp_path / "poisoned")
    r = lorascope("analyze", run, "--format", "json", "--no-html")
    assert r.returncode in (0, 1), r.stderr
    doc = strict_json(r.stdout)
    probs = {s["path"]: s["problems"] for s in doc["run"]["sources"]}
    for name in ("train.jsonl", "adapter_config.json", "trainer_log.jsonl", "all_results.json",
                 "checkpoint-40/trainer_state.json"):
        got = [p for path, ps in probs.items() if path.endswith(name) for p in ps]
        assert any("nested" in p for p in got), (name, probs)
    # the rest of the run is read: its healthy curve, the dataset's good records
    assert doc["run"]["steps"]["last"] == 40
    ds = next(s for s in doc["run"]["sources"] if s["path"].endswith("train.jsonl"))
    assert ds["records"] >= 2


def test_a_poisoned_run_in_a_parallel_batch(tmp_path):
    runs = [base_run(tmp_path / "r0"), diverging_run(tmp_path / "r1"),
            poisoned_run(tmp_path / "poisoned"), base_run(tmp_path / "r2")]
    r = lorascope("analyze", *runs, "--format", "json", "--jobs", "2", "--html", tmp_path / "rep",
                  subprocess_=True)
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    assert r.returncode == 1, r.stderr
    doc = strict_json(r.stdout)
    assert [d["run"]["path"] for d in doc["reports"]] == [str(p) for p in runs]


def test_a_run_that_crashes_the_analysis_or_its_worker(tmp_path, monkeypatch):
    """A bug in one run's analysis (an exception), or a worker killed under it (the OOM
    killer): that run is listed under `errors`, every other run is reported."""
    import signal
    import lorascope.pipeline as an
    real = an.build_folder

    def build_folder(run_dir, **kw):
        if "buggy" in str(run_dir):
            raise RuntimeError("a bug in the analysis")
        if "killer" in str(run_dir):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(run_dir, **kw)
    monkeypatch.setattr(an, "build_folder", build_folder)
    runs = [base_run(tmp_path / "r0"), base_run(tmp_path / "buggy"), diverging_run(tmp_path / "r1"),
            base_run(tmp_path / "killer"), base_run(tmp_path / "r2")]
    for jobs in ("1", "2"):
        args = ["analyze", *runs, "--format", "json", "--jobs", jobs, "--html", tmp_path / f"rep{jobs}"]
        if jobs == "1":
            args.remove(runs[3])                 # a kill in-process would end the test itself
        r = lorascope(*args)
        assert r.returncode == 2, r.stderr       # a RUN_DIR could not be analysed
        doc = strict_json(r.stdout)
        assert doc["schema"] == "lorascope.batch/1"
        assert [d["run"]["path"] for d in doc["reports"]] == [str(runs[i]) for i in (0, 2, 4)]
        errs = {e["path"]: e["error"] for e in doc["errors"]}
        assert "a bug in the analysis" in errs[str(runs[1])]
        if jobs == "2":
            assert "died" in errs[str(runs[3])], errs
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert all(ln.startswith("lorascope: ") for ln in lines) and len(lines) == len(errs), r.stderr
        page = (tmp_path / f"rep{jobs}" / "index.html").read_text()
        assert "could not be analysed" in page and "buggy" in page


# -- 9. writing the report never costs the analysis, never touches the run --------------

def _findings_printed_and_exit_2(r, why: str):
    assert r.returncode == 2, (r.returncode, r.stderr)
    doc = strict_json(r.stdout)
    assert doc["schema"] == "lorascope.report/1"
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("lorascope: ") and why in lines[0], r.stderr
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr
    return doc


def test_html_naming_a_folder_a_file_path_or_nowhere(tmp_path):
    run = diverging_run(tmp_path / "run")
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("x")
    for target, why in ((tmp_path / "folder", "directory"), (tmp_path / "afile" / "r.html", "directory"),
                        (tmp_path / ("x" * 300 + ".html"), "too long")):
        r = lorascope("analyze", run, "--format", "json", "--html", target)
        doc = _findings_printed_and_exit_2(r, why)
        assert doc["verdict"] == "failed"
    # text format: the findings too
    r = lorascope("analyze", run, "--html", tmp_path / "folder")
    assert r.returncode == 2 and "verdict: FAILED" in r.stdout
    # several runs, --html naming a file: the runs are still reported
    r = lorascope("analyze", run, base_run(tmp_path / "other"), "--format", "json", "--html", tmp_path / "afile")
    assert r.returncode == 2 and len(strict_json(r.stdout)["reports"]) == 2
    assert (tmp_path / "afile").read_text() == "x"


def test_html_never_writes_through_a_hard_link_into_the_run(tmp_path):
    run = diverging_run(tmp_path / "run")
    base_run(run / "checkpoint-40")
    before = tree_digest(run)
    (tmp_path / "out").mkdir()
    victim = run / "checkpoint-40" / "trainer_state.json"
    link = tmp_path / "out" / "report.html"
    os.link(victim, link)
    r = lorascope("analyze", run, "--format", "json", "--html", link)
    _findings_printed_and_exit_2(r, "same file")
    soft = tmp_path / "out" / "soft.html"
    soft.symlink_to(run / "trainer_state.json")
    r = lorascope("analyze", run, "--format", "json", "--html", soft)
    _findings_printed_and_exit_2(r, "inside the run directory")
    r = lorascope("analyze", run, "--format", "json", "--html", run / "sub" / "r.html")
    _findings_printed_and_exit_2(r, "inside the run directory")
    assert tree_digest(run) == before
    assert json.loads(link.read_text())["global_step"] == 40
