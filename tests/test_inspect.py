"""lorascope.inspect: the CONTRACT §6 document, its text rendering and exit status."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from helpers import lorascope
from lorascope.inspect import exit_status, inspect_files, render_inspect_text

RNG = np.random.default_rng(3)
NAME = "lora_unet_down_blocks_0_attentions_0_proj_in"


def kohya_file(path: Path, zero: bool = False, nan: bool = False) -> Path:
    down = (RNG.standard_normal((16, 64)) * 0.1).astype(np.float16)
    up = (RNG.standard_normal((80, 16)) * 0.01).astype(np.float16)
    if zero:
        up[:] = 0
    if nan:
        up[0, 0] = np.nan
    save_file({f"{NAME}.lora_down.weight": down, f"{NAME}.lora_up.weight": up,
               f"{NAME}.alpha": np.array(8, np.float16)}, path,
              metadata={"ss_network_dim": "16", "ss_network_alpha": "8",
                        "ss_network_module": "networks.lora",
                        "ss_tag_frequency": json.dumps({"10_fox": {"fox": 10}})})
    return path


def test_document_follows_the_contract(tmp_path):
    f = kohya_file(tmp_path / "my_lora.safetensors")
    doc = inspect_files([f])
    assert doc["schema"] == "lorascope.inspect/1"
    (e,) = doc["files"]
    for key in ("path", "format", "size_bytes", "dtype", "rank", "alpha", "metadata", "modules",
                "zero_modules", "nonfinite_modules", "problems"):
        assert key in e
    assert e["path"] == str(f)
    assert e["format"] == "kohya" and e["dtype"] == "F16"
    assert e["rank"] == 16 and e["alpha"] == 8.0
    assert e["size_bytes"] == f.stat().st_size
    assert e["metadata"]["ss_network_dim"] == "16"
    (m,) = e["modules"]
    assert set(m) == {"name", "rank", "alpha", "norm", "mean_abs", "zero", "nonfinite"}
    assert m["name"] == NAME and m["rank"] == 16 and m["alpha"] == 8.0
    assert m["norm"] > 0 and m["mean_abs"] > 0 and m["zero"] is False and m["nonfinite"] == 0
    assert e["zero_modules"] == [] and e["nonfinite_modules"] == [] and e["problems"] == []
    json.dumps(doc, allow_nan=False)            # strict JSON
    assert exit_status(doc) == 0


def test_zero_and_nonfinite_files_exit_1_and_are_called_out(tmp_path):
    good = kohya_file(tmp_path / "good.safetensors")
    zero = kohya_file(tmp_path / "zero.safetensors", zero=True)
    bad = kohya_file(tmp_path / "nan.safetensors", nan=True)
    doc = inspect_files([good, zero, bad])
    assert [Path(e["path"]).name for e in doc["files"]] == ["good.safetensors", "zero.safetensors",
                                                           "nan.safetensors"]
    assert doc["files"][1]["zero_modules"] == [NAME]
    assert doc["files"][2]["nonfinite_modules"] == [NAME]
    assert doc["files"][2]["modules"][0]["nonfinite"] == 1
    assert exit_status(doc) == 1
    text = render_inspect_text(doc)
    assert "ZERO" in text and "NaN/Inf" in text
    assert "all-zero" in text


def test_unreadable_arguments_keep_their_entry(tmp_path):
    good = kohya_file(tmp_path / "good.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 3)
    missing = tmp_path / "nope.safetensors"
    doc = inspect_files([missing, good, junk])
    e0, e1, e2 = doc["files"]
    assert e0["format"] == "unknown" and e0["problems"] == ["no such file"]
    assert e2["format"] == "unknown" and e2["problems"]
    assert e1["format"] == "kohya"
    # one file read in full: not exit 2; but files that could not be read are a problem
    assert exit_status(doc) == 1
    assert exit_status(inspect_files([good])) == 0
    assert exit_status(inspect_files([missing, junk])) == 2


def _cut(src, dst, keep):
    """What a copy killed midway leaves: the first `keep` bytes of the file."""
    data = src.read_bytes()
    dst.write_bytes(data[:keep] if keep > 0 else data[:len(data) + keep])
    return dst


def test_a_truncated_file_is_never_exit_0_nor_a_zero_adapter(tmp_path):
    good = kohya_file(tmp_path / "good.safetensors")
    size = good.stat().st_size
    # cut inside the tensor data: the header reads, tensors lie outside the file
    cut = _cut(good, tmp_path / "cut.safetensors", size // 3)
    doc = inspect_files([cut])
    (e,) = doc["files"]
    assert e["readable"] and e["truncated"]
    assert any("outside" in p for p in e["problems"])
    assert e["zero_modules"] == []
    assert exit_status(doc) == 2                    # no file could be read in full
    assert "cut short" in render_inspect_text(doc)
    # cut inside the header: unreadable, exit 2 as well
    assert exit_status(inspect_files([_cut(good, tmp_path / "head.safetensors", 20)])) == 2
    # beside a complete file: exit 1, the cut one is a problem
    assert exit_status(inspect_files([good, cut])) == 1
    r = lorascope("inspect", cut)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_text_table_shows_summary_metadata_and_layers(tmp_path):
    f = kohya_file(tmp_path / "my_lora.safetensors")
    text = render_inspect_text(inspect_files([f]))
    assert "format kohya" in text and "dtype F16" in text and "rank 16" in text and "alpha 8" in text
    assert "ss_network_module = networks.lora" in text
    assert "ss_tag_frequency" not in text          # not a highlight; counted instead
    assert NAME in text and "norm" in text and "mean|w|" in text


def test_full_model_file_reads_as_no_lora_layers(tmp_path):
    f = tmp_path / "model.safetensors"
    save_file({"lm_head.weight": np.ones((4, 4), np.float32)}, f)
    doc = inspect_files([f])
    assert doc["files"][0]["format"] == "unknown" and doc["files"][0]["problems"] == []
    assert exit_status(doc) == 0
    assert "no LoRA layers" in render_inspect_text(doc)
