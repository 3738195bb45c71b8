"""Sample-image forensics (issue 20): reading what a run drew, the sample.* rules, the
report's strips.  Fixture runs: fixtures/make_samples.py (fixtures/runs/README.md)."""
from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import ROOT, fixture_run, lorascope
from ingest.test_dataset import bomb_png
from lorascope import imagesim
from lorascope.pipeline import run_rules
from lorascope.build import build_run
from lorascope.discover import classify
from lorascope.ingest import samples as smp
from lorascope.ingest import tfevents
from lorascope.model import DataItem, Dataset, Run, SampleImage
from lorascope.rules.registry import load_catalog
from lorascope.trainers import ai_toolkit_samples, kohya

sys.path.insert(0, str(ROOT / "bench"))
import samplecorpus  # noqa: E402

SAMPLE_RULES = ("sample.broken", "sample.memorized", "sample.collapse", "sample.drift")


def analyze(path, *extra):
    r = lorascope("analyze", path, "--format", "json", "--no-html", *extra)
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout)


def only(doc, rule):
    hits = [f for f in doc["findings"] if f["rule"] == rule]
    assert len(hits) == 1, [f["rule"] for f in doc["findings"]]
    return hits[0]


# -- names and prompts, as the trainers write them ---------------------------------------

@pytest.mark.parametrize("name,want", [
    # sd-scripts since 2024-02-03: {name_}{num}_{i:02d}_{ts}{_seed}
    ("shapesdemo_000500_01_20240101120000_42.png", {"step": 500, "index": 1, "seed": 42}),
    ("shapesdemo_e000004_00_20240101120000.png", {"epoch": 4, "index": 0, "seed": None}),
    ("000500_03_20240101120000.png", {"step": 500, "index": 3}),            # no output_name
    ("my_lora_v2_1234567_00_20240101120000_7.png", {"step": 1234567, "seed": 7}),
    # 2023-02-28 .. 2024-02-03: {name_}{ts}_{num}_{i:02d}{_seed}
    ("my_lora_20230301120000_000500_03_7.png", {"step": 500, "index": 3, "seed": 7}),
    ("20230301120000_e000002_00.png", {"epoch": 2, "index": 0}),
    # the first day (dd523c94): "_" after a missing output name
    ("_000100_00_20230227120000.png", {"step": 100, "index": 0}),
])
def test_kohya_sample_names(name, want):
    got = kohya.sample_name(name)
    assert got is not None
    for k, v in want.items():
        assert got.get(k) == v, (k, got)


@pytest.mark.parametrize("name", ["image_001.png", "shapesdemo-000002.png", "x_000500_01_2024.png",
                                  "shapesdemo_000500_01_20240101120000.jpg", "sample.png"])
def test_not_kohya_sample_names(name):
    assert kohya.sample_name(name) is None


def test_ai_toolkit_names_and_prompts():
    assert ai_toolkit_samples.sample_name("1724085406830__000000500_0.jpg") == {
        "step": 500, "index": 0, "written": "1724085406830"}
    assert ai_toolkit_samples.sample_name("1724085406830__000000500_0.jpg.jpg") is None   # .thumbs/
    doc = {"config": {"process": [{"sample": {"prompts": ["a", "b", "c"], "seed": 42, "walk_seed": True,
                                              "neg": "ugly"}}]}}
    ps = ai_toolkit_samples.prompts_from(doc)
    assert [(p["prompt"], p["seed"], p["negative_prompt"]) for p in ps] == [
        ("a", 42, "ugly"), ("b", 43, "ugly"), ("c", 44, "ugly")]
    assert ai_toolkit_samples.prompts_from({"config": {"process": [{"sample": {
        "samples": [{"prompt": "x", "seed": 7}], "seed": -1}}]}})[0]["seed"] == 7


def test_kohya_prompt_files():
    txt = "# comment\n\na cat --n ugly, blurry --w 512 --h 768 --d 42 --s 28 --l 7.5\n  # kept: not at column 0\nb\n"
    ps = kohya.prompts_from(txt, ".txt")
    assert ps[0] == {"prompt": "a cat", "negative_prompt": "ugly, blurry", "width": 512, "height": 768,
                     "seed": 42, "sample_steps": 28, "scale": 7.5}
    assert [p["prompt"] for p in ps] == ["a cat", "# kept: not at column 0", "b"]
    toml = '[prompt]\nwidth = 512\nseed = 3\n[[prompt.subset]]\nprompt = "x"\n[[prompt.subset]]\nprompt = "y"\nseed = 9\n'
    assert [(p["prompt"], p["seed"], p["width"]) for p in kohya.prompts_from(toml, ".toml")] == [
        ("x", 3, 512), ("y", 9, 512)]
    assert kohya.prompts_from('["p --d 5", {"prompt": "q", "seed": 6}]', ".json")[0]["seed"] == 5
    assert kohya.prompts_from("not toml [", ".toml") is None


def test_sample_files_are_classified_by_folder_and_name():
    assert classify("output/sample/demo_000100_00_20240101120000_1.png") == "sample_image"
    assert classify("my_lora/samples/1724085406830__000000500_0.jpg") == "sample_image"
    assert classify("dataset/demo_000100_00_20240101120000_1.png") == "image"
    assert classify("output/sample/cat.png") == "image"


# -- reading a run's samples -------------------------------------------------------------

def _png(path: Path, arr) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(path)


def _scene(seed: int, size: int = 64):
    rng = np.random.default_rng(seed)
    return samplecorpus.render(samplecorpus.random_scene(rng, samplecorpus._palette(rng)), size)


def test_build_reads_kohya_samples_with_prompts_epochs_and_newest_copies(tmp_path):
    (tmp_path / "config.toml").write_text(
        'output_name = "demo"\nnetwork_module = "networks.lora"\nnetwork_dim = 4\n'
        'max_train_epochs = 2\nsample_prompts = "/home/someone/lora/prompts.txt"\n'
        'sample_every_n_epochs = 1\n', encoding="utf-8")
    # the absolute path of the training machine: the copy in the run folder is read
    (tmp_path / "prompts.txt").write_text("a red cat --d 7\n# skipped\nblue dog --n ugly\n")
    out = tmp_path / "output" / "sample"
    out.mkdir(parents=True)
    for ep in (0, 1, 2):
        for i in range(2):
            seed = "_7" if i == 0 else ""
            _scene(10 * ep + i).save(out / f"demo_e{ep:06d}_{i:02d}_20240101120000{seed}.png")
    # an older training into the same folder wrote epoch 1 of prompt 1 too
    Image.new("RGB", (64, 64), (0, 0, 0)).save(out / "demo_e000001_01_20231231000000.png")
    from torch.utils.tensorboard import SummaryWriter
    w = SummaryWriter(str(tmp_path / "log"))
    for step in range(1, 101):
        w.add_scalar("loss/current", 0.3, step)
    for ep in (1, 2):
        w.add_scalar("loss/epoch_average", 0.3, ep)
    w.close()
    run = build_run(tmp_path)
    got = sorted((s.epoch, s.prompt_index, s.step, s.seed, s.prompt) for s in run.samples)
    assert got == [(0, 0, 0, 7, "a red cat"), (0, 1, 0, None, "blue dog"),
                   (1, 0, 50, 7, "a red cat"), (1, 1, 50, None, "blue dog"),
                   (2, 0, 100, 7, "a red cat"), (2, 1, 100, None, "blue dog")]
    assert all(s.blank is None and s.thumb and s.signature for s in run.samples)
    src = next(s for s in run.sources if s.kind == "sample_images")
    assert src.path == "output/sample" and src.records == 6
    assert any("older images" in p for p in src.problems)
    assert next(s for s in run.sources if s.kind == "sample_prompts").path == "prompts.txt"


def test_tensorboard_image_summaries_become_a_timeline(tmp_path):
    from torch.utils.tensorboard import SummaryWriter
    w = SummaryWriter(str(tmp_path))
    for step in range(0, 500, 100):
        w.add_scalar("loss", 0.5, step)
        w.add_image("validation/0", np.asarray(_scene(step)).transpose(2, 0, 1), step)
    w.close()
    run = build_run(tmp_path)
    assert [(s.tag, s.step) for s in run.samples] == [("validation/0", k) for k in range(0, 500, 100)]
    assert all(s.width == 64 and s.signature is not None for s in run.samples)


def test_tensorboard_images_are_thinned_within_the_budget(tmp_path, monkeypatch):
    from torch.utils.tensorboard import SummaryWriter
    w = SummaryWriter(str(tmp_path))
    for step in range(64):
        w.add_image("s", np.asarray(_scene(step % 4)).transpose(2, 0, 1), step)
    w.close()
    monkeypatch.setattr(tfevents, "MAX_IMAGES", 10)
    f = next(tmp_path.glob("events.out.tfevents.*"))
    p = tfevents.parse(f, "ev")
    steps = [im.step for im in p.images]
    assert len(steps) <= 10 and steps == sorted(steps)
    assert steps[0] == 0 and len(set(np.diff(steps))) == 1      # evenly spaced
    assert any("every" in q and "kept" in q for q in p.source.problems)


def test_hostile_sample_files_are_unreadable_samples_not_crashes(tmp_path):
    out = tmp_path / "sample"
    out.mkdir()
    (tmp_path / "config.toml").write_text('network_module = "networks.lora"\nnetwork_dim = 4\n')
    buf = io.BytesIO()
    _scene(1, 128).save(buf, "PNG")
    (out / "x_000100_00_20240101120000.png").write_bytes(buf.getvalue()[:300])      # truncated
    (out / "x_000100_01_20240101120000.png").write_bytes(b"<svg>not a png</svg>")
    # a decompression bomb: a valid PNG header claiming 60k x 60k pixels
    bomb_png(out / "x_000100_02_20240101120000.png", 60_000, 60_000)
    _scene(2).save(out / "x_000100_03_20240101120000.png")
    run = build_run(tmp_path)
    errs = {s.prompt_index: s.error for s in run.samples}
    assert errs[3] is None
    assert errs[0] and errs[1] and "bomb" in errs[2]
    assert all(s.signature is None and s.thumb is None for s in run.samples if s.error)


# -- the rules on generated timelines (bench/samplecorpus.py: known truth) ----------------

def _case_run(case) -> Run:
    items = [DataItem(file=f"dataset/img_{j:03d}.png", signature=imagesim.signature(im))
             for j, im in enumerate(case.train)]
    samples = []
    for k, strip in enumerate(case.strips):
        for i, pic in enumerate(strip):
            s = SampleImage(file=f"sample/x_{case.steps[i]:06d}_{k:02d}_20240101000000.png",
                            step=case.steps[i], prompt_index=k, seed=k)
            res = smp.features(pic) if isinstance(pic, bytes) else smp.image_features(pic)
            s.width, s.height, s.error, s.blank, s.noise, s.signature, s.thumb = res
            samples.append(s)
    return Run(path="x", name="x", samples=tuple(samples),
               datasets=(Dataset(kind="images", root="dataset", items=items),))


@pytest.mark.parametrize("family", samplecorpus.FAMILIES)
@pytest.mark.parametrize("seed", [1, 2])
def test_each_rule_fires_on_its_family_only(family, seed):
    case = samplecorpus.make_case(family, seed, size=64, prompts=4, steps=8)
    found, errors = run_rules(_case_run(case), load_catalog())
    assert not errors
    fired = {f.rule: f for f in found if f.rule in SAMPLE_RULES}
    want = samplecorpus.TRUTH.get(family)
    assert set(fired) == ({want} if want else set()), {r: f.title for r, f in fired.items()}
    if want:
        f = fired[want]
        i = case.steps.index(case.truth_step)
        ramp = case.notes["ramp"] if family in ("memorize", "collapse") else 1
        assert case.steps[max(0, i - ramp + 1)] <= f.step <= case.truth_step, (f.step, case.truth_step)
        assert f.files and f.extra["flagged"]


def test_memorisation_needs_the_first_sample_to_be_new():
    case = samplecorpus.make_case("memorize", 3, size=64, prompts=2, steps=6)
    for strip in case.strips:          # the prompt reproduced a training image from the start
        strip[0] = samplecorpus.reproduce(case.train[0], np.random.default_rng(0))
    found, _ = run_rules(_case_run(case), load_catalog())
    assert "sample.memorized" not in {f.rule for f in found}


def test_correlation_tells_copies_from_same_style_pictures():
    rng = np.random.default_rng(0)
    pal = samplecorpus._palette(rng)
    train = samplecorpus.render(samplecorpus.random_scene(rng, pal), 256)
    copy = samplecorpus.reproduce(train, rng)
    other = samplecorpus.render(samplecorpus.random_scene(rng, pal), 256)
    a, b, c = (imagesim.signature(x) for x in (train, copy, other))
    assert imagesim.correlation(a, b) > 0.9 > 0.7 > imagesim.correlation(a, c)
    assert imagesim.near_pairs([b, c], [a], 0.88) == [(0, 0, pytest.approx(imagesim.correlation(b, a)))]


# -- the fixture runs, end to end --------------------------------------------------------

def test_healthy_samples_raise_nothing():
    doc = analyze(fixture_run("sd-samples-healthy"))
    assert not [f for f in doc["findings"] if f["rule"].startswith("sample.")]
    assert any(s["kind"] == "sample_images" and s["records"] == 20 for s in doc["run"]["sources"])


def test_nan_run_samples_go_black_where_the_loss_turned_nan():
    doc = analyze(fixture_run("sd-samples-nan"))
    b = only(doc, "sample.broken")
    assert b["severity"] == "critical" and b["step"] == 150 and b["step_range"] == [100, 150]
    assert b["causes"][0]["rule"] == "loss.nonfinite"
    nan = only(doc, "loss.nonfinite")
    assert 100 < nan["step"] <= 150
    assert any(e.startswith("agrees with sample.broken") for e in nan["evidence"])
    assert len(b["files"]) == 8 and all("/sample/shapesdemo_000" in f for f in b["files"])


def test_memorising_run():
    doc = analyze(fixture_run("sd-samples-memorize"))
    m = only(doc, "sample.memorized")
    assert m["severity"] == "warning" and m["step"] == 150
    assert {"dataset/image_003.png", "dataset/image_008.png", "dataset/image_013.png",
            "dataset/image_018.png"} <= set(m["files"])
    assert not [f for f in doc["findings"] if f["rule"] in ("sample.drift", "sample.collapse")]


def test_collapsing_run():
    doc = analyze(fixture_run("sd-samples-collapse"))
    c = only(doc, "sample.collapse")
    assert c["step"] == 150 and c["step_range"] == [150, 200]
    assert not [f for f in doc["findings"] if f["rule"] in ("sample.drift", "sample.memorized")]


def test_report_shows_strips_flagged_samples_and_copies(tmp_path):
    target = tmp_path / "r.html"
    r = lorascope("analyze", fixture_run("sd-samples-memorize"), "--html", target)
    assert r.returncode == 0, r.stderr
    html = target.read_text(encoding="utf-8")
    sec = html[html.index('<section id="samples">'):]
    sec = sec[:sec.index("</section>")]
    assert sec.count('<tr><th class="plabel">') == 4
    thumbs = re.findall(r'<img src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"', sec)
    assert len(thumbs) == 20 + 2 * 8           # every sample, and the memorised pairs (capped)
    for t in thumbs[:3]:
        import base64
        assert Image.open(io.BytesIO(base64.b64decode(t))).size[0] <= 96
    assert sec.count("flag-warn") == 8         # steps 150 and 200 of four prompts
    assert "dataset/image_013.png" in sec and "shapesdemo, a blue triangle" in sec
    assert "http" not in sec


def test_report_escapes_hostile_prompts(tmp_path):
    run = tmp_path / "run"
    (run / "sample").mkdir(parents=True)
    (run / "config.toml").write_text('network_module = "networks.lora"\nnetwork_dim = 4\n'
                                     'sample_prompts = "p.txt"\n')
    (run / "p.txt").write_text('<script>alert(1)</script><img src=x onerror=alert(2)>\n')
    for st in (0, 100):
        _scene(st).save(run / "sample" / f"x_{st:06d}_00_20240101120000.png")
    target = tmp_path / "r.html"
    assert lorascope("analyze", run, "--html", target).returncode == 0
    html = target.read_text(encoding="utf-8")
    assert "<script>alert(1)" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)" in html


def test_nan_fixture_as_written_black_samples_after_the_first_nan():
    """The files themselves (Pillow, TensorBoard's reader): black from the first sample
    step after the loss turned NaN, pictures before."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    base = fixture_run("sd-samples-nan")
    ea = EventAccumulator(str(next(base.glob("log/*/network_train/events.out.tfevents.*"))),
                          size_guidance={"scalars": 0})
    ea.Reload()
    first_nan = next(e.step for e in ea.Scalars("loss/current") if e.value != e.value)
    files = sorted((base / "output" / "sample").iterdir())
    assert len(files) == 20
    for f in files:
        num = f.name.split("_")[1]
        step = 0 if num == "e000000" else int(num)     # sample_at_first: kohya passes epoch 0
        black = max(Image.open(f).getextrema(), key=lambda e: e[1])[1] == 0
        assert black == (step > first_nan), (f.name, first_nan)


def test_corroborates_tables_name_known_rules():
    from lorascope.rules.registry import rule_entries
    cat = rule_entries(load_catalog())
    for rid, e in cat.items():
        for other, mode in e.get("corroborates", {}).items():
            assert other in cat and mode in ("any", "step"), (rid, other, mode)


def test_many_image_tags_stop_being_kept_instead_of_looping(tmp_path, monkeypatch):
    from torch.utils.tensorboard import SummaryWriter
    w = SummaryWriter(str(tmp_path))
    pic = np.asarray(_scene(0, 16)).transpose(2, 0, 1)
    for k in range(30):
        w.add_image(f"tag{k}", pic, 0)
    w.close()
    monkeypatch.setattr(tfevents, "MAX_IMAGES", 10)
    p = tfevents.parse(next(tmp_path.glob("events.out.tfevents.*")), "ev")
    assert 0 < len(p.images) <= 10
    assert any("were not kept" in q for q in p.source.problems)


def test_a_jump_is_drift_a_gradual_transition_is_not():
    case = samplecorpus.make_case("healthy", 4, size=64, prompts=3, steps=8)
    rng = np.random.default_rng(1)
    pal = samplecorpus._palette(rng)
    new = [samplecorpus.render(samplecorpus.random_scene(rng, pal), 64) for _ in case.strips]
    jump, slow = [list(s) for s in case.strips], [list(s) for s in case.strips]
    for k in range(3):
        for i in range(3, 8):
            if i >= 5:
                jump[k][i] = samplecorpus.model_noise(new[k], rng)
            t = (i - 2) / 4                       # a quarter of the way at step 300, there at 600
            slow[k][i] = samplecorpus.blend(case.strips[k][i], samplecorpus.model_noise(new[k], rng), min(1.0, t))
    case.strips = jump
    found, _ = run_rules(_case_run(case), load_catalog())
    assert [(f.rule, f.step_range) for f in found if f.rule == "sample.drift"] == [("sample.drift", [400, 500])]
    case.strips = slow
    found, _ = run_rules(_case_run(case), load_catalog())
    assert "sample.drift" not in {f.rule for f in found}


def test_ai_toolkit_samples_with_their_job_config(tmp_path):
    root = tmp_path / "my_lora"
    (root / "samples" / ".thumbs").mkdir(parents=True)
    (root / "config.yaml").write_text(
        "job: extension\nconfig:\n  name: my_lora\n  process:\n    - type: sd_trainer\n"
        "      sample:\n        sample_every: 250\n        seed: 42\n        walk_seed: true\n"
        "        prompts:\n          - a red fox\n          - a blue car\n", encoding="utf-8")
    for step in (0, 250, 500):
        for i in range(2):
            name = f"{1724085406830 + step}__{step:09d}_{i}.jpg"
            _scene(step + i).save(root / "samples" / name, quality=90)
            _scene(step + i).save(root / "samples" / ".thumbs" / (name + ".jpg"))
    run = build_run(tmp_path)
    got = sorted((s.step, s.prompt_index, s.seed, s.prompt) for s in run.samples)
    assert got == [(st, i, 42 + i, ["a red fox", "a blue car"][i]) for st in (0, 250, 500) for i in range(2)]
    assert {s.kind for s in run.sources} >= {"sample_images", "sample_prompts"}


def test_samples_are_not_read_without_imagehash(tmp_path, monkeypatch):
    (tmp_path / "sample").mkdir()
    (tmp_path / "config.toml").write_text('network_module = "networks.lora"\nnetwork_dim = 4\n')
    for st in (0, 100):
        _scene(st).save(tmp_path / "sample" / f"x_{st:06d}_00_20240101120000.png")
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "imagehash" else real(name, *a))
    run = build_run(tmp_path)
    assert run.samples == ()
    src = next(s for s in run.sources if s.kind == "sample_images")
    assert any("imagehash" in p for p in src.problems)
