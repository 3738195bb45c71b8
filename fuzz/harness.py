"""Fuzz targets shared by the atheris harnesses (fuzz/fuzz_<parser>.py), the pytest
regression tests (tests/hostile/test_regressions.py) and CI's short fuzz run.

Each target takes the fuzzer's bytes, writes them to a scratch file (parsers read
paths, as they do in a run directory) and calls the parser.  A target fails (raises)
only when the parser breaks its contract: it raised, or what it returned cannot go
into the JSON report (problems must be short strings; the source must serialise with
``allow_nan=False``).  Never imports atheris: importable without it.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

_SCRATCH: Path | None = None


def scratch() -> Path:
    """One private scratch directory per process (tmpfs when there is one)."""
    global _SCRATCH
    if _SCRATCH is None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        base = Path(base or tempfile.gettempdir())
        # libFuzzer ends the process with _exit (no atexit): sweep dirs of dead fuzzers
        for old in base.glob("lorascope-fuzz-*"):
            pid = old.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                shutil.rmtree(old, ignore_errors=True)
        _SCRATCH = base / f"lorascope-fuzz-{os.getpid()}"
        _SCRATCH.mkdir(exist_ok=True)
        import atexit
        atexit.register(shutil.rmtree, _SCRATCH, True)
    return _SCRATCH


def _write(name: str, data: bytes) -> Path:
    p = scratch() / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def _check_source(src) -> None:
    doc = src.to_json()
    json.dumps(doc, allow_nan=False)
    for pr in doc["problems"]:
        assert isinstance(pr, str), f"problem is not a string: {pr!r}"
        assert len(pr) < 2000, f"problem string of {len(pr)} characters"


def _check_parsed(p) -> None:
    _check_source(p.source)
    for r in p.series:
        assert len(r.steps) == len(r.values), f"{r.tag}: steps and values differ in length"
    for cv in p.config:
        json.dumps(cv.value, allow_nan=True)   # a value is plain data (NaN filtered later)


def _split(data: bytes) -> tuple[int, bytes]:
    """First byte picks a variant, the rest is the file."""
    return (data[0] if data else 0), data[1:]


# -- targets ------------------------------------------------------------------------

def tfevents(data: bytes) -> None:
    from lorascope.ingest import tfevents as m
    p = _write("events.out.tfevents.1700000000.fuzz", data)
    _check_parsed(m.parse(p, p.name))
    # the slow, protobuf-only path and the small-window path must agree on not crashing
    _check_parsed(m.parse(p, p.name, fast_path=False, chunk_size=64))


def safetensors(data: bytes) -> None:
    from lorascope.ingest import safetensors as m
    p = _write("adapter_model.safetensors", data)
    _check_parsed(m.parse(p, p.name))


CONFIG_NAMES = ("config.yaml", "config.toml", "adapter_config.json", "training_args.json",
                "dataset_config.toml", "train.yml")


def config(data: bytes) -> None:
    from lorascope.ingest import config as m
    v, body = _split(data)
    p = _write(CONFIG_NAMES[v % len(CONFIG_NAMES)], body)
    _check_parsed(m.parse(p, p.name))


def trainer_state(data: bytes) -> None:
    from lorascope.ingest import trainer_state as m
    p = _write("trainer_state.json", data)
    _check_parsed(m.parse(p, p.name))


def llamafactory(data: bytes) -> None:
    from lorascope.ingest import llamafactory as m
    v, body = _split(data)
    if v % 2:
        p = _write("all_results.json", body)
        _check_parsed(m.parse_results(p, p.name))
    else:
        p = _write("trainer_log.jsonl", body)
        _check_parsed(m.parse(p, p.name))


def textlog(data: bytes) -> None:
    from lorascope.ingest import textlog as m
    v, body = _split(data)
    p = _write(("train.log", "running_log.txt", "logs/stdout.txt")[v % 3], body)
    _check_parsed(m.parse(p, p.name))


def model_config(data: bytes) -> None:
    from lorascope.build import parse_model_config
    p = _write("config.json", data)
    _check_parsed(parse_model_config(p, p.name))


def dataset(data: bytes) -> None:
    """metadata.csv of an image folder (v even) or a JSON/JSONL text dataset (v odd)."""
    from lorascope.ingest import dataset as m
    v, body = _split(data)
    root = scratch() / "ds"
    if v % 2 == 0:
        shutil.rmtree(root, ignore_errors=True)
        (root / "img").mkdir(parents=True)
        (root / "img" / "a.png").write_bytes(_PNG)
        (root / "img" / "metadata.csv").write_bytes(body)
        ds, src = m.load_image_dataset(root / "img", root, jobs=1)
    else:
        root.mkdir(exist_ok=True)
        p = root / ("train.jsonl" if v % 4 == 1 else "train.json")
        p.write_bytes(body)
        ds, src = m.load_text_dataset(p, root, cutoff_len=64)
    _check_source(src)
    for it in ds.items:
        if it.file is not None:
            assert not os.path.isabs(it.file) or it.error, f"absolute path read: {it.file}"


def image(data: bytes) -> None:
    """One image decoded the way the dataset check does (Pillow, bomb limits on)."""
    from lorascope.ingest import dataset as m
    v, body = _split(data)
    p = _write("img" + (".png", ".jpg", ".webp", ".gif", ".bmp", ".tiff")[v % 6], body)
    w, h, err, degen, fmt = m._scan_image(str(p))
    assert err is None or isinstance(err, str)


# -- output targets: strings from the data must not reach a terminal or a page raw ------

_SGR = None


def _texts(data: bytes, k: int) -> list[str]:
    """k strings from the fuzzer's bytes (split at 0xFE; bytes that are not UTF-8 become
    lone surrogates, as in a file name that is not UTF-8)."""
    parts = [p.decode("utf-8", "surrogateescape") for p in data.split(b"\xfe")] or [""]
    out = [parts[i % len(parts)] for i in range(k)]
    if len(parts) > k:
        out[-1] = "".join(parts[k - 1:])
    return out


def _no_raw_controls(text: str, where: str, allowed: str = "\n") -> None:
    """No character of Unicode's categories Cc, Cf, Zl, Zp (but ZWJ, ZWNJ and ``allowed``)
    outside our own colour sequences: checked with unicodedata, independently of
    lorascope's own escaping table."""
    global _SGR
    import re
    import unicodedata
    if _SGR is None:
        _SGR = re.compile("\x1b\\[[0-9;]*m")
    for ch in _SGR.sub("", text):
        if ch in allowed or ch in "\u200c\u200d":
            continue
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            raise AssertionError(f"{where}: raw {ch!r} from the data")


def _report(t: list[str]) -> dict:
    """A report document (CONTRACT \u00a72) whose every data-derived string is fuzzed."""
    return {
        "schema": "lorascope.report/1", "tool": {"name": "lorascope", "version": "0"},
        "run": {"path": t[0], "trainer": "hf-trainer", "task": "llm",
                "sources": [{"path": t[1], "kind": "text_log", "records": 1, "problems": [t[2], t[3]]}],
                "config": {"learning_rate": 1e-4, "lr_scheduler": t[4]},
                "steps": {"first": 1, "last": 40, "planned": 80}},
        "series": [{"name": t[5], "role": "other", "points": 3, "first_step": 1, "last_step": 3,
                    "nonfinite": 0}],
        "verdict": "failed",
        "findings": [{"rule": "log.oom", "severity": "critical", "title": t[6], "step": 7,
                      "step_range": [7, 9], "evidence": [t[7], t[8]],
                      "causes": [{"rule": "config.small_batch", "confidence": 0.5, "text": t[9]}],
                      "fix": {"lr_scheduler": t[4], "exclude_files": [t[10], t[1]]},
                      "files": [t[10], t[1]]}],
    }


def terminal(data: bytes) -> None:
    """The text summary (plain and coloured), the inspect table and the printed JSON."""
    from lorascope.inspect import render_inspect_text
    from lorascope.report.safe import json_safe
    from lorascope.report.text import render_text
    t = _texts(data, 12)
    doc, ref = _report(t), _report(["x"] * 12)
    for color in (False, True):
        out = render_text(doc, color=color, html_path=t[11] or "r")   # (a path is never empty)
        _no_raw_controls(out, "analyze text")
        # a string from the data never adds a line (a fake verdict on its own line)
        assert out.count("\n") == render_text(ref, color=color, html_path="x").count("\n")
    mods = [{"name": t[5], "rank": 4, "alpha": 1.0, "norm": 0.1, "mean_abs": 0.01, "zero": False,
             "nonfinite": 0}]

    def idoc(u):
        return {"schema": "lorascope.inspect/1", "files": [{
            "path": u[0], "format": "kohya", "size_bytes": 10, "dtype": "F16", "rank": 4, "alpha": 1.0,
            "step": None, "target_modules": [u[1]], "metadata": {"ss_output_name": u[2], u[3]: u[4],
                                                                 "ss_network_args": u[3]},
            "modules": [dict(m, name=u[5]) for m in mods], "zero_modules": [], "nonfinite_modules": [],
            "problems": [u[6]], "readable": True}]}
    out = render_inspect_text(idoc(t))
    _no_raw_controls(out, "inspect text")
    assert out.count("\n") == render_inspect_text(idoc(["x"] * 12)).count("\n")
    js = json_safe(json.dumps(doc, ensure_ascii=False))
    _no_raw_controls(js, "printed JSON", allowed="")
    assert json.loads(js) == doc                       # the exact strings, escaped


def _handlers(text: str) -> list[str]:
    """Event-handler attributes (on...) of the page's elements, as an HTML parser reads them."""
    from html.parser import HTMLParser
    found: list[str] = []

    class P(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.extend(f"{tag} {k}" for k, _v in attrs if k.lower().startswith("on"))
    P().feed(text)
    return found


def _page_scripts(text: str, where: str) -> None:
    """A page runs one script, the page's own (uPlot and lorascope's code: the same text
    whatever the data, allowed by its hash), and holds one JSON data block that parses
    and cannot close itself or open markup (no ``<`` at all)."""
    import base64
    import hashlib
    import re

    from lorascope.report.html import _script
    own = {str(_script(*names)[0]) for names in (("uplot", "charts.js", "filters.js", "tables.js"),
                                                  ("uplot", "charts.js", "tables.js"))}
    blocks = re.findall(r"<script\b([^>]*)>(.*?)</script>", text, re.S | re.I)
    assert text.lower().count("<script") == len(blocks) == 2, f"{where}: {len(blocks)} script elements"
    code = [body for attrs, body in blocks if not attrs.strip()]
    data = [body for attrs, body in blocks if attrs.strip() == 'type="application/json" id="chart-data"']
    assert len(code) == 1 and len(data) == 1, f"{where}: a script that is not the page's own"
    assert code[0] in own, f"{where}: the page's script changed with the data"
    digest = base64.b64encode(hashlib.sha256(code[0].encode("utf-8")).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in text, f"{where}: the policy does not allow exactly the page's script"
    assert "<" not in data[0] and ">" not in data[0] and "&" not in data[0], f"{where}: markup in the data block"
    json.loads(data[0])


def html(data: bytes) -> None:
    """The report page and the batch index: no raw control character from the data, no
    script but the page's own (the chart data a JSON block that cannot end itself), no
    event-handler attribute, links only ./relative."""
    import re

    import numpy as np

    from lorascope.pipeline import Analysis
    from lorascope.model import Cause, Config, ConfigValue, DataItem, Dataset, Finding, Run, Series, Source, StepInfo
    from lorascope.report.charts import sweep_curve
    from lorascope.report.html import render_html, write_index
    t = _texts(data, 12)
    t[0] = t[0].replace("\x00", "")                    # a run directory's path has no NUL
    loss = np.r_[np.linspace(2.0, 0.5, 30), [np.nan], np.linspace(0.5, 9.0, 9)]
    run = Run(path=t[0], name=t[0], trainer="kohya", task="sd",
              sources=[Source(t[1], "text_log", 1, [t[2], t[3]])],
              series=[Series(t[5], "train_loss", np.arange(1, 41), loss, [t[1]]),
                      Series(t[8], "eval_loss", np.arange(5, 41, 5), loss[4::5], [t[1]]),
                      Series(t[7], "lr", np.arange(1, 41), np.full(40, 1e-4), [t[1]]),
                      Series(t[5], "other", np.arange(1, 4), np.ones(3), [t[1]])],
              config=Config({"lr_scheduler": t[4], "train_data_dir": "img"},
                            {"lr_scheduler": ConfigValue("lr_scheduler", t[4], t[1], t[9])}),
              steps=StepInfo(1, 40, 80),
              datasets=[Dataset(kind="images", root=str(scratch() / "nowhere"),
                                items=[DataItem(file=t[10] + ".png", caption=t[8], error=t[7])])])
    findings = [Finding("data.corrupt_image", "critical", t[6], 7, [7, 9], [t[7], t[8]],
                        [Cause("config.small_batch", 0.5, t[9])], {"lr_scheduler": t[4]},
                        [t[10] + ".png", t[1]], extra={"change_points": [31]})]
    doc = _report(t)
    page = render_html(Analysis(run, findings, {}, [t[11], "tb"]), doc)
    index = scratch() / "html" / "index.html"
    other = _report(t[::-1])
    other["verdict"] = "healthy"
    other["run"]["config"]["lr_scheduler"] = t[2]
    write_index([doc, other], [str(index.parent / "r.html"), None], index,
                [{"path": t[3], "error": t[2]}], [], curves=[sweep_curve(run), sweep_curve(run)])
    for where, text in (("report page", page), ("index page", index.read_text(encoding="utf-8"))):
        _no_raw_controls(text, where)
        _page_scripts(text, where)
        # outside quoted attribute values (where data is escaped: no quote can end them),
        # no tag carries an on...= attribute; and none does for an HTML parser either
        unquoted = re.sub(r'"[^"]*"', '""', text)
        assert not re.search(r"<[a-zA-Z][^>]*\son[a-z]+\s*=", unquoted), f"{where}: an event handler"
        assert not _handlers(text), f"{where}: an event handler {_handlers(text)[:3]}"
        for href in re.findall(r'href="([^"]*)"', text):
            assert href.startswith("./") and ":" not in href, f"{where}: link {href!r}"


# the 1x1 PNG the dataset target scans
_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de"
    "0000000c4944415408d763f8cfc000000301010018dd8db00000000049454e44ae426082")

def wandb(data: bytes) -> None:
    """A W&B record log: both decoding paths."""
    from lorascope.ingest import wandb as m
    p = _write("wandb/offline-run-1/run-fuzz.wandb", data)
    _check_parsed(m.parse(p, p.name))
    _check_parsed(m.parse(p, p.name, fast_path=False))


def wandb_files(data: bytes) -> None:
    """A W&B run's files/config.yaml (v even) or files/wandb-summary.json (v odd)."""
    from lorascope.ingest import wandb as m
    v, body = _split(data)
    if v % 2 == 0:
        p = _write("wandbrun/files/config.yaml", body)
        _check_parsed(m.parse_config_yaml(p, "files/config.yaml"))
    else:
        p = _write("wandbrun/files/wandb-summary.json", body)
        _check_parsed(m.parse_summary(p, "files/wandb-summary.json"))


def mlflow(data: bytes) -> None:
    """An MLflow run folder: the bytes as a metric file (v % 3 == 0), a param value (1)
    or the run's meta.yaml (2)."""
    from lorascope.ingest import mlflow as m
    v, body = _split(data)
    run = scratch() / "mlruns" / "1" / "run"
    shutil.rmtree(run, ignore_errors=True)
    (run / "metrics" / "train").mkdir(parents=True)
    (run / "params").mkdir()
    meta = b"run_id: run\nstatus: 3\n"
    if v % 3 == 0:
        (run / "metrics" / "train" / "loss").write_bytes(body)
    elif v % 3 == 1:
        (run / "metrics" / "loss").write_bytes(b"1 0.5 1\n")
        (run / "params" / "learning_rate").write_bytes(body)
        (run / "params" / "target_modules").write_bytes(body[:200])
    else:
        meta = body
    (run / "meta.yaml").write_bytes(meta)
    _check_parsed(m.parse(run / "meta.yaml", "mlruns/1/run/meta.yaml"))


def aitk(data: bytes) -> None:
    """ai-toolkit's loss_log.db (SQLite)."""
    from lorascope.ingest import aitk as m
    p = _write("output/x/loss_log.db", data)
    _check_parsed(m.parse(p, "output/x/loss_log.db"))


TARGETS = {
    "tfevents": tfevents,
    "safetensors": safetensors,
    "config": config,
    "trainer_state": trainer_state,
    "llamafactory": llamafactory,
    "textlog": textlog,
    "model_config": model_config,
    "dataset": dataset,
    "image": image,
    "wandb": wandb,
    "wandb_files": wandb_files,
    "mlflow": mlflow,
    "aitk": aitk,
    "terminal": terminal,
    "html": html,
}
