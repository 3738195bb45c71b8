"""The HTML post-mortem, opened in a real headless Chromium (Debian's `chromium`)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import FIXTURES, ROOT, fixture_run, lorascope, write_trainer_state

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine (scripts/test.sh installs Debian's as root)")
    pw = pytest.importorskip("playwright.sync_api")
    with pw.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


def open_report(browser, html: Path, shot: str | None = None):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("request", lambda r: problems.append(f"network request: {r.url}")
            if not r.url.startswith(("file:", "data:")) else None)
    page.goto(html.as_uri())
    page.wait_for_load_state("load")
    if shot:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / shot))
    return page, problems


def _fixture_runs():
    return sorted(p.name for p in FIXTURES.iterdir() if p.is_dir()) if FIXTURES.is_dir() else []


@pytest.mark.parametrize("name", _fixture_runs() or ["(no fixtures)"])
def test_fixture_report_renders_and_tells_the_story(browser, tmp_path, name):
    run = fixture_run(name)
    html = tmp_path / f"{name}.html"
    r = lorascope("analyze", run, "--format", "json", "--html", html)
    assert r.returncode in (0, 1), r.stderr
    doc = json.loads(r.stdout)
    page, problems = open_report(browser, html, shot=f"report-{name}.png")
    assert problems == []
    banner = page.locator("#verdict")
    assert banner.is_visible() and doc["verdict"].upper() in banner.inner_text()
    assert page.locator("#findings .finding").count() == len(doc["findings"])
    if any(s["role"] in ("train_loss", "eval_loss") for s in doc["series"]):
        # the interactive chart replaced the static picture
        chart = page.locator("#chart-loss .uplot canvas").first
        assert chart.is_visible() and chart.bounding_box()["height"] > 150
        assert page.locator("#timeline svg.static").count() == 0
    if doc["verdict"] == "failed":
        # the failing step and the fix are visible without scrolling
        diag = page.locator("#diagnosis")
        box = diag.bounding_box()
        assert diag.is_visible() and box["y"] + box["height"] <= 900
        main = next(f for f in doc["findings"] if f["severity"] == "critical")
        if main["step"] is not None:
            assert str(main["step"]) in diag.inner_text()
        for k in main["fix"]:
            assert k in diag.inner_text()
    page.close()


def test_strings_from_files_are_escaped(browser, tmp_path):
    """A tag, a config value and a file name carrying markup are shown as text."""
    from torch.utils.tensorboard import SummaryWriter
    run = tmp_path / "evil"
    w = SummaryWriter(str(run / "logs"))
    for s in range(1, 41):
        w.add_scalar("loss", 1.0 / s + 0.1, s)
        w.add_scalar("<img src=x onerror=\"document.title='pwned'\">", 1.0, s)
    w.close()
    (run / "train.log").write_text("<script>document.title='pwned'</script>\nCUDA out of memory. "
                                   "<b onmouseover=alert(1)>x</b>\n")
    html = tmp_path / "evil.html"
    r = lorascope("analyze", run, "--html", html)
    assert r.returncode in (0, 1), r.stderr
    text = html.read_text()
    assert "<script>document.title" not in text and "<img src=x" not in text
    page, problems = open_report(browser, html)
    assert page.title() != "pwned" and problems == []
    assert "<img src=x" in page.locator("#series").inner_text()
    page.close()


def test_long_run_report_stays_small(tmp_path):
    """100k logged steps with one NaN and one spike: the page stays under 1 MB (curves
    are reduced min/max-preserving, not dumped), and the reduced curve still holds the
    spike's value and a gap at the NaN's step."""
    n = 100_000
    steps = np.arange(1, n + 1)
    rng = np.random.default_rng(0)
    loss = 2.0 * np.exp(-steps / 20000) + 0.3 + 0.02 * rng.standard_normal(n)
    loss[61_234] = 9.5                                   # one logged spike, at step 61235
    hist = [{"step": int(s), "epoch": float(s) / 25000, "loss": round(float(v), 4),
             "learning_rate": 1e-4, "grad_norm": 0.5} for s, v in zip(steps, loss)]
    hist[43_210]["loss"] = float("nan")                  # one NaN, at step 43211
    run = tmp_path / "long"
    write_trainer_state(run, hist, max_steps=n, global_step=n, logging_steps=1)
    html = tmp_path / "long.html"
    r = lorascope("analyze", run, "--html", html, "--fail-on", "never")
    assert r.returncode == 0, r.stderr
    size = html.stat().st_size
    assert size < 1_000_000, size
    data = chart_data(html.read_text())
    marks = data["groups"][0]["markers"]
    train = next(s for s in data["groups"][0]["charts"][0]["series"] if s["role"] == "train_loss")
    shown = dict(zip(train["x"], train["y"]))
    assert len(train["x"]) < 5000
    assert shown[61_235] == pytest.approx(9.5) and max(y for y in train["y"] if y is not None) == pytest.approx(9.5)
    assert 43_211 in shown and shown[43_211] is None and 43_211 in marks["nonfinite"]
    assert "<svg" in html.read_text()                    # the picture for readers without JavaScript


def chart_data(page: str) -> dict:
    """The JSON block a page draws its charts from."""
    import re
    m = re.search(r'<script type="application/json" id="chart-data">(.*?)</script>', page, re.S)
    return json.loads(m.group(1))


# -- interacting with the charts ------------------------------------------------------------

def long_diverging_run(d: Path, n: int = 20_000, at: int = 13_337) -> dict:
    """A 20k-step run (trainer_state.json by transformers' TrainerState) whose loss
    diverges from step ``at``; returns {step: logged loss}."""
    rng = np.random.default_rng(1)
    steps = np.arange(1, n + 1)
    loss = 2.0 * np.exp(-steps / 3000) + 0.4 + 0.01 * rng.standard_normal(n)
    loss[at - 1:] += np.linspace(0, 6, n - at + 1)
    hist = [{"step": int(s), "epoch": float(s) / 5000, "loss": round(float(v), 5), "learning_rate": 2e-4,
             "grad_norm": round(float(0.5 + 0.1 * rng.random()), 4)} for s, v in zip(steps, loss)]
    write_trainer_state(d, hist, max_steps=n, global_step=n, logging_steps=1)
    return {h["step"]: h["loss"] for h in hist}


def _x_px(page, chart: str, step: float) -> float:
    return page.evaluate(f"s => window.lorascope.charts['{chart}'].valToPos(s, 'x')", step)


def _x_range(page, chart: str) -> list[float]:
    return page.evaluate(f"() => {{ const x = window.lorascope.charts['{chart}'].scales.x; return [x.min, x.max]; }}")


def test_drag_zoom_to_the_diagnosed_step_and_read_the_logged_value(browser, tmp_path):
    run = tmp_path / "long-diverge"
    logged = long_diverging_run(run)
    html = tmp_path / "r.html"
    r = lorascope("analyze", run, "--format", "json", "--html", html)
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    main = next(f for f in doc["findings"] if f["severity"] == "critical" and f["step"] is not None)
    d = main["step"]
    page, problems = open_report(browser, html)
    over = page.locator("#chart-loss .u-over").bounding_box()
    y = over["y"] + over["height"] / 2
    # drag across 80 steps around the diagnosed one: the chart zooms to them
    page.mouse.move(over["x"] + _x_px(page, "loss", d - 40), y)
    page.mouse.down()
    page.mouse.move(over["x"] + _x_px(page, "loss", d + 40), y, steps=8)
    page.mouse.up()
    lo, hi = _x_range(page, "loss")
    assert d - 60 <= lo < d < hi <= d + 60 and hi - lo < 120, (lo, hi, d)     # (snapped to drawn points)
    # every logged step of the window is on the chart (full resolution at the failure),
    # and the gradient-norm chart below followed the zoom
    xs = page.evaluate("() => window.lorascope.charts.loss.data[0]")
    assert [x for x in xs if lo <= x <= hi] == list(range(int(np.ceil(lo)), int(hi) + 1))
    assert _x_range(page, "grad") == pytest.approx([lo, hi])
    # hover at the diagnosed step: the read-out names the step and the value the trainer logged
    page.mouse.move(over["x"] + _x_px(page, "loss", d), y)
    legend = page.locator("#chart-loss .u-legend .u-series")
    assert legend.nth(0).locator(".u-value").inner_text() == str(d)
    names = [legend.nth(i).locator(".u-label").inner_text() for i in range(legend.count())]
    shown = legend.nth(names.index("loss")).locator(".u-value").inner_text()
    assert float(shown) == pytest.approx(logged[d], rel=1e-4), (shown, logged[d])
    assert f"diagnosed step at step {d}" in page.locator("#chart-loss .readout").inner_text()
    # double-click: back to the whole run
    page.mouse.dblclick(over["x"] + _x_px(page, "loss", d), y)
    lo, hi = _x_range(page, "loss")
    assert lo <= 1 and hi >= 20_000
    assert problems == [], problems
    page.close()


def test_series_toggle_and_log_scale(browser, tmp_path):
    run = fixture_run("hf-lr-diverge")
    html = tmp_path / "r.html"
    lorascope("analyze", run, "--html", html)
    page, problems = open_report(browser, html)
    legend = page.locator("#chart-loss .u-legend .u-series")
    labels = [legend.nth(i).locator(".u-label").inner_text() for i in range(legend.count())]
    assert labels[:4] == ["step", "train/loss", "eval/loss", "train/learning_rate"], labels
    shown = "i => window.lorascope.charts.loss.series[i].show"
    legend.nth(2).locator(".u-label").click()              # hide the eval loss
    assert page.evaluate(shown, 2) is False and "u-off" in legend.nth(2).get_attribute("class")
    assert page.evaluate(shown, 1) is True
    # the log scale re-draws the chart: log y axis, the hidden series stays hidden
    page.locator("#timeline .chart-tools input[data-role=log]").first.check()
    assert page.evaluate("() => window.lorascope.charts.loss.scales.y.distr") == 3
    assert page.evaluate(shown, 2) is False
    page.locator("#chart-loss .u-legend .u-series").nth(2).locator(".u-label").click()   # and back
    assert page.evaluate(shown, 2) is True
    # the markers the report draws are listed in the key, and drawn: hovering a checkpoint names it
    over = page.locator("#chart-loss .u-over").bounding_box()
    page.mouse.move(over["x"] + _x_px(page, "loss", 50), over["y"] + 20)
    assert "checkpoint at step 50" in page.locator("#chart-loss .readout").inner_text()
    assert problems == [], problems
    page.close()


def test_without_javascript_the_verdict_findings_and_fix_show(browser, tmp_path):
    run = fixture_run("hf-lr-diverge")
    html = tmp_path / "r.html"
    doc = json.loads(lorascope("analyze", run, "--format", "json", "--html", html).stdout)
    ctx = browser.new_context(java_script_enabled=False, viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    page.goto(html.as_uri())
    assert "FAILED" in page.locator("#verdict").inner_text()
    diag = page.locator("#diagnosis")
    assert diag.is_visible() and "34" in diag.inner_text() and "learning_rate" in diag.inner_text()
    assert page.locator("#findings .finding").count() == len(doc["findings"])
    static = page.locator("#timeline svg.static")
    assert static.is_visible() and static.bounding_box()["height"] > 100
    ctx.close()


# -- the sweep index -------------------------------------------------------------------------

def sweep_run(d: Path, lr: float, rank: int, diverge: bool = False, n: int = 200) -> Path:
    """A run's trainer state (transformers' TrainerState) and PEFT adapter config."""
    from peft import LoraConfig
    rng = np.random.default_rng(len(str(d)))
    hist = []
    for s in range(1, n + 1):
        loss = 2.0 * np.exp(-s / 50) + 0.3 + 0.02 * rng.standard_normal()
        if diverge and s > 120:
            loss += (s - 120) * 0.05
        hist.append({"step": s, "epoch": s / 100, "loss": round(float(loss), 4), "learning_rate": lr,
                     "grad_norm": 1.0})
    write_trainer_state(d, hist, max_steps=n, global_step=n, logging_steps=1)
    LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"]).save_pretrained(str(d))
    return d


def test_sweep_index_ranks_compares_sorts_and_filters(browser, tmp_path):
    runs = [sweep_run(tmp_path / "lr1e-4-r8", 1e-4, 8), sweep_run(tmp_path / "lr2e-4-r16", 2e-4, 16),
            sweep_run(tmp_path / "lr1e-2-r64", 1e-2, 64, diverge=True),
            sweep_run(tmp_path / "lr1.5e-4-r64", 1.5e-4, 64)]
    out = tmp_path / "rep"
    r = lorascope("analyze", *runs, "--format", "json", "--html", out)
    assert r.returncode == 1, r.stderr
    page, problems = open_report(browser, out / "index.html", shot="sweep-index.png")
    # ranked: the failed run first, whatever the argument order
    table = page.locator("#runs-table tbody tr")
    assert table.count() == 4
    assert "lr1e-2-r64" in table.nth(0).inner_text() and "FAILED" in table.nth(0).inner_text()
    # the settings that differ, the failed run's telling values marked: its learning rate
    # (no run that did not fail has one as high); its rank 64 is not (a healthy run has it)
    heads = page.locator("#settings-table thead tr").first.locator("th").all_inner_texts()
    assert "lr" in heads and "rank" in heads and "alpha" in heads, heads
    failed_row = page.locator("#settings-table tbody tr").nth(0)
    marked = failed_row.locator("td.marked")
    assert marked.count() == 1 and marked.inner_text() == "0.01"
    assert page.locator("#settings-table td.marked").count() == 1
    # every column sorts: by lr, ascending, then descending
    lr_col = heads.index("lr")
    page.locator("#settings-table thead tr").first.locator("th").nth(lr_col).click()
    col = [float(t) for t in page.locator(f"#settings-table tbody tr td:nth-child({lr_col + 1})").all_inner_texts()]
    assert col == sorted(col) and len(col) == 4
    page.locator("#settings-table thead tr").first.locator("th").nth(lr_col).click()
    col = [float(t) for t in page.locator(f"#settings-table tbody tr td:nth-child({lr_col + 1})").all_inner_texts()]
    assert col == sorted(col, reverse=True)
    # ... and filters: a number comparison, then a word
    rank_col = heads.index("rank")
    page.locator("#settings-table tr.filter-row input").nth(rank_col).fill(">=16")
    visible_rows = [t for t in page.locator("#settings-table tbody tr:visible").all_inner_texts()]
    assert len(visible_rows) == 3 and not any("lr1e-4-r8" in t for t in visible_rows)
    page.locator("#runs-table tr.filter-row input").nth(2).fill("fail")
    assert page.locator("#runs-table tbody tr:visible").count() == 1
    # the loss curves overlaid, one toggle per run; "failed only"; normalised
    u = "window.lorascope.charts.sweep"
    assert page.evaluate(f"() => {u}.series.length") == 5
    page.locator("#curves .chart-tools button[data-role=failed]").click()
    shown = page.evaluate(f"() => {u}.series.slice(1).map(s => s.show)")
    assert shown == [True, False, False, False]              # the failed run is ranked first
    legend = page.locator("#chart-sweep .u-legend .u-series")
    legend.nth(2).locator(".u-label").click()
    assert page.evaluate(f"() => {u}.series[2].show") is True
    page.locator("#curves .chart-tools input[data-role=norm]").check()
    top = page.evaluate(f"() => Math.max(...{u}.data.slice(1).flat().filter(v => v != null))")
    assert top < 3                                          # each run's 2nd-98th percentile is 0-1
    assert problems == [], problems
    page.close()


def test_notebook_view_shows_the_report_in_a_sandboxed_frame(browser, tmp_path):
    """`lorascope.analyze(path)._repr_html_()` as Jupyter shows it: the verdict as plain
    HTML, the interactive page in a sandboxed frame whose charts draw."""
    import lorascope
    run = fixture_run("hf-lr-diverge")
    fragment = lorascope.analyze(run)._repr_html_()
    nb = tmp_path / "notebook.html"
    nb.write_text(f"<!doctype html><meta charset=utf-8><body>{fragment}</body>", encoding="utf-8")
    page, problems = open_report(browser, nb)
    assert "FAILED" in page.locator("body > div").first.inner_text()
    frame = page.frame_locator("iframe")
    assert "FAILED" in frame.locator("#verdict").inner_text()
    assert frame.locator("#chart-loss .uplot canvas").first.is_visible()
    assert problems == [], problems
    page.close()
