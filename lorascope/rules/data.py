"""`data.*`: the dataset a run trained on — images, captions, text samples.

These rules read ``run.datasets`` only. Data problems are fixed in the files, not in
the config; the title and evidence say what to change. Every finding lists the
offending files (capped at ``max_files``).

One fix is automatic: when a few images of a dataset cannot be used (undecodable,
blank, or named by metadata.csv but absent) -- at most ``max_exclude_fraction`` of its
items -- ``data.corrupt_image``, ``data.degenerate_image`` and ``data.missing_file``
set ``fix = {"exclude_files": [...]}``: the dataset files to leave out, as paths
relative to the run directory (as in ``files``, but never capped). ``lorascope rerun
--fix`` trains on a filtered copy of the dataset without them. More offenders than
that mean the dataset itself needs work, and no fix is set. ``data.case_mismatch``
sets none either: the image is fine, only its name is misspelt, so the fix is a
rename, not dropping a good image. Text datasets get no automatic fix (dropping
records would need a rewritten JSON/JSONL copy per dataset format; not done).
"""
from __future__ import annotations

import math
import os
import re
from collections import Counter

from lorascope.model import DataItem, Dataset, Finding, Run
from lorascope.rules.registry import Params, rule

UTF8_NAMES = {"utf-8", "utf_8", "utf8", "ascii"}


def _cap(files: list[str], limit: int) -> tuple[list[str], list[str]]:
    """At most ``limit`` files, and an evidence line naming how many were left out."""
    files = list(dict.fromkeys(f for f in files if f))
    if len(files) <= limit:
        return files, []
    return files[:limit], [f"and {len(files) - limit} more files"]


def _exclude_fix(ds: Dataset, files: list[str], p: Params,
                 evidence: list[str]) -> dict:
    """``{"exclude_files": files}`` when they are a small share of the dataset (at most
    the rule's ``max_exclude_fraction`` of its items), else ``{}`` and an evidence line
    saying why there is no automatic fix."""
    files = list(dict.fromkeys(f for f in files if f))
    total = len(ds.items)
    if not files or not total:
        return {}
    frac = p.get("max_exclude_fraction", 0.0)
    if len(files) <= frac * total and len(files) < total:
        return {"exclude_files": files}
    evidence.append(f"{len(files)} of {total} dataset items are affected (more than "
                    f"{frac:.0%}): too many to leave out automatically, the dataset needs work")
    return {}


def _where(ds: Dataset) -> str:
    return ds.manifest or ds.root


def _shown_root(ds: Dataset, run) -> str:
    """The dataset folder relative to the run directory when it lies inside it."""
    from pathlib import Path
    try:
        return Path(ds.root).resolve().relative_to(Path(run.path).resolve()).as_posix() or "."
    except (ValueError, OSError):
        return ds.root


def _label(it: DataItem) -> str:
    return it.file if it.file else f"row {it.index}"


def _short(s: str, n: int = 60) -> str:
    s = s if len(s) <= n else s[:n - 3] + "..."
    return s.encode("unicode_escape").decode("ascii") if any(
        ord(c) < 32 or 0x7f <= ord(c) <= 0x9f or c == "\ufffd" for c in s) else s


def _image_sets(run: Run) -> list[Dataset]:
    return [d for d in run.datasets if d.kind == "images"]


def _text_sets(run: Run) -> list[Dataset]:
    return [d for d in run.datasets if d.kind == "text"]


# -- files and encodings -------------------------------------------------------------------

@rule("data.encoding", needs=("datasets",))
def data_encoding(run: Run, p: Params) -> list[Finding]:
    """metadata.csv, caption files or a text dataset are not UTF-8, or carry a BOM.

    ## What it detects
    A dataset manifest (`metadata.csv`), per-image caption files or a JSON/JSONL text
    dataset saved in another encoding than UTF-8 (GBK, Shift-JIS, cp1252, UTF-16, as
    guessed by charset-normalizer), or saved as UTF-8 with a byte-order mark.

    ## Why it matters
    Trainers read these files as UTF-8. A GBK file stops the run with
    `UnicodeDecodeError` or turns Chinese captions into mojibake; with a BOM, the first
    column of the CSV reads `\\ufefffile_name`, so a loader looking for `file_name` finds
    no image column, and a JSONL line starting with a BOM is not valid JSON to Python.

    ## Example
    `metadata.csv` exported from Excel on a Chinese-locale Windows: `file_name,text` then
    `001.png,一只猫` in GBK bytes.

    ## Fix
    Re-save the file as UTF-8 without BOM (e.g. `iconv -f GBK -t UTF-8 metadata.csv`,
    or "UTF-8" rather than "UTF-8 with BOM" in the editor's save dialog).
    """
    out = []
    for ds in run.datasets:
        enc = (ds.encoding or "").lower()
        bad_enc = bool(enc) and enc.replace("-", "_") not in {e.replace("-", "_") for e in UTF8_NAMES}
        if not (bad_enc or ds.bom):
            continue
        if ds.kind == "images" and not ds.manifest:
            what = "caption files"
            files = []
            evidence = [s for s in ds.problems if "caption files are not UTF-8" in s]
            for s in evidence:
                files = [f.strip() for f in s.split(": ", 1)[-1].split(",")]
                files = [f.split(" and ")[0] for f in files]
        else:
            name = _where(ds)
            what = os.path.basename(name.rstrip("/")) or name
            files = [name]
            evidence = []
        if bad_enc:
            title = f"{what} is encoded as {ds.encoding}, not UTF-8"
            evidence.append(f"encoding detected: {ds.encoding} (UTF-8 decoding fails); "
                            "trainers read this file as UTF-8")
        else:
            title = f"{what} starts with a UTF-8 byte-order mark (BOM)"
            if ds.kind == "images":
                evidence.append("a UTF-8 reader sees the first column as '\\ufefffile_name', "
                                "not 'file_name'")
            else:
                evidence.append("the first record starts with U+FEFF, which JSON parsers reject")
        if bad_enc and ds.kind == "images":
            caps = [it.caption for it in ds.items if it.caption and any(ord(c) > 127 for c in it.caption)]
            if caps:
                evidence.append(f"e.g. caption {caps[0][:40]!r} (as decoded with {ds.encoding})")
        files, more = _cap(files, p["max_files"])
        out.append(p.finding(title=title, evidence=evidence + more, files=files))
    return out


@rule("data.missing_file", needs=("datasets",))
def data_missing_file(run: Run, p: Params) -> list[Finding]:
    """A file named by the dataset does not exist.

    ## What it detects
    Rows of `metadata.csv` whose `file_name` is not found under the dataset directory
    (and not under another letter case either: that is `data.case_mismatch`), empty
    `file_name` cells, and names that point outside the dataset directory
    (`../../etc/passwd`, absolute paths), which lorascope does not open.

    ## Why it matters
    The loader stops with `FileNotFoundError` when it reaches the row — sometimes hours
    into training — or silently trains on fewer images than the caption file suggests.

    ## Example
    `metadata.csv` lists `0042.png`, but the image was deleted while curating the set.

    ## Fix
    Remove the rows, or put the files back. Keep every `file_name` relative to the
    folder that holds `metadata.csv`. Automatic fix (`lorascope rerun --fix`): when the
    missing files are at most `max_exclude_fraction` of the dataset's items,
    `exclude_files` lists them, and the replay trains on a copy of the dataset whose
    `metadata.csv` drops their rows (names pointing outside the dataset directory are
    not listed: fix those rows by hand).
    """
    out = []
    for ds in _image_sets(run):
        gone = [it for it in ds.items if not it.exists and it.disk_name is None]
        if not gone:
            continue
        escape = [it for it in gone if it.error and "escapes" in it.error]
        missing = [it for it in gone if it not in escape]
        named = sum(1 for it in ds.items if it.index is not None)
        ev = []
        if missing:
            ev.append(f"{len(missing)} of {named} files named by {_where(ds)} do not exist: "
                      + ", ".join(_label(it) for it in missing[:5])
                      + (" ..." if len(missing) > 5 else ""))
        if escape:
            ev.append(f"{len(escape)} names point outside the dataset directory and were not "
                      "read: " + ", ".join(_short(_label(it)) for it in escape[:5]))
        files, more = _cap([_label(it) for it in gone], p["max_files"])
        title = (f"{len(gone)} file(s) named by the dataset do not exist"
                 if missing else f"{len(gone)} dataset name(s) point outside the dataset directory")
        fix = _exclude_fix(ds, [it.file for it in missing if it.file], p, ev)
        out.append(p.finding(title=title, evidence=ev + more, files=files, fix=fix))
    return out


@rule("data.case_mismatch", needs=("datasets",))
def data_case_mismatch(run: Run, p: Params) -> list[Finding]:
    """A file named by the dataset exists only under a different letter case.

    ## What it detects
    A `file_name` in `metadata.csv` that does not exist as written, while a file whose
    name differs only in letter case (or in `\\` vs `/`, or in Unicode NFC/NFD form)
    does.

    ## Why it matters
    Windows and macOS file systems ignore case, so the dataset works where it was
    made; Linux does not, and the trainer fails with `FileNotFoundError` (or drops the
    image) on the training server.

    ## Example
    `metadata.csv` says `Image_001.jpg`; the disk holds `image_001.jpg`.

    ## Fix
    Rename the files or edit the CSV so that both spell each name identically. No
    automatic fix: the image itself is fine, and leaving it out of the replay
    (`exclude_files`) would throw away good data to work around a misspelt name.
    """
    out = []
    for ds in _image_sets(run):
        bad = [it for it in ds.items if not it.exists and it.disk_name is not None]
        if not bad:
            continue
        ev = [f"{len(bad)} names differ from the file on disk only in case: "
              + "; ".join(f"{os.path.basename(it.file or '')!r} in {os.path.basename(_where(ds))}, "
                          f"{it.disk_name!r} on disk" for it in bad[:5])
              + (" ..." if len(bad) > 5 else "")]
        files, more = _cap([_label(it) for it in bad], p["max_files"])
        out.append(p.finding(
            title=f"{len(bad)} file name(s) match only under a different letter case "
                  "(found on Windows/macOS, not on Linux)",
            evidence=ev + more, files=files))
    return out


# -- image content --------------------------------------------------------------------------

@rule("data.corrupt_image", needs=("datasets",))
def data_corrupt_image(run: Run, p: Params) -> list[Finding]:
    """An image fails to decode.

    ## What it detects
    Images that Pillow cannot fully decode: truncated or damaged JPEG/PNG data (which
    `Image.verify()` lets through), files that are not images, broken EXIF data, and
    images above Pillow's decompression-bomb limit (89.5 megapixels).

    ## Why it matters
    The trainer decodes each image when it first needs it, so a bad file crashes the
    run (`OSError: image file is truncated`) hours in, or — with
    `LOAD_TRUNCATED_IMAGES` — trains on a half-grey picture.

    ## Example
    An image copied while the download was still running: the JPEG ends after 40% of
    its bytes.

    ## Fix
    Re-export or re-download the listed files, or remove them (and their rows or
    caption files). Downscale huge images to the training resolution. Automatic fix
    (`lorascope rerun --fix`): when the bad images are at most `max_exclude_fraction`
    of the dataset's items, `exclude_files` lists them, and the replay trains on a copy
    of the dataset without them (their `metadata.csv` rows and caption files dropped).
    """
    out = []
    for ds in _image_sets(run):
        bad = [it for it in ds.items if it.exists and it.error]
        if not bad:
            continue
        lim = p["max_evidence"]
        ev = [f"{_label(it)}: {it.error}" for it in bad[:lim]]
        if len(bad) > lim:
            ev.append(f"... {len(bad) - lim} more undecodable images")
        total = sum(1 for it in ds.items if it.exists)
        files, more = _cap([_label(it) for it in bad], p["max_files"])
        fix = _exclude_fix(ds, [it.file for it in bad if it.file], p, ev)
        out.append(p.finding(title=f"{len(bad)} of {total} images fail to decode",
                             evidence=ev + more, files=files, fix=fix))
    return out


@rule("data.degenerate_image", needs=("datasets",))
def data_degenerate_image(run: Run, p: Params) -> list[Finding]:
    """Constant, all-black or all-white images.

    ## What it detects
    Images that decode fine but hold no picture: every pixel below 8 (black), above
    247 (white), or of a single colour (per-channel standard deviation below 1),
    measured on a small (about 64 px) decode of the image.

    ## Why it matters
    A blank image paired with a caption teaches the adapter that the caption means a
    blank; a few of them in a small LoRA dataset visibly wash out the results.
    Black frames typically come from NSFW filters or failed renders, white ones from
    failed exports or transparent PNGs flattened on white.

    ## Example
    `15_mychar/0007.png` is 1024x1024 pure black: the image generator's safety checker
    replaced it.

    ## Fix
    Delete the listed images (and their captions) or replace them with the intended
    pictures. Automatic fix (`lorascope rerun --fix`): when the blank images are at
    most `max_exclude_fraction` of the dataset's items, `exclude_files` lists them, and
    the replay trains on a copy of the dataset without them.
    """
    out = []
    for ds in _image_sets(run):
        bad = [it for it in ds.items if it.degenerate]
        if not bad:
            continue
        kinds = Counter(it.degenerate for it in bad)
        ev = [", ".join(f"{n} {k}" for k, n in kinds.most_common())
              + f" of {sum(1 for it in ds.items if it.exists)} images"]
        ev += [f"{_label(it)}: {it.degenerate}" for it in bad[:5]]
        files, more = _cap([_label(it) for it in bad], p["max_files"])
        fix = _exclude_fix(ds, [it.file for it in bad if it.file], p, ev)
        out.append(p.finding(title=f"{len(bad)} image(s) are blank ("
                             + ", ".join(k for k, _ in kinds.most_common()) + ")",
                             evidence=ev + more, files=files, fix=fix))
    return out


def _resolution(v) -> float | None:
    """The training resolution as one side length (sqrt of the area for W,H)."""
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v) if v > 0 else None
    if isinstance(v, (list, tuple)):
        nums = [float(x) for x in v if isinstance(x, (int, float)) and not isinstance(x, bool)]
    else:
        nums = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", str(v))]
    nums = [x for x in nums if x > 0][:2]
    if not nums:
        return None
    return math.sqrt(nums[0] * nums[-1])


def _spread(values: list[float]) -> float:
    """max/min of the values, over their middle 90% when there are 20 or more."""
    v = sorted(values)
    if len(v) >= 20:
        lo, hi = v[int(0.05 * (len(v) - 1))], v[int(math.ceil(0.95 * (len(v) - 1)))]
    else:
        lo, hi = v[0], v[-1]
    return hi / lo if lo > 0 else math.inf


@rule("data.mixed_resolution", needs=("datasets",))
def data_mixed_resolution(run: Run, p: Params) -> list[Finding]:
    """Image sizes or aspect ratios vary widely.

    ## What it detects
    Image datasets whose aspect ratios span more than `aspect_spread` (widest / tallest,
    over the middle 90% of images), whose sizes (square root of the pixel count) span
    more than `size_spread`, or where more than `small_fraction` of the images are
    smaller than `small_side_ratio` times the configured training `resolution`.

    ## Why it matters
    Without aspect-ratio bucketing every image is resized and center-cropped to the
    training square, cutting the subject out of panoramas and tall portraits; images
    far below the training resolution are upscaled and teach the LoRA blur and JPEG
    artefacts. With bucketing, very different ratios make many buckets of one image
    each, so batches are smaller than configured.

    ## Example
    `resolution: 768`, but half the images are 256x256 thumbnails scraped from a
    gallery, beside 3000x1000 banners.

    ## Fix
    Crop images to a few similar aspect ratios and at least the training resolution
    (or lower `resolution`); enable bucketing (`enable_bucket`) for mixed ratios;
    replace thumbnails with full-size originals.
    """
    out = []
    res = _resolution(run.config.get("resolution"))
    for ds in _image_sets(run):
        ok = [it for it in ds.items if it.exists and not it.error and it.width and it.height]
        if len(ok) < p["min_images"]:
            continue
        ars = [it.width / it.height for it in ok]
        sides = [math.sqrt(it.width * it.height) for it in ok]
        ev, offenders = [], []
        ar_spread = _spread(ars)
        if ar_spread > p["aspect_spread"]:
            med = sorted(ars)[len(ars) // 2]
            far = [it for it, a in zip(ok, ars) if abs(math.log(a / med)) > math.log(p["aspect_spread"]) / 2]
            ev.append(f"aspect ratios (w/h) range from {min(ars):.2f} to {max(ars):.2f} "
                      f"(spread {ar_spread:.1f}x > {p['aspect_spread']}); median {med:.2f}")
            offenders += far
        size_spread = _spread(sides)
        if size_spread > p["size_spread"]:
            small = min(ok, key=lambda it: it.width * it.height)
            big = max(ok, key=lambda it: it.width * it.height)
            med = sorted(sides)[len(sides) // 2]
            ev.append(f"sizes range from {small.width}x{small.height} to {big.width}x{big.height} "
                      f"(spread {size_spread:.1f}x > {p['size_spread']})")
            offenders += [it for it, s in zip(ok, sides)
                          if abs(math.log(s / med)) > math.log(p["size_spread"]) / 2]
        if res:
            small = [it for it, s in zip(ok, sides) if s < p["small_side_ratio"] * res]
            if len(small) / len(ok) > p["small_fraction"]:
                ev.append(f"{len(small)} of {len(ok)} images ({len(small) / len(ok):.0%}) are "
                          f"smaller than {p['small_side_ratio']:.0%} of the training resolution "
                          f"{res:.0f} (e.g. {_label(small[0])}: {small[0].width}x{small[0].height})")
                offenders += small
        if not ev:
            continue
        files, more = _cap([_label(it) for it in offenders], p["max_files"])
        out.append(p.finding(title=f"Image sizes / aspect ratios vary widely in {_shown_root(ds, run)}",
                             evidence=ev + more, files=files))
    return out


# -- captions ------------------------------------------------------------------------------

def _norm_caption(c: str) -> str:
    c = re.sub(r"[\W_]+", " ", c.casefold())
    return re.sub(r"\s+", " ", c).strip()


@rule("data.caption_quality", needs=("datasets",))
def data_caption_quality(run: Run, p: Params) -> list[Finding]:
    """Empty, vague or duplicated captions.

    ## What it detects
    In an image dataset that has captions: images with an empty caption or none at all,
    captions that say nothing (`image`, `a nice picture`, the file's own name, pandas'
    `nan` for an empty cell: the list is the catalog's `vague` parameter), and one
    caption text shared by many images (at least `dup_fraction` of the captioned images
    share their caption with another image).

    ## Why it matters
    The caption is what the LoRA learns to tie to each image. Empty and vague captions
    bind the concept to nothing the user will prompt for; a caption repeated across
    many images makes every detail of those images part of the trigger, so the LoRA
    cannot separate subject from background, pose or clothing.

    ## Example
    A WD14 tagger run failed on half the images, leaving empty `.txt` files, and the
    CSV fills the gap with `a nice picture`.

    ## Fix
    Re-caption the listed images (a tagger or a captioning model, then review);
    describe what varies between images so only the concept is left to the trigger word.
    """
    out = []
    vague = {_norm_caption(v) for v in p["vague"]}
    for ds in _image_sets(run):
        items = [it for it in ds.items if it.exists and not it.error]
        if not any(it.caption is not None for it in items):
            continue       # no captions at all: class-token / folder-name training
        empty = [it for it in items if it.caption is None or not it.caption.strip()]
        vag = []
        for it in items:
            if it.caption is None or not it.caption.strip():
                continue
            n = _norm_caption(it.caption)
            stem = _norm_caption(os.path.splitext(os.path.basename(it.file or ""))[0])
            if n in vague or (stem and n == stem):
                vag.append(it)
        groups = Counter(_norm_caption(it.caption) for it in items
                         if it.caption and it.caption.strip() and it not in vag)
        dup_items = [it for it in items if it.caption and it.caption.strip() and it not in vag
                     and groups[_norm_caption(it.caption)] > 1]
        captioned = len(items) - len(empty)
        ev, offenders = [], []
        if len(empty) + len(vag) >= p["min_bad"]:
            blank = [it for it in empty if it.caption is not None or it.index is None and not ds.manifest]
            unlisted = [it for it in empty if it not in blank]
            if blank:
                ev.append(f"{len(blank)} of {len(items)} images have an empty or no caption: "
                          + ", ".join(_label(it) for it in blank[:5]) + (" ..." if len(blank) > 5 else ""))
            if unlisted:
                ev.append(f"{len(unlisted)} images on disk are not in {os.path.basename(_where(ds))}, "
                          "so they have no caption: " + ", ".join(_label(it) for it in unlisted[:5])
                          + (" ..." if len(unlisted) > 5 else ""))
            if vag:
                ev.append(f"{len(vag)} captions say nothing about the image: "
                          + "; ".join(f"{_label(it)}: {it.caption.strip()[:40]!r}" for it in vag[:5]))
            offenders += empty + vag
        if (captioned and len(dup_items) >= p["dup_min_images"]
                and len(dup_items) / captioned >= p["dup_fraction"]):
            top, n = max(((c, k) for c, k in groups.items() if k > 1), key=lambda x: x[1])
            ev.append(f"{len(dup_items)} of {captioned} captioned images share their caption with "
                      f"another image; the most common ({n} images): {top[:60]!r}")
            offenders += dup_items
        if not ev:
            continue
        files, more = _cap([_label(it) for it in offenders], p["max_files"])
        out.append(p.finding(title=f"{len(set(map(id, offenders)))} image(s) have empty, vague "
                                   "or duplicated captions", evidence=ev + more, files=files))
    return out


# -- text samples --------------------------------------------------------------------------

def _records(ds: Dataset) -> int:
    return ds.records if ds.records is not None else len(ds.items)


@rule("data.text_control_chars", needs=("datasets",))
def data_text_control_chars(run: Run, p: Params) -> list[Finding]:
    """Control characters in text samples.

    ## What it detects
    Text records holding C0 control characters other than tab, newline and carriage
    return (e.g. `\\x07`, `\\x1b`, NUL), DEL, C1 controls (`\\x80`-`\\x9f`), or U+FFFD
    replacement characters.

    ## Why it matters
    These characters are invisible in editors but the tokenizer turns them into tokens
    the model then learns to emit. Replacement characters mean the text was decoded
    with the wrong encoding somewhere upstream, so the surrounding words are mangled too;
    C1 controls usually come from cp1252 text read as Latin-1.

    ## Example
    Samples scraped from a terminal keep ANSI colour codes: `\\x1b[32mOK\\x1b[0m`.

    ## Fix
    Strip the characters when building the dataset (e.g. remove `[\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f-\\x9f]`)
    and re-decode sources that show U+FFFD with their real encoding.
    """
    out = []
    for ds in _text_sets(run):
        bad = [it for it in ds.items if it.control_chars > 0]
        if len(bad) < p["min_records"]:
            continue
        total = sum(it.control_chars for it in bad)
        lim = p["max_evidence"]
        ev = [f"{len(bad)} of {_records(ds)} records contain control or replacement "
              f"characters ({total} in all)"]
        repl = sum(1 for it in bad if it.caption and "\ufffd" in it.caption)
        if repl:
            ev.append(f"{repl} records show U+FFFD replacement characters: the text was "
                      "decoded with the wrong encoding upstream")
        ev += [f"record {it.index}: {_short(it.caption or '', 80)!s}" for it in bad[:lim]]
        if len(bad) > lim:
            ev.append(f"... and {len(bad) - lim} more records")
        out.append(p.finding(title=f"{len(bad)} text sample(s) contain control characters",
                             evidence=ev, files=[bad[0].file or ds.root]))
    return out


@rule("data.text_too_long", needs=("datasets",))
def data_text_too_long(run: Run, p: Params) -> list[Finding]:
    """Text samples longer than the configured cutoff.

    ## What it detects
    Records whose estimated token count exceeds `margin` x the run's `cutoff_len`.
    Without the model's tokenizer the count is estimated: one token per CJK
    character and 3.5 characters per token for other text (the prompt template's own
    tokens are not counted).

    ## Why it matters
    LLaMA-Factory and most SFT scripts cut every sample at `cutoff_len` tokens. The cut
    falls on the end of the sample — the answer the model is meant to learn — so the
    model is trained on answers that stop mid-sentence, or on no answer at all.

    ## Example
    `cutoff_len: 1024` with a dataset of legal documents of 6,000-20,000 characters.

    ## Fix
    Raise `cutoff_len` if memory allows, or split long samples into several shorter
    ones (or drop them) when building the dataset.
    """
    cutoff = run.config.get("cutoff_len")
    if not isinstance(cutoff, (int, float)) or isinstance(cutoff, bool) or cutoff <= 0:
        return []
    out = []
    limit = cutoff * p["margin"]
    for ds in _text_sets(run):
        long_ = [it for it in ds.items if it.tokens is not None and it.tokens > limit]
        if len(long_) < p["min_records"]:
            continue
        lim = p["max_evidence"]
        worst = max(long_, key=lambda it: it.tokens)
        ev = [f"{len(long_)} of {_records(ds)} records exceed cutoff_len {int(cutoff)} "
              f"(estimated tokens, no tokenizer: 1 per CJK character, 3.5 characters per "
              f"token otherwise); the longest, record {worst.index}, is about "
              f"{worst.tokens:,} tokens ({worst.length:,} characters)"]
        ev.append("records: " + ", ".join(f"{it.index} (~{it.tokens:,})" for it in long_[:lim])
                  + (f" ... and {len(long_) - lim} more" if len(long_) > lim else ""))
        out.append(p.finding(title=f"{len(long_)} text sample(s) are longer than cutoff_len "
                                   f"{int(cutoff)} and get truncated",
                             evidence=ev, files=[long_[0].file or ds.root]))
    return out
