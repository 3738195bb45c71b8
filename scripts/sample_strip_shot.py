"""Screenshot of one report section (the README's sample strip): a real headless Chromium
(Debian's), the element `#samples` of a report written by `lorascope analyze --html`.

    .venv/bin/python scripts/sample_strip_shot.py REPORT.html docs/img/samples-strip.png
"""
import shutil
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

report, target = Path(sys.argv[1]).resolve(), sys.argv[2]
with sync_playwright() as p:
    b = p.chromium.launch(executable_path=shutil.which("chromium"),
                          args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
    page = b.new_page(viewport={"width": 1200, "height": 900})
    page.goto(report.as_uri())
    page.locator(sys.argv[3] if len(sys.argv) > 3 else "#samples").screenshot(path=target)
    b.close()
