#!/usr/bin/env bash
# Regenerate the README's terminal output and report screenshots from the bundled fixtures
# (the report pages draw their charts with their own inline script: the screenshots show
# the interactive charts as a browser draws them).
# Needs the test set-up (bash scripts/test.sh installs chromium as root).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
for run in hf-lr-diverge sd-bad-metadata; do
  .venv/bin/lorascope analyze "fixtures/runs/$run" --html "$out/$run.html" > "$out/$run.txt" || true
  chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
    --disable-component-update --disable-sync --no-first-run --user-data-dir="$out/chrome" \
    --hide-scrollbars --window-size=1280,900 --screenshot="docs/img/report-$run.png" \
    "file://$out/$run.html" 2>/dev/null
done
# the sample strips of a memorising SD run (one element of the page, through playwright)
.venv/bin/lorascope analyze fixtures/runs/sd-samples-memorize --html "$out/samples.html" > /dev/null || true
.venv/bin/python scripts/sample_strip_shot.py "$out/samples.html" docs/img/report-samples-strip.png
# the sweep index of the HF fixtures (failures first, the loss curves overlaid, the
# settings that differ with the failed runs' telling values marked): the whole page
.venv/bin/lorascope analyze fixtures/runs/hf-* --html "$out/sweep" > /dev/null || true
.venv/bin/python scripts/sample_strip_shot.py "$out/sweep/index.html" docs/img/report-sweep-index.png body
cat "$out/hf-lr-diverge.txt"
