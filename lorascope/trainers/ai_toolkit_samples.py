"""ostris ai-toolkit: how its training jobs name their sample images and where their
prompts are.  (Only the samples; the rest of ai-toolkit's layout belongs in its trainer
module.)

Checked against ostris/ai-toolkit (commit 27a03a91): ``BaseSDTrainProcess.sample`` writes
to ``<training_folder>/<name>/samples/`` the file ``f"[time]_{step_num}_[count].{ext}"``
with ``step_num = f"_{str(step).zfill(9)}"`` (empty when no step is given), ``[time]`` the
generation time in milliseconds since the epoch and ``[count]`` the prompt's position
(``GenerateImageConfig._get_path_no_ext``; ``save_image_atomic(img, i)`` pads it to the
width of ``max_count`` = 0, i.e. not at all): ``1724085406830__000000500_0.jpg``.  The
extension is ``sample.format`` (default ``jpg``).  ``.tmp/`` and ``.thumbs/`` beside them
hold partial writes and 300 px previews.  The job's whole config is copied to
``<training_folder>/<name>/config.yaml``; its ``config.process[].sample`` holds
``prompts`` (or ``samples: [{prompt, seed, ...}]``), ``seed`` (default 0; -1: a random
seed per image), ``walk_seed`` (seed + i for prompt i), ``neg``.
"""
from __future__ import annotations

import re
from typing import Any

SAMPLE_DIR = "samples"
SAMPLE_NAME_RE = re.compile(r"^(?P<ts>\d{10,16})__(?:(?P<step>\d+)_)?(?P<idx>\d+)\.(?:jpe?g|png|webp)$", re.I)
CONFIG_NAME = "config.yaml"


def sample_name(name: str) -> dict | None:
    """{"step", "index", "written"} from a sample file name, or None."""
    m = SAMPLE_NAME_RE.match(name)
    if m is None:
        return None
    return {"step": int(m.group("step")) if m.group("step") is not None else None,
            "index": int(m.group("idx")), "written": m.group("ts")}


def prompts_from(doc: Any) -> list[dict] | None:
    """The sample prompts of a job config (``config.process[].sample``), each with the
    seed it is drawn with (None: random), or None when the document has none."""
    if not isinstance(doc, dict):
        return None
    cfg = doc.get("config")
    procs = cfg.get("process") if isinstance(cfg, dict) else None
    if not isinstance(procs, list):
        return None
    for proc in procs:
        sample = proc.get("sample") if isinstance(proc, dict) else None
        if not isinstance(sample, dict):
            continue
        raw = sample.get("samples")
        if not isinstance(raw, list):
            raw = [{"prompt": p} for p in sample.get("prompts") or [] if isinstance(p, str)]
        items = [r for r in raw if isinstance(r, dict) and isinstance(r.get("prompt"), str)]
        seed = sample.get("seed", 0)
        seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else 0
        walk = bool(sample.get("walk_seed", False))
        neg = sample.get("neg") if isinstance(sample.get("neg"), str) else None
        out = []
        for i, it in enumerate(items):
            s = seed + i if walk else seed
            own = it.get("seed")
            if isinstance(own, int) and not isinstance(own, bool):
                s = own
            out.append({"prompt": it["prompt"], "negative_prompt": it.get("neg", neg),
                        "seed": None if s == -1 else s,
                        "width": it.get("width", sample.get("width")),
                        "height": it.get("height", sample.get("height"))})
        return out
    return None
