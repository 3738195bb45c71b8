"""Datasets a run trained on: kohya / lora-scripts image folders and JSON/JSONL text sets.

Two entry points, both of which never raise on bad content (what was wrong goes on
``Dataset.problems`` / ``Source.problems`` and on the items themselves):

* :func:`load_image_dataset` reads a ``train_data_dir``: an optional ``metadata.csv``
  (``file_name,text``), per-image caption files (``img.txt`` / ``img.caption``) and
  kohya's ``N_concept/`` subfolders.  Every image is decoded (cheaply: JPEGs in draft
  mode, which still reads every byte) in a process pool, so truncated files, EXIF
  errors, decompression bombs and blank images are found.
* :func:`load_text_dataset` streams a JSON / JSONL file (alpaca, sharegpt, plain text)
  and measures each record: length, an approximate token count, control characters.

Nothing here writes anywhere, and no file name read from a manifest is opened when it
points outside the dataset directory.
"""
from __future__ import annotations

import codecs
import csv
import io
import json
import os
import posixpath
import re
import sys
import unicodedata
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Iterator

from lorascope.discover import IMAGE_EXTS, walk
from lorascope.ingest import _json
from lorascope.model import DataItem, Dataset, Source
from lorascope.safe_open import open_file
from lorascope.trainers import kohya

# -- limits ----------------------------------------------------------------------------

MAX_IMAGE_PIXELS = 89_478_485          # Pillow's own default, set explicitly in every worker
DRAFT_SIZE = (64, 64)                  # JPEG draft target: decodes at 1/2..1/8 scale
STATS_SIDE = 64                        # degenerate checks run on an image about this size
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
MAX_CAPTION_BYTES = 64 * 1024
MAX_DATASET_FILES = 200_000
MAX_RECORD_BYTES = 16 * 1024 * 1024    # one JSON record / JSONL line larger than this is skipped
MAX_TEXT_ITEMS = 200_000               # records beyond this keep an item only when flagged
MAX_TEXT_SNIPPETS = 20_000             # records beyond this keep no text unless flagged
SNIPPET_CHARS = 200
CHARS_PER_TOKEN = 3.5                  # no tokenizer: latin-script text ~3.5 chars/token

CAPTION_EXTS = (".txt", ".caption")
NAME_COLUMNS = ("file_name", "filename", "file", "image", "image_file", "file_path", "path")
TEXT_COLUMNS = ("text", "caption", "prompt", "tags", "description")
CONCEPT_DIR = kohya.CONCEPT_DIR_RE      # kohya's "<repeats>_<name>" folders
EXT_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP",
               ".bmp": "BMP", ".gif": "GIF", ".tif": "TIFF", ".tiff": "TIFF"}

# C0 controls except \t \n \r, DEL, C1 controls, and U+FFFD (left by a bad decode).
CONTROL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd]")
# Scripts where a tokenizer spends about one token per character.
CJK_RE = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")

ESCAPE_ERROR = "path escapes the dataset directory"
UNREADABLE = "cannot read: "               # an image that could not be opened (not decoded)


# -- shared helpers ----------------------------------------------------------------------

def _display(path: Path, run_dir: Path) -> str:
    """``path`` relative to the run directory (posix) when inside it, else as given."""
    try:
        rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(run_dir))
    except ValueError:
        try:     # the same place reached through a symlink
            rel = Path(path).resolve().relative_to(Path(run_dir).resolve())
        except (ValueError, OSError):
            return str(path)
    s = rel.as_posix()
    return "" if s == "." else s


def _join(prefix: str, rel: str) -> str:
    return f"{prefix}/{rel}" if prefix else rel


def _read_capped(path: Path, cap: int) -> tuple[bytes, bool]:
    with open_file(path) as fh:
        data = fh.read(cap + 1)
    return data[:cap], len(data) > cap


def _detect_encoding(data: bytes) -> tuple[str, bool]:
    """(encoding, bom) of a byte sample.  UTF-8 first; else charset-normalizer's guess."""
    if data.startswith(codecs.BOM_UTF8):
        return "utf-8", True
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16", True
    try:
        codecs.getincrementaldecoder("utf-8")().decode(data, final=False)
        return "utf-8", False
    except UnicodeDecodeError:
        pass
    try:
        from charset_normalizer import from_bytes
        best = from_bytes(data[:1_000_000]).best()
    except Exception:   # noqa: BLE001 - a guess that fails is no guess
        best = None
    return (best.encoding if best is not None else "latin-1"), False


def _decode(data: bytes, encoding: str, bom: bool) -> str:
    if bom and encoding == "utf-8":
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode(encoding, errors="replace")
    except LookupError:
        return data.decode("latin-1")


# -- image decoding (runs in worker processes) -------------------------------------------

def decode_image(src: str | bytes, draft: tuple[int, int] = DRAFT_SIZE):
    """Decode one image (a path, or the encoded bytes) cheaply but completely, with the
    guarantees every image lorascope opens gets: opened through safe_open (a regular file,
    never /proc, /sys or /dev), Pillow's pixel limit as a hard error (decompression bombs),
    warnings silenced, any decoder exception turned into an error string, EXIF orientation
    applied.

    Returns (width, height, error, format, image): width/height come from the header
    (full size); image is the decoded picture at reduced scale (JPEG draft mode: every
    entropy-coded byte is still read, so truncation is caught), None on error.  An error
    that starts with UNREADABLE is a file that could not be opened, not a bad image.
    """
    from PIL import Image, ImageOps

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    w = h = fmt = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        if isinstance(src, (bytes, bytearray)):
            fh = io.BytesIO(src)
        else:
            try:
                fh = open_file(src)
            except PermissionError:
                return w, h, f"{UNREADABLE}permission denied", fmt, None
            except OSError as e:
                return w, h, f"{UNREADABLE}{e.strerror or _short(e)}", fmt, None
        try:
            with fh, Image.open(fh) as im:
                w, h = im.size
                fmt = im.format
                # Other formats ignore draft and load fully.
                im.draft("RGB", draft)
                im.load()
                try:
                    small = ImageOps.exif_transpose(im)
                except Exception as e:  # noqa: BLE001
                    return w, h, f"EXIF: {_short(e)}", fmt, None
                return w, h, None, fmt, small
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            if w is None:
                w, h = _header_size(src)
            return w, h, f"decompression bomb: {w}x{h}", fmt, None
        except Image.UnidentifiedImageError:
            return w, h, "not an image Pillow can identify", fmt, None
        except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
            return w, h, _short(e), fmt, None
        except Exception as e:  # noqa: BLE001 - a decoder bug must not stop the scan
            return w, h, f"{type(e).__name__}: {_short(e)}", fmt, None


def _scan_image(path: str) -> tuple[int | None, int | None, str | None, str | None, str | None]:
    """Decode one image (see :func:`decode_image`).

    Returns (width, height, error, degenerate, format).
    """
    w, h, err, fmt, im = decode_image(path)
    return w, h, err, (_degenerate(im) if im is not None else None), fmt


def _scan_signed(path: str) -> tuple:
    """:func:`_scan_image` and the image's :class:`~lorascope.model.Signature` (for
    comparing the run's sample images with it), None when it does not decode."""
    w, h, err, fmt, im = decode_image(path)
    if im is None:
        return w, h, err, None, fmt, None
    from lorascope.imagesim import signature
    try:
        sig = signature(im)
    except Exception:  # noqa: BLE001 - odd modes: no signature rather than no scan
        sig = None
    return w, h, err, _degenerate(im), fmt, sig


def _short(e: BaseException) -> str:
    s = str(e) or type(e).__name__
    return s if len(s) <= 160 else s[:157] + "..."


def _header_size(src: str | bytes) -> tuple[int | None, int | None]:
    """Size from the header of an image that the pixel limit refused (nothing decoded)."""
    from PIL import Image
    old = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None
        with (io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else open_file(src)) as fh, \
                Image.open(fh) as im:
            return im.size
    except Exception:  # noqa: BLE001
        return None, None
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _degenerate(im) -> str | None:
    """"black" | "white" | "constant" | None, on a reduced copy of the decoded image."""
    try:
        side = min(im.size)
        if side >= 2 * STATS_SIDE:
            im = im.reduce(max(1, side // STATS_SIDE))
        if im.mode != "RGB":
            im = im.convert("RGB")
        ext = im.getextrema()                       # per band (min, max), in C
    except Exception:  # noqa: BLE001 - odd modes: no verdict rather than a false one
        return None
    if not im.width or not im.height:
        return None
    if max(hi for _, hi in ext) < 8:
        return "black"
    if min(lo for lo, _ in ext) > 247:
        return "white"
    # std < 1 needs range < sqrt(2 n): most pictures are ruled out without computing it
    n = im.width * im.height
    if all(hi - lo <= (2 * n) ** 0.5 for lo, hi in ext):
        from PIL import ImageStat
        if max(ImageStat.Stat(im).stddev) < 1.0:
            return "constant"
    return None


def _scan_chunk(paths: list[str]) -> list[tuple]:
    return [_scan_image(p) for p in paths]


def _scan_chunk_signed(paths: list[str]) -> list[tuple]:
    return [_scan_signed(p) for p in paths]


def scan_images(paths: list, jobs: int | None = None, progress: bool = False,
                problems: list[str] | None = None, chunk_fn=_scan_chunk,
                what: str = "checking images") -> list[tuple | None]:
    """Decode every path (see :func:`_scan_image`), in parallel when it pays off.

    ``chunk_fn`` decodes a list of inputs into a list of results (a module-level
    function: it runs in worker processes).  Results are in the order of ``paths``;
    ``None`` where a worker died.
    """
    n = len(paths)
    jobs = max(1, jobs or os.cpu_count() or 1)
    out: list[tuple | None] = [None] * n
    done = 0

    def tick(k: int) -> None:
        nonlocal done
        done += k
        if progress:
            print(f"\r{what} {done}/{n}", end="", file=sys.stderr, flush=True)

    if jobs == 1 or n < 64:
        for i, p in enumerate(paths):
            out[i] = chunk_fn([p])[0]
            if progress and (i % 50 == 0 or i == n - 1):
                tick(i + 1 - done)
    else:
        chunk = max(8, min(256, n // (jobs * 8)))
        lost = 0
        try:
            with ProcessPoolExecutor(max_workers=jobs) as ex:
                futs = {ex.submit(chunk_fn, paths[i:i + chunk]): i for i in range(0, n, chunk)}
                for f in as_completed(futs):
                    i = futs[f]
                    try:
                        res = f.result()
                    except Exception:  # noqa: BLE001 - a worker died (crash, OOM kill)
                        lost += min(chunk, n - i)
                        tick(min(chunk, n - i))
                        continue
                    out[i:i + len(res)] = res
                    tick(len(res))
        except Exception as e:  # noqa: BLE001 - no process pool here: decode in-process
            if problems is not None:
                problems.append(f"parallel image check unavailable ({_short(e)}); ran in one process")
            for i, p in enumerate(paths):
                if out[i] is None:
                    out[i] = chunk_fn([p])[0]
            lost = 0
        if lost and problems is not None:
            problems.append(f"an image-check worker died: {lost} images were not checked")
    if progress and n:
        print(file=sys.stderr, flush=True)
    return out


# -- image folders -----------------------------------------------------------------------

def _case_key(rel: str) -> str:
    return unicodedata.normalize("NFC", rel.replace("\\", "/")).casefold()


def _escapes(name: str) -> bool:
    n = name.replace("\\", "/")
    if n.startswith("/") or re.match(r"^[A-Za-z]:", n):
        return True
    norm = posixpath.normpath(n)
    return norm == ".." or norm.startswith("../")


def _is_file(p: Path) -> bool:
    """Path.is_file that also says no for a name too long for the file system."""
    try:
        return p.is_file()
    except (OSError, ValueError):
        return False


def _read_caption_file(path: Path) -> tuple[str, str, bool]:
    """(caption, encoding, bom) of a per-image caption file."""
    data, _ = _read_capped(path, MAX_CAPTION_BYTES)
    enc, bom = _detect_encoding(data)
    return _decode(data, enc, bom).strip(), enc, bom


def _read_manifest(path: Path, ds: Dataset) -> list[tuple[int, str, str | None]]:
    """Rows (row number, file_name, caption) of a metadata.csv; sets encoding and bom."""
    try:
        data, cut = _read_capped(path, MAX_MANIFEST_BYTES)
    except OSError as e:
        ds.problems.append(f"cannot read {path.name}: {e.strerror or e}")
        return []
    if cut:
        ds.problems.append(f"{path.name} is larger than {MAX_MANIFEST_BYTES >> 20} MiB: "
                           "only its beginning was read")
        data = data[:data.rfind(b"\n") + 1]
    enc, bom = _detect_encoding(data)
    ds.encoding, ds.bom = enc, bom
    text = _decode(data, enc, bom)
    if "\ufffd" in text and enc == "utf-8":
        ds.problems.append(f"{path.name}: bytes that are not valid {enc}")
    first = text.split("\n", 1)[0]
    delim = max((",", "\t", ";"), key=first.count) if first else ","
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delim))
    except csv.Error as e:
        ds.problems.append(f"{path.name}: not valid CSV ({e})")
        return []
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        ds.problems.append(f"{path.name} is empty")
        return []
    header = [c.strip().lstrip("\ufeff").strip().lower() for c in rows[0]]
    name_col = next((header.index(c) for c in NAME_COLUMNS if c in header), None)
    text_col = next((header.index(c) for c in TEXT_COLUMNS if c in header), None)
    start = 1
    if name_col is None:
        if os.path.splitext(header[0])[1] in IMAGE_EXTS:
            ds.problems.append(f"{path.name} has no header row (file_name,text)")
            start = 0
        else:
            ds.problems.append(f"{path.name}: no file_name column; header is {rows[0][:4]!r}")
        name_col = 0
        if text_col is None and len(header) > 1:
            text_col = 1
    out = []
    for i, r in enumerate(rows[start:], start=1):
        name = r[name_col].strip() if name_col < len(r) else ""
        cap = None
        if text_col is not None:
            cap = r[text_col] if text_col < len(r) else ""
        out.append((i, name, cap))
    return out


def load_image_dataset(root: Path, run_dir: Path, *, jobs: int | None = None,
                       progress: bool = False, signatures: bool = False) -> tuple[Dataset, Source]:
    """Read a kohya / lora-scripts ``train_data_dir`` and decode every image in it.

    Items come from ``metadata.csv`` when there is one (each ``file_name`` resolved
    against ``root``: missing, present only under another letter case, or escaping
    the directory), then from the images on disk that the manifest does not name.
    Without a manifest, captions come from ``img.txt`` / ``img.caption`` beside each image.

    ``signatures``: also give every decoded image its
    :class:`~lorascope.model.Signature` (the run's sample images are compared with them).
    """
    root = Path(root)
    if root.is_file() and root.name.lower() == "metadata.csv":
        root = root.parent
    prefix = _display(root, run_dir)
    ds = Dataset(kind="images", root=str(root))
    manifest = root / "metadata.csv"
    has_manifest = manifest.is_file()
    src = Source(path=_display(manifest if has_manifest else root, run_dir),
                 kind="dataset_csv" if has_manifest else "dataset_images")
    if not root.is_dir():
        ds.problems.append(f"dataset directory not found: {root}")
        src.problems = ds.problems
        return ds, src
    if has_manifest:
        ds.manifest = src.path

    found, walk_problems = walk(root, max_files=MAX_DATASET_FILES)
    ds.problems.extend(walk_problems)
    on_disk = {f.rel for f in found}
    images = [f.rel for f in found if os.path.splitext(f.rel)[1].lower() in IMAGE_EXTS]
    root_real = os.path.realpath(root)
    linked = [f.rel for f in found if os.path.commonpath(
        [root_real, os.path.realpath(f.path)]) != root_real]
    if linked:
        ds.problems.append(f"{len(linked)} files are links to outside the dataset directory and "
                           f"were read there (e.g. {_join(prefix, linked[0])})")
    by_key: dict[str, str] = {}
    for rel in images:
        by_key.setdefault(_case_key(rel), rel)

    items: list[DataItem] = []
    to_scan: list[tuple[DataItem, str]] = []
    named: set[str] = set()

    if has_manifest:
        for row, name, cap in _read_manifest(manifest, ds):
            if not name:
                items.append(DataItem(file=None, caption=cap, index=row, exists=False,
                                      error="empty file_name"))
                continue
            if _escapes(name):
                items.append(DataItem(file=name, caption=cap, index=row, exists=False,
                                      error=ESCAPE_ERROR))
                continue
            rel = posixpath.normpath(name)
            item = DataItem(file=_join(prefix, rel), caption=cap, index=row)
            items.append(item)
            if rel in on_disk or _is_file(root / rel):
                named.add(rel)
                to_scan.append((item, str(root / rel)))
                continue
            item.exists = False
            other = by_key.get(_case_key(rel))
            if other is not None:
                item.disk_name = other
                named.add(other)

    other_enc: dict[str, int] = {}
    bad_enc_files: list[str] = []
    concept_dirs, loose = set(), []
    for rel in images:
        if rel in named:
            continue
        cap = None
        if not has_manifest:
            stem = os.path.splitext(rel)[0]
            for ext in CAPTION_EXTS:
                if stem + ext in on_disk:
                    try:
                        cap, enc, _bom = _read_caption_file(root / (stem + ext))
                    except OSError as e:
                        ds.problems.append(f"{stem + ext}: cannot read ({e.strerror or e})")
                        break
                    if enc != "utf-8":
                        other_enc[enc] = other_enc.get(enc, 0) + 1
                        bad_enc_files.append(_join(prefix, stem + ext))
                    break
            top = rel.split("/", 1)[0] if "/" in rel else None
            if top is not None and CONCEPT_DIR.match(top):
                concept_dirs.add(top)
            else:
                loose.append(rel)
        item = DataItem(file=_join(prefix, rel), caption=cap)
        items.append(item)
        to_scan.append((item, str(root / rel)))

    if other_enc:
        enc = max(other_enc, key=other_enc.get)
        ds.encoding = ds.encoding or enc
        shown = ", ".join(bad_enc_files[:5]) + (f" and {len(bad_enc_files) - 5} more"
                                                if len(bad_enc_files) > 5 else "")
        ds.problems.append(f"{len(bad_enc_files)} caption files are not UTF-8 ({enc}): {shown}")
    if concept_dirs:
        # kohya counts each image of an N_name folder N times per epoch
        views = 0
        for rel in images:
            m = CONCEPT_DIR.match(rel.split("/", 1)[0]) if "/" in rel else None
            views += int(m.group(1)) if m else 0
        ds.views = views or None
    if concept_dirs and loose:
        ds.problems.append(f"kohya reads only N_concept subfolders: {len(loose)} images "
                           f"outside them (e.g. {loose[0]}) are not trained on")

    results = scan_images([p for _, p in to_scan], jobs=jobs, progress=progress,
                          problems=ds.problems,
                          chunk_fn=_scan_chunk_signed if signatures else _scan_chunk)
    mismatched: list[str] = []
    unreadable: dict[str, list[str]] = {}
    for (item, path), res in zip(to_scan, results):
        if res is None:
            continue
        item.width, item.height, item.error, item.degenerate, fmt = res[:5]
        if signatures:
            item.signature = res[5]
        if item.error and item.error.startswith(UNREADABLE):
            # permissions, a special file: the image may be fine; it is not a corrupt one
            unreadable.setdefault(item.error[len(UNREADABLE):], []).append(item.file)
            item.error = None
            continue
        want = EXT_FORMATS.get(os.path.splitext(path)[1].lower())
        if fmt and want and fmt != want:
            mismatched.append(f"{item.file} holds {fmt} data")
    for why, names in unreadable.items():
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        ds.problems.append(f"{len(names)} images could not be opened ({why}), so they were not "
                           f"checked: {shown}")
    if mismatched:
        ds.problems.append(f"{len(mismatched)} images whose extension does not match their "
                           f"content (e.g. {mismatched[0]}); Pillow reads them by content")

    ds.items = items
    ds.records = len(items)
    src.records = len(items)
    src.problems = ds.problems
    return ds, src


# -- text datasets -----------------------------------------------------------------------

def _content_text(c: Any) -> str:
    if isinstance(c, str):
        return c
    if isinstance(c, list):      # OpenAI-style content parts
        return "\n".join(_content_text(p) for p in c)
    if isinstance(c, dict):
        for k in ("text", "value", "content"):
            if isinstance(c.get(k), str):
                return c[k]
    return ""


def record_text(obj: Any) -> str | None:
    """The training text of one record (alpaca, sharegpt, messages, plain text)."""
    if isinstance(obj, str):
        return obj
    if not isinstance(obj, dict):
        return None
    parts: list[str] = []
    if isinstance(obj.get("system"), str):
        parts.append(obj["system"])
    for key in ("conversations", "messages", "conversation", "dialog"):
        turns = obj.get(key)
        if isinstance(turns, list):
            for t in turns:
                if isinstance(t, dict):
                    parts.append(_content_text(t.get("value", t.get("content", ""))))
                elif isinstance(t, str):
                    parts.append(t)
            return "\n".join(p for p in parts if p)
    if any(k in obj for k in ("instruction", "input", "output")):
        hist = obj.get("history")
        if isinstance(hist, list):
            for pair in hist:
                if isinstance(pair, (list, tuple)):
                    parts.extend(str(x) for x in pair if isinstance(x, str))
        for k in ("instruction", "input", "output"):
            if isinstance(obj.get(k), str):
                parts.append(obj[k])
        return "\n".join(p for p in parts if p)
    for keys in (("text",), ("prompt", "completion"), ("prompt", "response"),
                 ("question", "answer"), ("prompt", "chosen"), ("content",)):
        if any(isinstance(obj.get(k), str) for k in keys):
            parts.extend(obj[k] for k in keys if isinstance(obj.get(k), str))
            return "\n".join(p for p in parts if p)
    parts.extend(v for v in obj.values() if isinstance(v, str))
    return "\n".join(parts) if parts else None


def approx_tokens(text: str) -> int:
    """Token estimate without a tokenizer: one per CJK character, chars/3.5 for the rest."""
    cjk = len(CJK_RE.findall(text))
    return int(round(cjk + (len(text) - cjk) / CHARS_PER_TOKEN))


def _utf8_chars(b: bytes) -> int:
    """Characters in a UTF-8 byte string (bytes that are not continuation bytes)."""
    return len(b) - sum(b.count(bytes([c])) for c in range(0x80, 0xC0))


def _iter_jsonl(fh, enc: str) -> Iterator[tuple[int, Any, int | None, str | None]]:
    """(line number, object, chars, error) per non-blank line, with bounded memory."""
    lineno = 0
    while True:
        line = fh.readline(MAX_RECORD_BYTES + 1)
        if not line:
            return
        lineno += 1
        if len(line) > MAX_RECORD_BYTES and not line.endswith(b"\n"):
            chars = _utf8_chars(line)
            while True:       # skip the rest of the enormous line, counting it
                more = fh.readline(1 << 20)
                if not more:
                    break
                chars += _utf8_chars(more)
                if more.endswith(b"\n"):
                    break
            yield lineno, None, chars, f"record larger than {MAX_RECORD_BYTES >> 20} MiB, not parsed"
            continue
        if lineno == 1 and line.startswith(codecs.BOM_UTF8):
            line = line[3:]
        if not line.strip():
            continue
        try:
            yield lineno, _json.loads(line.decode(enc, errors="replace")), None, None
        except _json.NestedTooDeep as e:
            yield lineno, None, None, str(e)
        except (json.JSONDecodeError, LookupError) as e:
            yield lineno, None, None, f"invalid JSON ({_short(e)})"


def _iter_json_stream(path: Path, enc: str) -> Iterator[tuple[int, Any, int | None, str | None]]:
    """Records of a JSON array (or of concatenated / pretty-printed JSON values),
    decoded one element at a time so that a large file is never held whole."""
    dec = json.JSONDecoder()
    with open_file(path, "r", encoding="utf-8-sig" if enc == "utf-8" else enc,
                   errors="replace", newline="") as fh:
        buf, pos, eof = "", 0, False
        in_array = None
        n = 0

        def fill() -> bool:
            nonlocal buf, pos, eof
            chunk = fh.read(1 << 20)
            if not chunk:
                eof = True
                return False
            buf = buf[pos:] + chunk
            pos = 0
            return True

        while True:
            while True:      # skip blanks and separators
                while pos < len(buf) and buf[pos] in " \t\r\n,":
                    pos += 1
                if pos < len(buf) or eof or not fill():
                    break
            if pos >= len(buf):
                return
            if in_array is None:
                in_array = buf[pos] == "["
                if in_array:
                    pos += 1
                    continue
            if in_array and buf[pos] == "]":
                return
            while True:
                try:
                    obj, end = _json.raw_decode(dec, buf, pos)
                    break
                except _json.NestedTooDeep as e:     # its end is unknown: stop here
                    yield n + 1, None, None, f"{e}; the rest of the file was not read"
                    return
                except json.JSONDecodeError as e:
                    if eof or len(buf) - pos > MAX_RECORD_BYTES or not fill():
                        msg = ("record too large to parse" if len(buf) - pos > MAX_RECORD_BYTES
                               else f"invalid JSON ({_short(e)})")
                        yield n + 1, None, None, msg
                        return
            pos = end
            if not in_array and isinstance(obj, list):
                for x in obj:        # one top-level array already in memory
                    n += 1
                    yield n, x, None, None
                continue
            if not in_array and isinstance(obj, dict) and record_text(obj) is None:
                lists = [v for v in obj.values() if isinstance(v, list)]
                if len(lists) == 1:  # {"data": [...]}
                    for x in lists[0]:
                        n += 1
                        yield n, x, None, None
                    continue
            n += 1
            yield n, obj, None, None


def load_text_dataset(path: Path, run_dir: Path, cutoff_len: int | None = None
                      ) -> tuple[Dataset, Source]:
    """Stream a JSON / JSONL text dataset and measure every record.

    Each record becomes a DataItem (``index`` = record number, 1-based; for JSONL the
    line number) with its joined text trimmed to 200 characters in ``caption``,
    ``length`` in characters, ``tokens`` estimated without a tokenizer (see
    :func:`approx_tokens`) and ``control_chars``.  Memory stays bounded: records past
    the first 200,000 keep an item only when flagged (control characters, over
    ``cutoff_len``, unreadable), and ``Dataset.records`` holds the full count.
    """
    path = Path(path)
    shown = _display(path, run_dir)
    ds = Dataset(kind="text", root=str(path))
    src = Source(path=shown, kind="dataset_text")
    src.problems = ds.problems
    try:
        with open_file(path) as fh:
            sample = fh.read(1 << 20)
    except OSError as e:
        ds.problems.append(f"cannot read dataset: {e.strerror or e}")
        return ds, src
    enc, bom = _detect_encoding(sample)
    ds.encoding, ds.bom = enc, bom
    head = _decode(sample[:4096], enc, bom).lstrip()
    first_line = sample.split(b"\n", 1)[0].strip()
    jsonl = False
    if not head.startswith("[") and enc != "utf-16":
        try:
            jsonl = isinstance(_json.loads(_decode(first_line, enc, bom)), dict)
        except (json.JSONDecodeError, ValueError):
            jsonl = False
    if jsonl and len(sample) == len(first_line) and not path.suffix.lower() == ".jsonl":
        jsonl = False      # a single-line .json document: read it as a stream

    total = 0
    invalid: list[int] = []
    nested: list[int] = []
    fh = None
    try:
        if jsonl:
            fh = open_file(path)
            records = _iter_jsonl(fh, enc)
        else:
            records = _iter_json_stream(path, enc)
        for idx, obj, chars, err in records:
            total += 1
            if err is not None:
                if err.startswith("invalid JSON"):
                    invalid.append(idx)
                    continue
                if err.startswith("nested more than"):
                    nested.append(idx)
                    continue
                ds.items.append(DataItem(file=shown, index=idx, length=chars,
                                         tokens=None if chars is None else
                                         int(chars / CHARS_PER_TOKEN), error=err))
                continue
            text = record_text(obj)
            if text is None:
                invalid.append(idx)
                continue
            bad = CONTROL_RE.search(text)
            ctrl = len(CONTROL_RE.findall(text)) if bad else 0
            tokens = approx_tokens(text)
            flagged = ctrl > 0 or (cutoff_len is not None and tokens > cutoff_len)
            if total > MAX_TEXT_ITEMS and not flagged:
                continue
            snippet = None
            if flagged or total <= MAX_TEXT_SNIPPETS:
                start = max(0, bad.start() - 60) if bad else 0
                snippet = text[start:start + SNIPPET_CHARS]
            ds.items.append(DataItem(file=shown, caption=snippet, index=idx, length=len(text),
                                     tokens=tokens, control_chars=ctrl))
    except OSError as e:
        ds.problems.append(f"read error after {total} records: {e.strerror or e}")
    finally:
        if fh is not None:
            fh.close()
    if nested:
        where = "lines" if jsonl else "records"
        ds.problems.append(f"{len(nested)} {where} with JSON nested more than {_json.MAX_DEPTH} levels "
                           f"deep, not read (first: {', '.join(map(str, nested[:5]))})"
                           + ("; the rest of the file was not read" if not jsonl else ""))
    if invalid:
        where = "lines" if jsonl else "records"
        ds.problems.append(f"{len(invalid)} {where} not readable as a sample "
                           f"(first: {', '.join(map(str, invalid[:5]))})")
    if total > MAX_TEXT_ITEMS:
        ds.problems.append(f"{total} records: items kept for the first {MAX_TEXT_ITEMS} "
                           "and for every flagged record")
    ds.records = total - len(invalid) - len(nested)
    src.records = total
    return ds, src
