"""The images a run generated while it trained, decoded once each.

Three places hold them (the names are each trainer's, see :mod:`lorascope.trainers.kohya`
and :mod:`lorascope.trainers.ai_toolkit_samples`):

* kohya sd-scripts / lora-scripts: ``<output_dir>/sample/<name>_<step|eEPOCH>_<i>_<time>[_seed].png``,
  made from the prompts of the ``sample_prompts`` file the config names (its ``i``-th prompt,
  in kohya's prompt syntax: ``--n`` negative prompt, ``--d`` seed, ``--w``/``--h`` size,
  ``--s`` steps, ``--l`` scale);
* ostris ai-toolkit: ``<save_root>/samples/<ms>__<step:09d>_<i>.jpg``, prompts in the job
  config copied to ``<save_root>/config.yaml``;
* TensorBoard image summaries (kept encoded by :mod:`lorascope.ingest.tfevents`).

Every image is decoded with the dataset reader's guarantees
(:func:`lorascope.ingest.dataset.decode_image`: Pillow's pixel limit, draft decoding,
any decoder error caught, a process pool whose dead workers cost only their images) into
one small thumbnail (longer side ``THUMB_SIDE``), from which everything else is computed
once: the blank verdict (black / white / constant, as for dataset images), the noise
score and the :class:`~lorascope.model.Signature` (:mod:`lorascope.imagesim`); the
thumbnail is kept as JPEG bytes for the report.  Nothing here writes anywhere.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Iterable

from lorascope.discover import Found
from lorascope.imagesim import noise_score, signature, strip_key
from lorascope.ingest import dataset as ds_mod
from lorascope.model import EncodedImage, SampleImage, Source
from lorascope.safe_open import open_file
from lorascope.trainers import ai_toolkit_samples, kohya

THUMB_SIDE = 96                 # pixels, longer side of the thumbnail kept per sample
SAMPLE_DRAFT = (THUMB_SIDE, THUMB_SIDE)
THUMB_QUALITY = 75
MAX_SAMPLES = 20_000            # more: each timeline thinned evenly
MAX_PROMPTS_BYTES = 1 << 20     # a prompts file larger than this is not read


# -- decoding (runs in worker processes) ------------------------------------------------

def features(src: str | bytes) -> tuple:
    """(width, height, error, blank, noise, signature, thumbnail JPEG) of one image."""
    w, h, err, _fmt, im = ds_mod.decode_image(src, SAMPLE_DRAFT)
    if im is None:
        return w, h, err or "no image", None, None, None, None
    return image_features(im, w, h)


def image_features(im, w: int | None = None, h: int | None = None) -> tuple:
    """:func:`features` of an image already decoded."""
    from PIL import Image

    w, h = (w, h) if w is not None else im.size
    try:
        rgb = im.convert("RGB")
        rgb.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.BOX)
        blank = ds_mod._degenerate(rgb)
        noise = noise_score(rgb)
        sig = signature(rgb)
        buf = io.BytesIO()
        rgb.save(buf, format="JPEG", quality=THUMB_QUALITY)
    except Exception as e:  # noqa: BLE001 - an odd mode must not stop the others
        return w, h, f"{type(e).__name__}: {ds_mod._short(e)}", None, None, None, None
    return w, h, None, blank, noise, sig, buf.getvalue()


def _features_chunk(srcs: list) -> list[tuple]:
    return [features(s) for s in srcs]


# -- prompts ----------------------------------------------------------------------------

def read_prompts(path: Path, src: Source) -> list[dict]:
    """The prompts of a kohya ``sample_prompts`` file (problems go on ``src``)."""
    try:
        with open_file(path) as fh:          # a regular file, never /proc, /sys or /dev
            data = fh.read(MAX_PROMPTS_BYTES + 1)
    except OSError as e:
        src.problems.append(f"cannot read ({e.strerror or e})")
        return []
    if len(data) > MAX_PROMPTS_BYTES:
        src.problems.append(f"larger than {MAX_PROMPTS_BYTES >> 20} MiB, not read")
        return []
    enc, bom = ds_mod._detect_encoding(data)
    text = ds_mod._decode(data, enc, bom)
    out = kohya.prompts_from(text, path.suffix)
    if out is None:
        src.problems.append(f"not a prompts file kohya reads ({path.suffix or 'no extension'})")
        return []
    src.records = len(out)
    return out


def _ai_toolkit_prompts(folder: Path, run_dir: Path, sources: list[Source]) -> list[dict]:
    from lorascope.ingest.config import _read_document

    cfg = folder.parent / ai_toolkit_samples.CONFIG_NAME
    if not cfg.is_file():
        return []
    src = Source(ds_mod._display(cfg, run_dir), "sample_prompts")
    doc = _read_document(cfg, src.path, src.problems)
    out = ai_toolkit_samples.prompts_from(doc) or []
    src.records = len(out)
    sources.append(src)
    return out


# -- loading ----------------------------------------------------------------------------

def _apply_prompt(s: SampleImage, prompts: list[dict]) -> None:
    if s.prompt_index is None or not (0 <= s.prompt_index < len(prompts)):
        return
    p = prompts[s.prompt_index]
    if isinstance(p.get("prompt"), str):
        s.prompt = p["prompt"][:500]
    if isinstance(p.get("negative_prompt"), str):
        s.negative_prompt = p["negative_prompt"][:500]
    if s.seed is None and isinstance(p.get("seed"), int):
        s.seed = p["seed"]


def _thin(samples: list[SampleImage], cap: int, problems: list[str]) -> list[SampleImage]:
    """At most ``cap`` samples: every k-th of each timeline (its last one kept)."""
    if len(samples) <= cap:
        return samples
    k = math.ceil(len(samples) / cap)
    groups: dict[tuple, list[SampleImage]] = {}
    for s in samples:
        groups.setdefault(strip_key(s), []).append(s)
    out = []
    for g in groups.values():
        g.sort(key=lambda s: (s.step if s.step is not None else -1, s.epoch or 0))
        keep = g[::k]
        if g[-1] is not keep[-1]:
            keep.append(g[-1])
        out.extend(keep)
    problems.append(f"{len(samples)} sample images: more than {cap}, every {k}th of each "
                    "prompt's timeline was read")
    return out


def load_samples(run_dir: Path, files: Iterable[Found], tb_images: Iterable[EncodedImage] = (),
                 prompts: list[dict] | None = None, *, jobs: int | None = None,
                 progress: bool = False) -> tuple[list[SampleImage], list[Source]]:
    """Decode a run's sample images (``files``: discover's ``sample_image`` files) and its
    TensorBoard images.  ``prompts``: the kohya ``sample_prompts`` file's prompts, when the
    config names one.  Samples named by epoch only keep ``step=None`` (build maps epochs to
    steps).  Returns the samples and one Source per sample folder (and prompts file read)."""
    run_dir = Path(run_dir)
    sources: list[Source] = []
    by_folder: dict[str, list[tuple[Found, dict, str]]] = {}
    for f in files:
        folder, name = f.rel.rsplit("/", 1) if "/" in f.rel else ("", f.rel)
        base = folder.rsplit("/", 1)[-1]
        if base == kohya.SAMPLE_DIR:
            info, who = kohya.sample_name(name), "kohya"
        elif base == ai_toolkit_samples.SAMPLE_DIR:
            info, who = ai_toolkit_samples.sample_name(name), "ai-toolkit"
        else:
            continue
        if info is not None:
            by_folder.setdefault(folder, []).append((f, info, who))

    samples: list[SampleImage] = []
    paths: list = []
    for folder, entries in sorted(by_folder.items()):
        src = Source(folder, "sample_images")
        sources.append(src)
        folder_prompts = prompts or []
        if any(who == "ai-toolkit" for _, _, who in entries):
            folder_prompts = _ai_toolkit_prompts(run_dir / folder, run_dir, sources) or folder_prompts
        # the same (step, prompt, seed) written again by a later training into the same
        # folder: the newest file wins
        newest: dict[tuple, tuple[Found, dict]] = {}
        for f, info, _who in entries:
            key = (info.get("step"), info.get("epoch"), info["index"], info.get("seed"))
            old = newest.get(key)
            if old is None or (info.get("written") or "") > (old[1].get("written") or ""):
                newest[key] = (f, info)
        if len(newest) < len(entries):
            src.problems.append(f"{len(entries) - len(newest)} older images of the same step, "
                                "prompt and seed (a training run again into this folder): "
                                "the newest of each read")
        for f, info in sorted(newest.values(), key=lambda t: t[0].rel):
            s = SampleImage(file=f.rel, step=info.get("step"), epoch=info.get("epoch"),
                            prompt_index=info["index"], seed=info.get("seed"))
            _apply_prompt(s, folder_prompts)
            if s.step is None and s.epoch is None:
                continue
            samples.append(s)
            paths.append(str(f.path))
        src.records = len(newest)
    tb = list(tb_images)
    for im in tb:
        samples.append(SampleImage(file=f"{im.source}#{im.tag}@{im.step}", step=im.step, tag=im.tag))
        paths.append(im.data)
    problems: list[str] = []
    import importlib.util
    if importlib.util.find_spec("imagehash") is None:
        # a core dependency; without it no signature could be made and every sample would
        # read as unreadable: say so once instead
        why = ("imagehash is not installed (pip install imagehash, a lorascope dependency): "
               f"{len(samples)} sample images were not read")
        if sources:
            sources[0].problems.append(why)
        elif tb:
            sources.append(Source(tb[0].source, "sample_images", records=len(tb), problems=[why]))
        return [], sources
    if len(samples) > MAX_SAMPLES:
        keep = {id(s) for s in _thin(samples, MAX_SAMPLES, problems)}
        pairs = [(s, p) for s, p in zip(samples, paths) if id(s) in keep]
        samples, paths = [s for s, _ in pairs], [p for _, p in pairs]
    results = ds_mod.scan_images(paths, jobs=jobs, progress=progress, problems=problems,
                                 chunk_fn=_features_chunk, what="reading samples")
    bad = 0
    for s, res in zip(samples, results):
        if res is None:
            s.error = "not checked (a worker died)"
            continue
        s.width, s.height, s.error, s.blank, s.noise, s.signature, s.thumb = res
        bad += s.error is not None
    if sources:
        sources[0].problems.extend(problems)
        if bad:
            sources[0].problems.append(f"{bad} sample images could not be decoded")
    elif problems or bad:
        # TensorBoard images only: their event file is the source
        sources.append(Source(tb[0].source, "sample_images", records=len(tb),
                              problems=problems + ([f"{bad} images could not be decoded"] if bad else [])))
    return samples, sources
