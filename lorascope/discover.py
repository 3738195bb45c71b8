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
    "image",
    "folder",            # a folder that could not be listed, or a link not followed
    "other",
)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
PICKLE_EXTS = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"}
CONFIG_JSON_NAMES = {"adapter_config.json", "training_args.json", "train_args.json",
                     "training_config.json", "config_file.json"}
RESULTS_NAMES = {"all_results.json", "train_results.json", "eval_results.json",
                 "predict_results.json", "test_results.json"}
SKIP_DIRS = {".git", "__pycache__", ".ipynb_checkpoints", "node_modules", "wandb"}
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
    if low == "trainer_state.json":
        return "trainer_state"
    if low == "trainer_log.jsonl":
        return "trainer_log"
    if low in RESULTS_NAMES:
        return "results"
    if low in CONFIG_JSON_NAMES:
        return "config"
    if low == "config.json":
        return "model_config"
    if ext in (".yaml", ".yml", ".toml"):
        return "config"
    if ext == ".safetensors":
        return "safetensors"
    if ext in PICKLE_EXTS:
        return "pickle"
    if low == "metadata.csv":
        return "dataset_csv"
    if ext in IMAGE_EXTS:
        return "image"
    if ext == ".log" or low == "running_log.txt":
        return "text_log"
    if ext == ".txt" and re.search(r"(^|/)logs?/", rel.lower()):
        return "text_log"
    if low in ("stdout.txt", "stderr.txt", "output.txt", "train.txt", "nohup.out"):
        return "text_log"
    return "other"


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
    return found, problems


def _encloses(target: str, root: str) -> bool:
    """target is root or one of its parent directories."""
    return root == target or root.startswith(target.rstrip(os.sep) + os.sep)
