"""Image folders and text datasets, built with the real writers (Pillow, json) in tmp_path."""
from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lorascope.ingest.dataset import (
    ESCAPE_ERROR,
    _scan_image,
    approx_tokens,
    load_image_dataset,
    load_text_dataset,
    scan_images,
)

RNG = np.random.default_rng(0)


def noise(w: int = 96, h: int = 64) -> Image.Image:
    return Image.fromarray((RNG.random((h, w, 3)) * 255).astype("uint8"))


def truncated_jpeg(path: Path, w: int = 160, h: int = 120) -> None:
    buf = io.BytesIO()
    noise(w, h).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    path.write_bytes(data[: len(data) * 6 // 10])


def bomb_png(path: Path, w: int, h: int) -> None:
    """A valid PNG header claiming w x h pixels, with a tiny IDAT (nothing is decoded)."""
    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def by_name(ds, name):
    return next(it for it in ds.items if it.file and it.file.endswith(name))


# -- decoding ------------------------------------------------------------------------------

def test_truncated_jpeg_passes_verify_but_is_caught(tmp_path):
    p = tmp_path / "cut.jpg"
    truncated_jpeg(p)
    with Image.open(p) as im:
        im.verify()                      # what a naive check does: no complaint
    w, h, err, _deg, fmt = _scan_image(str(p))
    assert (w, h, fmt) == (160, 120, "JPEG")
    assert err and "truncated" in err


def test_truncated_png_is_caught(tmp_path):
    p = tmp_path / "cut.png"
    buf = io.BytesIO()
    noise(128, 128).save(buf, "PNG")
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    _w, _h, err, _deg, _fmt = _scan_image(str(p))
    assert err and "truncated" in err


@pytest.mark.parametrize("w,h", [(10_000, 10_000), (60_000, 60_000)])
def test_decompression_bomb_is_refused_with_its_size(tmp_path, w, h):
    p = tmp_path / "bomb.png"
    bomb_png(p, w, h)
    _w, _h, err, _deg, _fmt = _scan_image(str(p))
    assert err == f"decompression bomb: {w}x{h}"


def test_degenerate_images(tmp_path):
    Image.new("RGB", (300, 200), (0, 0, 0)).save(tmp_path / "black.png")
    Image.new("RGB", (300, 200), (255, 255, 255)).save(tmp_path / "white.jpg", quality=95)
    Image.new("RGB", (300, 200), (90, 140, 30)).save(tmp_path / "flat.png")
    noise(300, 200).save(tmp_path / "ok.jpg")
    got = {n: _scan_image(str(tmp_path / n))[3] for n in ("black.png", "white.jpg", "flat.png", "ok.jpg")}
    assert got == {"black.png": "black", "white.jpg": "white", "flat.png": "constant", "ok.jpg": None}


def test_size_is_the_full_header_size_not_the_draft(tmp_path):
    noise(1024, 512).save(tmp_path / "big.jpg")
    assert _scan_image(str(tmp_path / "big.jpg"))[:3] == (1024, 512, None)


def test_parallel_scan_matches_sequential(tmp_path):
    paths = []
    for i in range(80):
        p = tmp_path / f"{i}.jpg"
        if i % 20 == 0:
            truncated_jpeg(p)
        else:
            noise(40, 30).save(p)
        paths.append(str(p))
    par = scan_images(paths, jobs=2)
    seq = scan_images(paths, jobs=1)
    assert par == seq
    assert sum(1 for r in par if r[2]) == 4


# -- image folders -------------------------------------------------------------------------

def test_manifest_with_bom_case_mismatch_missing_and_escape(tmp_path):
    run = tmp_path / "run"
    data = run / "data"
    data.mkdir(parents=True)
    noise().save(data / "a.png")
    noise().save(data / "image_001.jpg")
    truncated_jpeg(data / "cut.jpg")
    noise().save(data / "extra.png")               # on disk, not in the CSV
    (data / "metadata.csv").write_text(
        "file_name,text\n"
        "a.png,a red fox in snow\n"
        "Image_001.jpg,a cat on a sofa\n"
        "gone.png,a dog\n"
        "../../etc/passwd,evil\n"
        "/etc/hostname,evil\n"
        "cut.jpg,a half image\n", encoding="utf-8-sig")
    ds, src = load_image_dataset(data, run)
    assert (src.kind, src.path, ds.manifest) == ("dataset_csv", "data/metadata.csv", "data/metadata.csv")
    assert ds.bom and ds.encoding == "utf-8"
    assert by_name(ds, "a.png").caption == "a red fox in snow"      # BOM did not eat the header
    case = by_name(ds, "Image_001.jpg")
    assert not case.exists and case.disk_name == "image_001.jpg"
    assert not by_name(ds, "gone.png").exists and by_name(ds, "gone.png").disk_name is None
    esc = [it for it in ds.items if it.error == ESCAPE_ERROR]
    assert sorted(it.file for it in esc) == ["../../etc/passwd", "/etc/hostname"]
    assert all(not it.exists and it.width is None for it in esc)
    assert "truncated" in by_name(ds, "cut.jpg").error
    extra = by_name(ds, "extra.png")
    assert extra.caption is None and extra.index is None and extra.exists
    # image_001.jpg is accounted for by the mismatched row, not listed again
    assert [it.file for it in ds.items].count("data/image_001.jpg") == 0
    assert src.records == len(ds.items) == 7


def test_gbk_manifest_is_detected_and_decoded(tmp_path):
    caps = ["一只猫坐在窗台上，阳光很好", "穿着红色连衣裙的女孩在公园里散步"]
    for i in range(2):
        noise().save(tmp_path / f"{i}.png")
    (tmp_path / "metadata.csv").write_bytes(
        ("file_name,text\n" + "".join(f"{i}.png,{c}\n" for i, c in enumerate(caps))).encode("gbk"))
    ds, _ = load_image_dataset(tmp_path, tmp_path)
    assert ds.encoding in ("gb18030", "gbk", "gb2312") and not ds.bom
    assert [by_name(ds, f"{i}.png").caption for i in range(2)] == caps


def test_caption_files_and_concept_folders(tmp_path):
    run = tmp_path / "run"
    concept = run / "img" / "10_mychar"
    concept.mkdir(parents=True)
    noise().save(concept / "001.png")
    (concept / "001.txt").write_text("mychar, smiling, outdoors", encoding="utf-8")
    noise().save(concept / "002.jpg")
    (concept / "002.caption").write_text("mychar, sitting\n", encoding="utf-8")
    noise().save(concept / "003.png")                # no caption file
    stray = run / "img" / "mychar_extra"
    stray.mkdir()
    noise().save(stray / "004.png")
    ds, src = load_image_dataset(run / "img", run)
    assert (src.kind, src.path, ds.manifest) == ("dataset_images", "img", None)
    assert by_name(ds, "001.png").caption == "mychar, smiling, outdoors"
    assert by_name(ds, "002.jpg").caption == "mychar, sitting"
    assert by_name(ds, "003.png").caption is None
    assert any("N_concept" in p and "mychar_extra/004.png" in p for p in ds.problems)


def test_gbk_caption_files_are_reported(tmp_path):
    noise().save(tmp_path / "1.png")
    (tmp_path / "1.txt").write_bytes("穿着红色连衣裙的女孩在公园里散步，阳光很好".encode("gbk"))
    ds, _ = load_image_dataset(tmp_path, tmp_path / "elsewhere")
    assert ds.encoding == "gb18030"
    assert by_name(ds, "1.png").caption.startswith("穿着红色连衣裙")
    assert by_name(ds, "1.png").file == str(tmp_path / "1.png")   # outside the run: as given


def test_missing_directory_is_a_problem_not_an_exception(tmp_path):
    ds, src = load_image_dataset(tmp_path / "nope", tmp_path)
    assert ds.items == [] and src.problems and "not found" in src.problems[0]


# -- text datasets -------------------------------------------------------------------------

def write_jsonl(path: Path, records) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")


def test_alpaca_and_sharegpt_jsonl(tmp_path):
    p = tmp_path / "train.jsonl"
    write_jsonl(p, [
        {"instruction": "Say hi", "input": "", "output": "hi\x07there"},
        {"conversations": [{"from": "human", "value": "q" * 10}, {"from": "gpt", "value": "a" * 7000}]},
        {"messages": [{"role": "user", "content": "caf\ufffd"}, {"role": "assistant", "content": "ok"}]},
        "{not json",
        {"text": "plain \x1b[32mgreen\x1b[0m"},
    ])
    ds, src = load_text_dataset(p, tmp_path, cutoff_len=1024)
    assert (src.kind, src.path, src.records, ds.records) == ("dataset_text", "train.jsonl", 5, 4)
    idx = {it.index: it for it in ds.items}
    assert sorted(idx) == [1, 2, 3, 5]                     # line numbers; line 4 is a problem
    assert idx[1].caption == "Say hi\nhi\x07there" and idx[1].control_chars == 1
    assert idx[2].length == 7011 and idx[2].tokens == approx_tokens("q" * 10 + "\n" + "a" * 7000)
    assert idx[2].tokens > 1024 and len(idx[2].caption) == 200
    assert idx[3].control_chars == 1                       # U+FFFD counts
    assert idx[5].control_chars == 2
    assert any("line" in s and "4" in s for s in src.problems)


def test_json_array_pretty_printed(tmp_path):
    p = tmp_path / "data.json"
    p.write_text(json.dumps([{"instruction": f"q{i}", "output": "答案" * 5} for i in range(300)],
                            ensure_ascii=False, indent=2), encoding="utf-8")
    ds, src = load_text_dataset(p, tmp_path)
    assert ds.records == 300 and len(ds.items) == 300
    assert ds.items[0].caption == "q0\n" + "答案" * 5
    assert ds.items[0].tokens == 10 + 1                    # 10 CJK chars + "q0\n" / 3.5


def test_enormous_jsonl_line_is_skipped_not_loaded(tmp_path, monkeypatch):
    import lorascope.ingest.dataset as mod
    monkeypatch.setattr(mod, "MAX_RECORD_BYTES", 1000)
    p = tmp_path / "big.jsonl"
    write_jsonl(p, [{"text": "short"}, {"text": "é" * 5000}, {"text": "after"}])
    ds, _ = load_text_dataset(p, tmp_path)
    big = next(it for it in ds.items if it.index == 2)
    assert big.error and "not parsed" in big.error
    assert big.length == len(json.dumps({"text": "é" * 5000}, ensure_ascii=False)) + 1
    assert [it.caption for it in ds.items if it.index != 2] == ["short", "after"]


def test_gbk_jsonl_encoding_recorded(tmp_path):
    p = tmp_path / "zh.jsonl"
    line = json.dumps({"instruction": "请把下面的句子翻译成英文", "output": "今天天气很好，我们去公园散步吧"},
                      ensure_ascii=False)
    p.write_bytes((line + "\n").encode("gbk") * 3)
    ds, _ = load_text_dataset(p, tmp_path)
    assert ds.encoding == "gb18030" and ds.records == 3
    assert ds.items[0].caption.startswith("请把下面") and ds.items[0].control_chars == 0


def test_progress_counter_goes_to_stderr_only(tmp_path, capsys):
    for i in range(3):
        noise().save(tmp_path / f"{i}.png")
    load_image_dataset(tmp_path, tmp_path, jobs=1, progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "\rchecking images 3/3" in err
