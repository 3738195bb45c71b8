"""data.* rules on datasets written with Pillow / json in tmp_path, read by the real loader."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lorascope.ingest.dataset import load_image_dataset, load_text_dataset
from lorascope.model import Config, Run
from lorascope.rules.registry import DOC_SECTIONS, REGISTRY, load_catalog, load_rule_modules, params_for

CONTRACT_SEVERITY = {
    "data.encoding": "warning", "data.missing_file": "critical", "data.case_mismatch": "critical",
    "data.corrupt_image": "critical", "data.degenerate_image": "warning",
    "data.mixed_resolution": "warning", "data.caption_quality": "warning",
    "data.text_control_chars": "warning", "data.text_too_long": "warning",
}
CAPTIONS = ["a red fox sitting in deep snow, winter forest", "a red fox jumping over a fallen log",
            "close-up of a red fox face, amber eyes", "a red fox curled up asleep in grass",
            "a red fox walking along a river bank at dusk", "two red foxes playing in a meadow"]
RNG = np.random.default_rng(1)


@pytest.fixture(scope="module")
def catalog():
    load_rule_modules()
    return load_catalog()


def noise(w=96, h=96) -> Image.Image:
    # smooth-ish noise: a real-looking, non-constant picture
    return Image.fromarray((RNG.random((h, w, 3)) * 200 + 20).astype("uint8"))


def run_rules(catalog, datasets, **config) -> dict[str, list]:
    run = Run(path="run", name="run", datasets=list(datasets), config=Config(values=dict(config)))
    out = {}
    for rid, spec in REGISTRY.items():
        if rid.startswith("data."):
            found = spec.func(run, params_for(rid, catalog))
            if found:
                out[rid] = found
    return out


def healthy_images(root: Path, n: int = 6, size=(640, 640)) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rows = ["file_name,text"]
    for i in range(n):
        noise(*size).save(root / f"{i:03d}.jpg", quality=85)
        rows.append(f"{i:03d}.jpg,\"{CAPTIONS[i % len(CAPTIONS)]}\"")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")


def test_catalog_and_registry_agree(catalog):
    for rid, sev in CONTRACT_SEVERITY.items():
        assert rid in REGISTRY, rid
        assert catalog[rid]["severity"] == sev
        assert "fix" not in catalog[rid]           # data problems have no config fix
        for s in DOC_SECTIONS:
            assert f"## {s}" in REGISTRY[rid].doc, (rid, s)


def test_healthy_image_set_and_text_set_are_silent(tmp_path, catalog):
    healthy_images(tmp_path / "img")
    ds, _ = load_image_dataset(tmp_path / "img", tmp_path)
    p = tmp_path / "sft.jsonl"
    p.write_text("".join(json.dumps({"instruction": f"Question {i}?", "input": "",
                                     "output": "A short, clean answer.\nWith two lines."}) + "\n"
                         for i in range(20)), encoding="utf-8")
    ts, _ = load_text_dataset(p, tmp_path, cutoff_len=512)
    assert run_rules(catalog, [ds, ts], resolution=512, cutoff_len=512) == {}


def test_manifest_faults_fire_with_files(tmp_path, catalog):
    root = tmp_path / "img"
    healthy_images(root, n=12)   # 1 bad file of ~17 items: within max_exclude_fraction
    noise().save(root / "image_001.jpg")
    buf = io.BytesIO()
    noise(200, 150).save(buf, "JPEG")
    (root / "cut.jpg").write_bytes(buf.getvalue()[:len(buf.getvalue()) // 2])
    Image.new("RGB", (640, 640)).save(root / "black.png")
    with open(root / "metadata.csv", "a", encoding="utf-8") as fh:
        fh.write("Image_001.jpg,a fox\ngone.png,a fox in fog\n../../secret.png,x\n"
                 "cut.jpg,a fox by a lake\nblack.png,a fox at night\n")
    ds, _ = load_image_dataset(root, tmp_path)
    got = run_rules(catalog, [ds], resolution=512)
    assert set(got) >= {"data.missing_file", "data.case_mismatch", "data.corrupt_image",
                        "data.degenerate_image"}
    assert "data.encoding" not in got and "data.mixed_resolution" not in got
    for rid, fs in got.items():
        assert fs[0].severity == CONTRACT_SEVERITY[rid]
    # a few unusable files of a dataset: the automatic fix leaves them out (a name that
    # escapes the dataset dir, or one misspelt only in case, is not excluded)
    assert got["data.missing_file"][0].fix == {"exclude_files": ["img/gone.png"]}
    assert got["data.corrupt_image"][0].fix == {"exclude_files": ["img/cut.jpg"]}
    assert got["data.degenerate_image"][0].fix == {"exclude_files": ["img/black.png"]}
    assert got["data.case_mismatch"][0].fix == {}
    assert got["data.missing_file"][0].files == ["img/gone.png", "../../secret.png"]
    assert got["data.case_mismatch"][0].files == ["img/Image_001.jpg"]
    assert "'image_001.jpg' on disk" in got["data.case_mismatch"][0].evidence[0]
    assert got["data.corrupt_image"][0].files == ["img/cut.jpg"]
    assert "truncated" in got["data.corrupt_image"][0].evidence[0]
    assert got["data.degenerate_image"][0].files == ["img/black.png"]


@pytest.mark.parametrize("encode,expect", [
    (lambda s: s.encode("utf-8-sig"), "byte-order mark"),
    (lambda s: s.encode("gbk"), "not UTF-8"),
])
def test_encoding_fires_for_bom_and_gbk(tmp_path, catalog, encode, expect):
    root = tmp_path / "img"
    root.mkdir()
    caps = ["一只红色的狐狸坐在雪地里", "一只狐狸在河边散步，黄昏"]
    for i in range(2):
        noise().save(root / f"{i}.png")
    (root / "metadata.csv").write_bytes(
        encode("file_name,text\n" + "".join(f"{i}.png,{c}\n" for i, c in enumerate(caps))))
    ds, _ = load_image_dataset(root, tmp_path)
    got = run_rules(catalog, [ds])
    assert list(got) == ["data.encoding"]
    f = got["data.encoding"][0]
    assert expect in f.title and f.files == ["img/metadata.csv"]


def test_files_are_capped_with_a_count(tmp_path, catalog):
    root = tmp_path / "img"
    root.mkdir()
    (root / "metadata.csv").write_text(
        "file_name,text\n" + "".join(f"m{i}.png,a fox {i}\n" for i in range(60)), encoding="utf-8")
    ds, _ = load_image_dataset(root, tmp_path)
    f = run_rules(catalog, [ds])["data.missing_file"][0]
    assert len(f.files) == 50 and f.files[0] == "img/m0.png"
    assert "and 10 more files" in f.evidence


def test_mixed_resolution(tmp_path, catalog):
    root = tmp_path / "img"
    root.mkdir()
    sizes = [(1024, 1024)] * 4 + [(2400, 600), (256, 256), (256, 256), (300, 900)]
    for i, (w, h) in enumerate(sizes):
        noise(w // 8, h // 8).resize((w, h)).save(root / f"{i}.jpg")
        (root / f"{i}.txt").write_text(CAPTIONS[i % 6] + f" #{i}")
    ds, _ = load_image_dataset(root, tmp_path)
    got = run_rules(catalog, [ds], resolution=1024)
    assert list(got) == ["data.mixed_resolution"]
    f = got["data.mixed_resolution"][0]
    assert {"img/4.jpg", "img/5.jpg", "img/6.jpg", "img/7.jpg"} <= set(f.files)
    assert "img/0.jpg" not in f.files
    assert any("aspect ratios" in e for e in f.evidence)
    assert any("smaller than 75% of the training resolution 1024" in e for e in f.evidence)
    # same images, trained at 256: sizes still spread, but nothing is "too small"
    f256 = run_rules(catalog, [ds], resolution=256)["data.mixed_resolution"][0]
    assert not any("training resolution" in e for e in f256.evidence)


def test_caption_quality_empty_vague_and_duplicated(tmp_path, catalog):
    root = tmp_path / "img"
    root.mkdir()
    caps = ["", "a nice picture", "IMG_0002", "nan", "sks fox", "sks fox", "sks fox", "sks fox",
            CAPTIONS[0], CAPTIONS[1]]
    names = [f"IMG_{i:04d}.jpg" for i in range(len(caps))]
    for n in names:
        noise().save(root / n)
    (root / "metadata.csv").write_text(
        "file_name,text\n" + "".join(f"{n},{c}\n" for n, c in zip(names, caps)), encoding="utf-8")
    ds, _ = load_image_dataset(root, tmp_path)
    got = run_rules(catalog, [ds])
    assert list(got) == ["data.caption_quality"]
    f = got["data.caption_quality"][0]
    assert set(f.files) == {f"img/{n}" for n in names[:8]}
    text = " | ".join(f.evidence)
    assert "1 of 10 images have an empty" in text
    assert "3 captions say nothing" in text
    assert "4 of 9 captioned images share their caption" in text


def test_folder_without_any_captions_is_not_a_caption_problem(tmp_path, catalog):
    root = tmp_path / "img" / "20_sks dog"
    root.mkdir(parents=True)
    for i in range(4):
        noise().save(root / f"{i}.png")
    ds, _ = load_image_dataset(tmp_path / "img", tmp_path)
    assert run_rules(catalog, [ds]) == {}


def test_text_control_chars_and_too_long(tmp_path, catalog):
    p = tmp_path / "data.jsonl"
    recs = [{"instruction": "Translate", "input": "hello", "output": "bonjour"} for _ in range(8)]
    recs[2]["output"] = "bon\x00jour\x1b[0m"
    recs.append({"conversations": [{"from": "human", "value": "Summarise this."},
                                   {"from": "gpt", "value": "word " * 1200}]})
    recs.append({"messages": [{"role": "user", "content": "长" * 700}]})
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    ds, _ = load_text_dataset(p, tmp_path, cutoff_len=512)
    got = run_rules(catalog, [ds], cutoff_len=512)
    assert set(got) == {"data.text_control_chars", "data.text_too_long"}
    cc = got["data.text_control_chars"][0]
    assert cc.files == ["data.jsonl"] and "1 of 10 records" in cc.evidence[0]
    assert "\\x00" in cc.evidence[1] and "record 3" in cc.evidence[1]
    tl = got["data.text_too_long"][0]
    assert "2 of 10 records exceed cutoff_len 512" in tl.evidence[0]
    assert "no tokenizer" in tl.evidence[0]
    assert "9 (" in tl.evidence[1] and "10 (" in tl.evidence[1]
    # no cutoff configured: nothing to compare against
    assert "data.text_too_long" not in run_rules(catalog, [ds])
    # a generous cutoff: silent
    assert "data.text_too_long" not in run_rules(catalog, [ds], cutoff_len=4096)


def test_exclude_fix_only_for_a_small_share_of_the_dataset(tmp_path, catalog):
    root = tmp_path / "img"
    healthy_images(root, n=4)
    for i in range(3):
        Image.new("RGB", (640, 640)).save(root / f"black{i}.png")
    ds, _ = load_image_dataset(root, tmp_path)
    f = run_rules(catalog, [ds], resolution=512)["data.degenerate_image"][0]
    assert f.fix == {}                                   # 3 of 7 blank: the dataset needs work
    assert any("too many to leave out automatically" in e for e in f.evidence)
    for i in range(30):
        noise(64, 64).save(root / f"more{i:02d}.jpg")
    ds, _ = load_image_dataset(root, tmp_path)
    f = run_rules(catalog, [ds])["data.degenerate_image"][0]
    assert f.fix == {"exclude_files": ["img/black0.png", "img/black1.png", "img/black2.png"]}
