"""Datasets (metadata.csv, captions, images), directory trees and the HTML report:
bad encodings, names that are not UTF-8, paths escaping the data directory, image
bombs, link loops, a link to /, 20,000 files, markup in every string."""
from __future__ import annotations

import os
import struct
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from hostile.util import analyze, base_run, problems_of

pytestmark = pytest.mark.timeout(300)


def png_header_only(w: int, h: int) -> bytes:
    """A PNG that declares w x h pixels but carries almost no data (decompression bomb)."""
    def chunk(t, b):
        return struct.pack(">I", len(b)) + t + b + struct.pack(">I", zlib.crc32(t + b) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b""))


def sd_run(tmp_path: Path) -> tuple[Path, Path]:
    run = base_run(tmp_path / "run")
    data = run / "img" / "10_thing"
    data.mkdir(parents=True)
    (run / "config.toml").write_text('train_data_dir = "img/10_thing"\nnetwork_dim = 8\nlearning_rate = 1e-4\n')
    return run, data


@pytest.mark.parametrize("encoding", ["utf-16-le", "latin-1", "cp1252", "shift_jis", "garbage"])
def test_metadata_csv_in_bad_encodings(tmp_path, encoding):
    run, data = sd_run(tmp_path)
    Image.new("RGB", (32, 32), (10, 200, 30)).save(data / "a.png")
    text = "file_name,text\na.png,café crème ハロー\n"
    raw = os.urandom(200) if encoding == "garbage" else text.encode(encoding, errors="replace")
    (data / "metadata.csv").write_bytes(raw)
    r, doc, _ = analyze(run, tmp_path / "out", html=False)
    if encoding != "garbage":
        assert "data.encoding" in {f["rule"] for f in doc["findings"]}, doc["findings"]


def test_paths_escaping_the_data_directory_are_not_read(tmp_path):
    """../../x and /abs/x in metadata.csv: reported, never opened."""
    run, data = sd_run(tmp_path)
    secret = tmp_path / "secret.png"
    Image.new("RGB", (32, 32)).save(secret)            # would decode fine if it were read
    rows = ["../../../../secret.png", str(secret), "../" * 12 + "etc/passwd", "/etc/passwd",
            "C:\\Windows\\win.ini", "a/../../../secret.png"]
    (data / "metadata.csv").write_text("file_name,text\n" + "".join(f"{r},x\n" for r in rows))
    r, doc, _ = analyze(run, tmp_path / "out", html=False)
    files = {f for fd in doc["findings"] for f in fd["files"]}
    from lorascope.build import build_run
    run_obj = build_run(run)
    items = [it for ds in run_obj.datasets for it in ds.items]
    assert len(items) == len(rows)
    for it in items:
        assert it.error and "escapes" in it.error, (it.file, it.error)
        assert it.width is None                       # nothing was decoded
    assert files, "escaping paths gave no finding"


def test_image_link_to_outside_the_dataset_says_so(tmp_path):
    run, data = sd_run(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(outside / "real.png")
    (data / "linked.png").symlink_to(outside / "real.png")
    Image.new("RGB", (32, 32), (9, 9, 9)).save(data / "own.png")
    r, doc, _ = analyze(run, tmp_path / "out", html=False)
    probs = [p for s in doc["run"]["sources"] if s["kind"].startswith("dataset") for p in s["problems"]]
    assert any("outside" in p for p in probs), probs


def test_non_utf8_file_names_on_disk(tmp_path):
    run, data = sd_run(tmp_path)
    bdata = os.fsencode(data)
    for name in (b"caf\xe9.png", b"\xff\xfe\xfd.png", b"ok\x80.txt"):
        Image.new("RGB", (16, 16), (200, 0, 0)).save(os.path.join(bdata, name).decode(
            "utf-8", "surrogateescape"), format="PNG")
    with open(os.path.join(os.fsencode(run), b"train\xff.log"), "wb") as fh:
        fh.write(b"RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB\n")
    r, doc, page = analyze(run, tmp_path / "out", subprocess_=True)
    assert page is not None and "\ufffd" not in r.stdout.replace("?", "")


def test_images_bombs_truncated_and_wrong_extension(tmp_path):
    run, data = sd_run(tmp_path)
    Image.new("RGB", (64, 64), (10, 120, 30)).save(data / "ok.png")
    full = (data / "ok.png").read_bytes()
    (data / "truncated.png").write_bytes(full[: len(full) // 2])
    Image.new("RGB", (64, 64), (50, 20, 200)).save(data / "really_png.jpg", format="PNG")
    (data / "bomb.png").write_bytes(png_header_only(200_000, 200_000))
    (data / "big_bomb.png").write_bytes(png_header_only(2 ** 31 - 1, 2 ** 31 - 1))
    (data / "text.webp").write_text("not an image at all")
    (data / "empty.jpg").write_bytes(b"")
    t0 = time.monotonic()
    r, doc, page = analyze(run, tmp_path / "out", limited=True)
    assert time.monotonic() - t0 < 120
    corrupt = next(f for f in doc["findings"] if f["rule"] == "data.corrupt_image")
    bad = " ".join(corrupt["files"] + corrupt["evidence"])
    for name in ("truncated.png", "bomb.png", "big_bomb.png", "text.webp", "empty.jpg"):
        assert name in bad or len(corrupt["files"]) >= 5, (name, corrupt)
    probs = [p for s in doc["run"]["sources"] if s["kind"].startswith("dataset") for p in s["problems"]]
    assert any("extension does not match" in p for p in probs), probs


def test_symlink_loops_and_a_link_to_root(tmp_path):
    run = base_run(tmp_path / "run")
    (run / "self").symlink_to(run)
    (run / "up").symlink_to("..")
    (run / "root").symlink_to("/")
    (run / "a").mkdir()
    (run / "a" / "b").symlink_to(run / "a")
    (run / "dangling.log").symlink_to(run / "nowhere")
    (run / "ping").symlink_to(run / "pong")
    (run / "pong").symlink_to(run / "ping")
    t0 = time.monotonic()
    r, doc, _ = analyze(run, tmp_path / "out", html=False)
    assert time.monotonic() - t0 < 60, "walked outside the run"
    assert all(not s["path"].startswith(("root/", "up/")) for s in doc["run"]["sources"])


def test_file_links_to_outside_are_named(tmp_path):
    run = base_run(tmp_path / "run")
    outside = tmp_path / "other.log"
    outside.write_text("RuntimeError: CUDA out of memory.\n")
    (run / "train.log").symlink_to(outside)
    (run / "zero.log").symlink_to("/dev/zero")          # a device: never read
    os.mkfifo(run / "pipe.log")                         # open() would block forever
    r, doc, _ = analyze(run, tmp_path / "out", html=False)
    assert any("outside the run directory" in p for p in problems_of(doc, "train.log"))
    # never opened, and named: a device and a FIFO are no logs
    assert problems_of(doc, "zero.log") == ["link into /dev (/dev/zero): never read"]
    assert any("not a regular file" in p for p in problems_of(doc, "pipe.log"))


def test_twenty_thousand_files_finish_in_bounded_time(tmp_path):
    run = base_run(tmp_path / "run")
    for sub, ext in (("logs", ".txt"), ("cfg", ".yaml"), ("x", ".dat"), ("y", ".png")):
        (run / sub).mkdir()
        for i in range(5000):
            (run / sub / f"f{i}{ext}").touch()
    t0 = time.monotonic()
    r, doc, _ = analyze(run, tmp_path / "out", html=False)
    assert time.monotonic() - t0 < 180


PAYLOADS = ["<script>alert('xss1')</script>", "<img src=x onerror=alert('xss2')>",
            "\"><svg onload=alert('xss3')>", "</textarea><script>alert('xss4')</script>"]


def test_every_string_from_a_file_is_escaped_in_the_html(tmp_path):
    from torch.utils.tensorboard import SummaryWriter
    p1, p2, p3, p4 = PAYLOADS
    run, data = sd_run(tmp_path)
    w = SummaryWriter(log_dir=str(run / "logs"))
    for s in range(1, 41):
        w.add_scalar("loss/current", 0.1 if s < 25 else 5.0 + s, s)
        w.add_scalar(f"custom/{p1}", 1.0, s)
    w.close()
    (run / "config.toml").write_text(
        f'train_data_dir = "img/10_thing"\nnetwork_dim = 8\nlearning_rate = 1e-2\n'
        f'pretrained_model_name_or_path = "/nonexistent/{p2}"\noutput_name = "{p3}"\n'
        f'lr_scheduler = "{p4}"\n'.replace("\\", "\\\\"))
    Image.new("RGB", (32, 32), (0, 0, 0)).save(data / "a.png")
    (data / "metadata.csv").write_text(f'file_name,text\na.png,"{p1.replace(chr(34), chr(34) * 2)}"\n'
                                       f'{p2.replace("/", "")}.png,{p3.replace(chr(34), "")}\n,\n')
    (run / "train.log").write_text(f"Traceback (most recent call last):\n{p4}\n"
                                   f"torch.OutOfMemoryError: CUDA out of memory. {p1}\n"
                                   f"Error(s) in loading state_dict {p2}\n")
    r, doc, page = analyze(run, tmp_path / "out")
    assert page
    for p in PAYLOADS:
        assert p not in page, f"raw markup in the report: {p}"
    for needle in ("alert('xss1')", "alert(&#39;xss1&#39;)", "alert(&#x27;xss1&#x27;)"):
        if needle in page:
            break
    else:
        pytest.fail("the payload never reached the report: this test would prove nothing")
    import re
    assert not re.search(r"<[a-z]+[^>]*\bon(error|load)\s*=", page, re.I)
