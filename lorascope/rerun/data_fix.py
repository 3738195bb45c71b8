"""Data fixes for `rerun --fix`: train on a filtered copy of the dataset.

``exclude_files`` (set by data.corrupt_image, data.degenerate_image, data.missing_file)
lists dataset files, relative to the run directory, to leave out. The original dataset
is never modified: :func:`filter_image_dir` builds a copy of the image folder under the
replay's output folder in which every kept file is a hard link to the original (a
symbolic link where hard links fail, e.g. across file systems; a copy where both fail),
the excluded images are absent together with their sidecar files (``img.txt`` /
``img.caption`` captions, ``img.npz`` latent caches: same folder, same stem, not an
image), and ``metadata.csv`` / ``metadata.jsonl`` are rewritten without the rows that name
an excluded file (same encoding, BOM and line ends; the CSV is re-quoted by Python's
csv module where needed). :func:`apply_exclude_files` then points the trainer's config
at the copy: kohya / lora-scripts ``train_data_dir``, or each ``image_dir`` of a kohya
dataset TOML (``dataset_config``), found through ``Config.origins``.

Text datasets (JSON/JSONL records) have no automatic data fix: the rules set none.
"""
from __future__ import annotations

import csv
import io
import json
import os
import posixpath
import shutil
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorascope.rerun.plan import RerunError

DATA_FIX_KEYS = ("exclude_files",)
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif", ".jxl"}
MANIFESTS = ("metadata.csv", "metadata.jsonl")
MAX_FILES = 500_000


@dataclass
class FilterReport:
    src: Path
    dst: Path
    dropped: list[str] = field(default_factory=list)        # rel to src: images and sidecars
    dropped_rows: int = 0                                   # manifest rows / lines removed
    linked: int = 0
    symlinked: int = 0
    copied: int = 0

    def summary(self) -> str:
        how = ", ".join(f"{n} {w}" for n, w in ((self.linked, "hard-linked"),
                        (self.symlinked, "symlinked"), (self.copied, "copied")) if n)
        return (f"{len(self.dropped)} file(s) left out ({', '.join(self.dropped[:5])}"
                f"{' ...' if len(self.dropped) > 5 else ''}), {self.dropped_rows} manifest "
                f"row(s) dropped, {how or 'no files kept'}")


def _place(src: Path, dst: Path, rep: FilterReport) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
        rep.linked += 1
        return
    except OSError:
        pass
    try:
        os.symlink(os.path.realpath(src), dst)
        rep.symlinked += 1
        return
    except OSError:
        pass
    shutil.copy2(src, dst)
    rep.copied += 1


def _decode(raw: bytes) -> tuple[str, str, bool]:
    """(text, encoding, bom) of a manifest."""
    bom = raw.startswith(b"\xef\xbb\xbf")
    try:
        return raw.decode("utf-8-sig"), "utf-8", bom
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes
    best = from_bytes(raw).best()
    enc = best.encoding if best is not None else "latin-1"
    return raw.decode(enc, errors="replace"), enc, False


def _encode(text: str, enc: str, bom: bool) -> bytes:
    return (b"\xef\xbb\xbf" if bom else b"") + text.encode(enc, errors="replace")


def _norm(folder: str, name: str) -> str:
    return posixpath.normpath(posixpath.join(folder, name.strip())) if name.strip() else ""


def _filter_csv(raw: bytes, folder: str, exclude: set[str]) -> tuple[bytes, int]:
    text, enc, bom = _decode(raw)
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if not rows:
        return raw, 0
    header = [h.strip().lstrip("\ufeff") for h in rows[0]]
    if "file_name" not in header:
        return raw, 0
    col = header.index("file_name")
    kept = [rows[0]] + [r for r in rows[1:]
                        if not (col < len(r) and _norm(folder, r[col]) in exclude)]
    dropped = len(rows) - len(kept)
    if not dropped:
        return raw, 0
    buf = io.StringIO(newline="")
    csv.writer(buf, lineterminator="\r\n" if "\r\n" in text else "\n").writerows(kept)
    return _encode(buf.getvalue(), enc, bom), dropped


def _filter_jsonl(raw: bytes, folder: str, exclude: set[str]) -> tuple[bytes, int]:
    text, enc, bom = _decode(raw)
    out, dropped = [], 0
    for line in text.splitlines(keepends=True):
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        name = rec.get("file_name") if isinstance(rec, dict) else None
        if isinstance(name, str) and _norm(folder, name) in exclude:
            dropped += 1
            continue
        out.append(line)
    return (_encode("".join(out), enc, bom), dropped) if dropped else (raw, 0)


def filter_image_dir(src: Path, dst: Path, exclude: set[str] | list[str]) -> FilterReport:
    """Copy the image folder `src` to `dst` without the files `exclude` names (posix
    paths relative to `src`), their sidecar files and their manifest rows; kept files are
    linked, not duplicated, where the file system allows. `src` is only read."""
    src, dst = Path(src), Path(dst)
    exclude = {posixpath.normpath(e) for e in exclude}
    if dst.exists():
        raise RerunError(f"{dst} already exists")
    rep = FilterReport(src=src, dst=dst)
    # sidecars: same folder and stem as an excluded image, not an image themselves
    stems = {posixpath.splitext(e)[0] for e in exclude}
    dst.mkdir(parents=True)
    seen = 0
    for root, dirs, names in os.walk(src):
        dirs.sort()
        rel_root = Path(root).relative_to(src).as_posix()
        rel_root = "" if rel_root == "." else rel_root
        for d in list(dirs):
            p = Path(root) / d
            if p.is_symlink():           # a linked sub-folder: link it as it is
                os.symlink(os.path.realpath(p), dst / rel_root / d)
                dirs.remove(d)
        (dst / rel_root).mkdir(parents=True, exist_ok=True)
        for n in sorted(names):
            seen += 1
            if seen > MAX_FILES:
                raise RerunError(f"{src}: more than {MAX_FILES} files; not copied")
            rel = posixpath.join(rel_root, n) if rel_root else n
            p = Path(root) / n
            stem, ext = posixpath.splitext(rel)
            if rel in exclude or (stem in stems and ext.lower() not in IMAGE_EXTS
                                  and n not in MANIFESTS):
                rep.dropped.append(rel)
                continue
            if n in MANIFESTS and p.is_file():
                raw = p.read_bytes()
                fn = _filter_csv if n.endswith(".csv") else _filter_jsonl
                new, dropped = fn(raw, rel_root, exclude)
                if dropped:
                    (dst / rel).write_bytes(new)
                    rep.dropped_rows += dropped
                    rep.copied += 1
                    continue
            _place(p, dst / rel, rep)
    return rep


# -- the trainer's config ---------------------------------------------------------------

def _inside(path: str, folder: str) -> str | None:
    """`path` relative to `folder` (posix) when it lies inside it, else None."""
    for a, b in ((os.path.abspath(path), os.path.abspath(folder)),
                 (os.path.realpath(path), os.path.realpath(folder))):
        try:
            rel = os.path.relpath(a, b)
        except ValueError:
            continue
        if rel != "." and not rel.startswith(".." + os.sep) and rel != ".." and not os.path.isabs(rel):
            return Path(rel).as_posix()
    return None


def _set_path(doc: Any, dotted: str, value: Any) -> None:
    """Set a dotted key whose parts may be list indexes (datasets.0.subsets.1.image_dir)."""
    parts = dotted.split(".")
    node = doc
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value


def _resolve_dir(value: Any, bases: list[Path]) -> Path | None:
    if not isinstance(value, str) or not value:
        return None
    p = Path(os.path.expanduser(value))
    if p.is_absolute():
        return p if p.is_dir() else None
    for b in bases:
        if (b / p).is_dir():
            return (b / p).resolve()
    return None


def apply_exclude_files(run, doc: dict, src_file: Path, src_rel: str, files: list[str],
                        out_dir: Path, find_key, set_key) -> list[FilterReport]:
    """Point the config `doc` (loaded from `src_file`, the run's `src_rel`) at filtered
    copies of the image folders holding `files` (paths relative to the run dir), built
    under `out_dir/_data/`. Raises RerunError when no configured image folder holds any
    of the files."""
    run_dir = Path(run.path)
    origin = run.config.origins.get("train_data_dir")
    if origin is None:
        raise RerunError("exclude_files: the run's config names no image folder "
                         "(train_data_dir / image_dir) to filter")
    # (config document, its file, dotted key, value) for every image folder the trainer reads
    targets: list[tuple[dict, Path, str, str]] = []
    ds_doc = ds_file = None
    if origin.file == src_rel:
        k = origin.orig_key if origin.orig_key else find_key(doc, "train_data_dir")
        v = doc
        for part in k.split("."):
            v = v.get(part) if isinstance(v, dict) else None
        targets.append((doc, src_file, k, v))
    else:
        ds_file = run_dir / origin.file
        try:
            ds_doc = tomllib.loads(ds_file.read_text(encoding="utf-8-sig"))
        except (OSError, ValueError) as e:
            raise RerunError(f"exclude_files: cannot read {origin.file}: {e}") from None
        for i, d in enumerate(ds_doc.get("datasets", []) or []):
            for j, sub in enumerate((d.get("subsets", []) if isinstance(d, dict) else []) or []):
                if isinstance(sub, dict) and isinstance(sub.get("image_dir"), str):
                    targets.append((ds_doc, ds_file, f"datasets.{i}.subsets.{j}.image_dir",
                                    sub["image_dir"]))
    abs_files = {f: str(run_dir / f) for f in files}
    matched: set[str] = set()
    reports: list[FilterReport] = []
    data_root = Path(out_dir) / "_data"
    for n, (d, f, key, value) in enumerate(targets):
        folder = _resolve_dir(value, [f.parent, run_dir, Path.cwd()])
        if folder is None:
            continue
        here = {}
        for rel_run, a in abs_files.items():
            r = _inside(a, str(folder))
            if r is not None:
                here[rel_run] = r
        if d is ds_doc:                  # the dataset TOML's other subsets: absolute paths
            _set_path(d, key, str(folder))
        if not here:
            continue
        matched |= set(here)
        dst = data_root / f"{n}-{folder.name or 'dataset'}"
        rep = filter_image_dir(folder, dst, set(here.values()))
        reports.append(rep)
        _set_path(d, key, str(dst.resolve()))
        print(f"lorascope: exclude_files: training on a filtered copy of {value} at {dst}: "
              f"{rep.summary()}", file=sys.stderr)
    if not matched:
        raise RerunError("exclude_files: none of " + ", ".join(files[:3])
                         + (" ..." if len(files) > 3 else "")
                         + " lies in an image folder the config names")
    for f in files:
        if f not in matched:
            print(f"lorascope: exclude_files: {f} is not in an image folder the config names; "
                  f"ignored", file=sys.stderr)
    if ds_doc is not None:
        import tomli_w
        target = Path(out_dir) / ("lorascope-rerun-dataset" + ds_file.suffix.lower())
        target.write_text(tomli_w.dumps(ds_doc), encoding="utf-8")
        set_key(doc, find_key(doc, "dataset_config") or "dataset_config", str(target.resolve()))
    return reports
