"""The report's sample strips: each prompt's samples across the run, flagged ones outlined.

Thumbnails are the ones decoded once at ingestion (``SampleImage.thumb``, JPEG, 96 px),
embedded as data URIs; nothing is re-read except, for memorised samples, the training
image each copies (decoded with the dataset reader's guarantees, only inside the run
directory or the dataset folder, at most ``MAX_PAIRS`` of them).  The table is bounded:
at most ``MAX_STRIPS`` prompts (those with flagged samples first) and ``MAX_COLUMNS`` sample
steps (evenly spaced, every step a finding names kept).
"""
from __future__ import annotations

import base64
import io
from pathlib import Path

from lorascope import imagesim

MAX_STRIPS = 16
MAX_COLUMNS = 14
MAX_PAIRS = 8
TRAIN_THUMB = 96


def _uri(jpeg: bytes | None) -> str | None:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode() if jpeg else None


def _train_thumb(run, name: str) -> str | None:
    from PIL import Image

    from lorascope.ingest.dataset import decode_image
    run_dir = Path(run.path).resolve()
    roots = [run_dir] + [Path(ds.root).resolve() for ds in run.datasets if ds.kind == "images"]
    p = (run_dir / name).resolve()
    if not any(r == p.parent or r in p.parents for r in roots) or not p.is_file():
        return None
    _w, _h, err, _fmt, im = decode_image(str(p), (TRAIN_THUMB, TRAIN_THUMB))
    if im is None or err:
        return None
    try:
        im = im.convert("RGB")
        im.thumbnail((TRAIN_THUMB, TRAIN_THUMB), Image.BOX)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=75)
    except Exception:  # noqa: BLE001 - no thumbnail rather than no report
        return None
    return _uri(buf.getvalue())


def _columns(steps: list[int], keep: set[int]) -> list[int]:
    if len(steps) <= MAX_COLUMNS:
        return steps
    n = MAX_COLUMNS - min(len(keep), MAX_COLUMNS // 2)
    idx = {round(i * (len(steps) - 1) / max(1, n - 1)) for i in range(n)}
    cols = {steps[i] for i in idx} | set(sorted(keep)[:MAX_COLUMNS // 2])
    return sorted(cols)


def sample_section(run, findings) -> dict | None:
    """What the template's sample strips show, or None when the run has no samples."""
    strips = imagesim.strips(run.samples)
    if not strips:
        return None
    flags: dict[str, list[str]] = {}
    pairs: dict[str, str] = {}
    keep_steps: set[int] = set()
    for f in findings:
        if not f.rule.startswith("sample."):
            continue
        for name in f.extra.get("flagged", []):
            flags.setdefault(name, []).append(f.rule)
        for s, t in f.extra.get("pairs", []):
            pairs.setdefault(s, t)
        if f.step is not None:
            keep_steps.add(int(f.step))
        if f.step_range:
            keep_steps.update(int(x) for x in f.step_range)
    cols = _columns(imagesim.sample_steps(strips), keep_steps)
    shown = sorted(strips, key=lambda st: not any(s.file in flags for s in st.samples))[:MAX_STRIPS]
    shown.sort(key=lambda st: strips.index(st))
    train_uri: dict[str, str | None] = {}
    rows = []
    for st in shown:
        at = {s.step: s for s in st.samples}
        cells = []
        for c in cols:
            s = at.get(c)
            if s is None:
                cells.append(None)
                continue
            copy = None
            if s.file in pairs:
                t = pairs[s.file]
                if t not in train_uri and len(train_uri) < MAX_PAIRS:
                    train_uri[t] = _train_thumb(run, t)
                copy = {"file": t, "src": train_uri.get(t)}
            cells.append({"file": s.file, "src": _uri(s.thumb), "flags": flags.get(s.file, []),
                          "error": s.error, "blank": s.blank, "copy": copy, "step": s.step})
        rows.append({"label": st.label, "prompt": st.prompt, "cells": cells})
    memorised = [{"sample": c, "train": c["copy"]} for r in rows for c in r["cells"]
                 if c and c["copy"] and c["copy"]["src"]][:MAX_PAIRS]
    return {"steps": cols, "rows": rows, "total": len(run.samples), "strips": len(strips),
            "hidden_strips": len(strips) - len(shown),
            "hidden_steps": len(imagesim.sample_steps(strips)) - len(cols), "pairs": memorised}
