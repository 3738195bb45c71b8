"""Walk a run directory and classify every file; opens nothing.

Nothing under /proc, /sys or /dev is listed, whatever a link says, and only regular
files are returned: a link into those trees, a FIFO, a socket or a device is a
:class:`WalkProblem` naming it (the builder lists it in ``sources``), as is a folder
that cannot be listed."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from lorascope.trainers import ai_toolkit_samples, kohya

# Source.kind strings (they appear in the report's run.sources).
KINDS = (
    "tfevents",          # events.out.tfevents.*
    "trainer_state",     # HF trainer_state.json (top level or checkpoint-N/)
    "trainer_log",       # LLaMA-Factory trainer_log.jsonl
    "results",           # all_results.json, train_results.json, eval_results.json, ...
    "text_log",          # *.log, running_log.txt, logs/*.txt
    "config",            # *.yaml, *.yml, *.toml, adapter_config.json, training_args.json, ...
    "model_config",      # HF config.json of a model (architecture, not training)
    "safetensors",       # *.safetensors
    "pickle",            # *.bin, *.pt, *.pth, *.ckpt, *.pkl: never unpickled
    "dataset_csv",       # metadata.csv
    "dataset_meta",      # kohya fine-tuning metadata: meta_lat.json, meta_clean.json
    "image",
    "wandb",             # W&B record log run-<id>.wandb (history, config, console)
    "wandb_config",      # W&B files/config.yaml of a run ({key: {desc, value}})
    "wandb_summary",     # W&B files/wandb-summary.json of a run
    "wandb_internal",    # W&B's own logs and metadata (debug.log, requirements.txt, ...)
    "mlflow_run",        # MLflow file store: meta.yaml of mlruns/<experiment>/<run>/
    "mlflow_item",       # MLflow file store: metrics/params/tags files (read with their run)
    "mlflow_meta",       # MLflow file store: an experiment's meta.yaml
    "aitk_loss_log",     # ai-toolkit UI logger: loss_log.db (SQLite) in the training folder
    "folder",            # a folder that could not be listed, or a link not followed
    "sample_image",      # an image a trainer generated while training (kohya sample/, ai-toolkit samples/)
    "other",
)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
PICKLE_EXTS = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"}
CONFIG_JSON_NAMES = {"adapter_config.json", "training_args.json", "train_args.json",
                     "training_config.json", "config_file.json"}
RESULTS_NAMES = {"all_results.json", "train_results.json", "eval_results.json",
                 "predict_results.json", "test_results.json"}
SKIP_DIRS = {".git", "__pycache__", ".ipynb_checkpoints", "node_modules", ".trash"}
WANDB_RUN_FILE = re.compile(r"^run-[A-Za-z0-9_-]+\.wandb$")
# what a W&B run directory holds beside its record log (wandb/sdk/lib/filenames.py)
WANDB_INTERNAL = {"wandb-metadata.json", "requirements.txt", "conda-environment.yaml",
                  "diff.patch", "wandb-resume.json", "debug.log", "debug-internal.log",
                  "debug-core.log", "output.log.partial"}
MAX_FILES = 200_000


class WalkProblem(str):
    """A problem met while walking (a str: ``"rel: reason"``) that also knows the path
    it is about and that path's kind, so that it can be named in ``sources``."""

    rel: str
    kind: str
    reason: str

    def __new__(cls, rel: str, kind: str, reason: str):
        self = super().__new__(cls, f"{rel or '.'}: {reason}")
        self.rel, self.kind, self.reason = rel, kind, reason
        return self


def _special(real: str) -> str | None:
    from lorascope.safe_open import SPECIAL_ROOTS
    for root in SPECIAL_ROOTS:
        if real == root or real.startswith(root + "/"):
            return root
    return None


@dataclass(frozen=True)
class Found:
    path: Path          # absolute (or as joined from the run dir)
    rel: str            # posix path relative to the run dir
    kind: str


def classify(rel: str) -> str:
    name = rel.rsplit("/", 1)[-1]
    low = name.lower()
    ext = os.path.splitext(low)[1]
    if low.startswith("events.out.tfevents"):
        return "tfevents"
    if low.endswith(".wandb"):
        return "wandb"
    if low == "trainer_state.json":
        return "trainer_state"
    if low == "trainer_log.jsonl":
        return "trainer_log"
    if low in RESULTS_NAMES:
        return "results"
    if low in CONFIG_JSON_NAMES:
        return "config"
    if ext == ".json" and rel.lower().rsplit("/", 2)[-2:-1] == ["config"]:
        return "config"         # SimpleTuner config/config.json, OneTrainer workspace/config/<time>.json
    if low == "config.json":
        return "model_config"
    if low == "loss_log.db":
        return "aitk_loss_log"
    if low in kohya.META_JSON_NAMES:
        return "dataset_meta"
    if ext in (".yaml", ".yml", ".toml"):
        return "config"
    if ext == ".safetensors":
        return "safetensors"
    if ext in PICKLE_EXTS:
        return "pickle"
    if low == "metadata.csv":
        return "dataset_csv"
    if ext in IMAGE_EXTS:
        return "sample_image" if is_sample_image(rel) else "image"
    if ext == ".log" or low in ("running_log.txt", "log.txt"):
        return "text_log"
    if ext == ".txt" and re.search(r"(^|/)logs?/", rel.lower()):
        return "text_log"
    if low in ("stdout.txt", "stderr.txt", "output.txt", "train.txt", "nohup.out"):
        return "text_log"
    return "other"


def is_sample_image(rel: str) -> bool:
    """A file a trainer's sampler wrote: in its sample folder, named its way."""
    parts = rel.rsplit("/", 2)
    if len(parts) < 2:
        return False
    folder, name = parts[-2], parts[-1]
    if folder == kohya.SAMPLE_DIR:
        return kohya.sample_name(name) is not None
    if folder == ai_toolkit_samples.SAMPLE_DIR:
        return ai_toolkit_samples.sample_name(name) is not None
    return False


def walk(run_dir: Path, max_files: int = MAX_FILES) -> tuple[list[Found], list[str]]:
    """All files under run_dir, following directory links once each (no loops).

    Returns the files and a list of problems met while walking.
    """
    found: list[Found] = []
    problems: list[str] = []
    seen: set[tuple[int, int]] = set()
    root_real = os.path.realpath(run_dir)
    stack = [(run_dir, "", root_real)]
    while stack:
        d, rel_d, real_d = stack.pop()
        try:
            st = d.stat()
        except OSError as e:
            problems.append(WalkProblem(rel_d, "folder", f"cannot stat ({e.strerror})"))
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:
            problems.append(f"{rel_d or '.'}: directory link loop, not followed again")
            continue
        seen.add(key)
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            problems.append(WalkProblem(rel_d, "folder", f"cannot list ({e.strerror})"))
            continue
        subdirs = []
        for e in entries:
            rel = f"{rel_d}/{e.name}" if rel_d else e.name
            try:
                is_dir = e.is_dir(follow_symlinks=True)
                is_file = (not is_dir) and e.is_file(follow_symlinks=True)
            except OSError:
                problems.append(f"{rel}: unreadable entry")
                continue
            link = e.is_symlink()
            # the resolved path: only a link needs resolving (the folder's own is known)
            real = os.path.realpath(e.path) if link else os.path.join(real_d, e.name)
            root = _special(real)
            if root is not None and (is_dir or is_file or link):   # /proc/kmsg: a "regular file" that blocks
                problems.append(WalkProblem(rel, "folder" if is_dir else classify(rel),
                                            f"{'link into' if link else 'inside'} {root} ({real}): never read"))
                continue
            if not is_dir and not is_file and not link:
                problems.append(WalkProblem(rel, classify(rel), "not a regular file (a FIFO, socket "
                                                                "or device): never read"))
                continue
            if is_dir:
                if link and _encloses(real, root_real):
                    # a link to / or to a parent holds the run itself: walking it would
                    # read the whole disk before the loop check could stop it
                    problems.append(f"{rel}: link to an enclosing directory, not followed")
                    continue
                if e.name == "latest-run" and e.is_symlink():
                    continue        # W&B's link to its newest run, walked under its own name
                if e.name not in SKIP_DIRS:
                    subdirs.append((Path(e.path), rel, real))
            elif is_file:
                if len(found) >= max_files:
                    problems.append(f"more than {max_files} files: the rest were not read")
                    return found, problems
                found.append(Found(Path(e.path), rel, classify(rel)))
            elif link:
                problems.append(f"{rel}: broken link")
        stack.extend(reversed(subdirs))
    return refine(found), problems


def _parent(rel: str) -> str:
    return rel.rsplit("/", 1)[0] if "/" in rel else ""


def _join(d: str, name: str) -> str:
    return f"{d}/{name}" if d else name


def refine(found: list[Found]) -> list[Found]:
    """Kinds only a file's neighbours tell: the files of a W&B run directory (a folder
    holding ``run-<id>.wandb``, or ``files/wandb-summary.json`` / ``wandb-metadata.json``)
    and of an MLflow file-store run (a folder holding ``meta.yaml`` and ``metrics/`` or
    ``params/``)."""
    rels = {f.rel for f in found}
    wandb_runs: set[str] = set()
    mlflow_runs: set[str] = set()
    for f in found:
        name = f.rel.rsplit("/", 1)[-1]
        d = _parent(f.rel)
        if WANDB_RUN_FILE.match(name):
            wandb_runs.add(d)
        elif name in ("wandb-summary.json", "wandb-metadata.json") and d.rsplit("/", 1)[-1] == "files":
            wandb_runs.add(_parent(d))
        parts = f.rel.split("/")
        for i in range(len(parts) - 1):
            if parts[i] in ("metrics", "params"):
                run = "/".join(parts[:i])
                if _join(run, "meta.yaml") in rels and run.rsplit("/", 1)[-1] != "models":
                    mlflow_runs.add(run)
                break
    if not wandb_runs and not mlflow_runs and "mlruns/" not in "".join(f.rel[:200] for f in found[:1000]):
        return found
    experiments = {_parent(r) for r in mlflow_runs if r}
    out = []
    for f in found:
        kind = f.kind
        d = _parent(f.rel)
        name = f.rel.rsplit("/", 1)[-1]
        if d in wandb_runs or _parent(d) in wandb_runs:
            run = d if d in wandb_runs else _parent(d)
            sub = f.rel[len(run) + 1:] if run else f.rel
            if name in WANDB_INTERNAL or sub.startswith(("logs/", "tmp/")):
                kind = "wandb_internal"
            elif sub == "files/config.yaml":
                kind = "wandb_config"
            elif sub == "files/wandb-summary.json":
                kind = "wandb_summary"
        elif name in ("debug.log", "debug-internal.log") and d.rsplit("/", 1)[-1] == "wandb":
            kind = "wandb_internal"
        if mlflow_runs:
            if name == "meta.yaml" and d in mlflow_runs:
                kind = "mlflow_run"
            parts = f.rel.split("/")
            for i in range(len(parts) - 1):
                if parts[i] in ("metrics", "params", "tags") and "/".join(parts[:i]) in mlflow_runs:
                    kind = "mlflow_item"
                    break
        if name == "meta.yaml" and kind != "mlflow_run" and (
                d in experiments or _parent(d).rsplit("/", 1)[-1] == "mlruns"):
            kind = "mlflow_meta"
        out.append(Found(f.path, f.rel, kind) if kind != f.kind else f)
    return out


def _encloses(target: str, root: str) -> bool:
    """target is root or one of its parent directories."""
    return root == target or root.startswith(target.rstrip(os.sep) + os.sep)
