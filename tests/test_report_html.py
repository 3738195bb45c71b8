"""The HTML post-mortem, opened in a real headless Chromium (Debian's `chromium`)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import FIXTURES, ROOT, lorascope, write_trainer_state

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
    run = FIXTURES / name
    if not run.is_dir():
        pytest.skip("fixtures not generated")
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
        chart = page.locator("#timeline svg.chart")
        assert chart.is_visible() and chart.bounding_box()["height"] > 150
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
    """100k logged steps: the page stays under 3 MB (charts are reduced, not dumped)."""
    n = 100_000
    steps = np.arange(1, n + 1)
    rng = np.random.default_rng(0)
    loss = 2.0 * np.exp(-steps / 20000) + 0.3 + 0.02 * rng.standard_normal(n)
    hist = [{"step": int(s), "epoch": float(s) / 25000, "loss": round(float(v), 4),
             "learning_rate": 1e-4, "grad_norm": 0.5} for s, v in zip(steps, loss)]
    run = tmp_path / "long"
    write_trainer_state(run, hist, max_steps=n, global_step=n, logging_steps=1)
    html = tmp_path / "long.html"
    r = lorascope("analyze", run, "--html", html, "--fail-on", "never")
    assert r.returncode == 0, r.stderr
    assert html.stat().st_size < 3_000_000
    assert "<svg" in html.read_text()
