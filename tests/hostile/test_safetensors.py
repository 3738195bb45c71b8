"""Hostile safetensors files, through `lorascope analyze` and `lorascope inspect`."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from helpers import lorascope
from hostile.util import analyze, base_run, problems_of, strict_json

pytestmark = pytest.mark.timeout(240)


def st_file(header, body: bytes = b"", *, length: int | None = None) -> bytes:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(h) if length is None else length) + h + body


def lora(entry: dict) -> dict:
    """A kohya LoRA pair whose down weight carries `entry` (the hostile field)."""
    down = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]} | entry
    return {"lora_unet_x.lora_down.weight": down,
            "lora_unet_x.lora_up.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [16, 32]}}


BODY = np.arange(8, dtype="<f4").tobytes()

CASES = {
    "absurd_header_length": st_file(b"{}", length=(1 << 64) - 1),
    "header_length_past_eof": st_file(b"{}", length=10 ** 12),
    "invalid_json": st_file(b'{"a": {"dtype": "F32", '),
    "header_not_object": st_file([1, 2, 3]),
    "deeply_nested_header": st_file(b"[" * 200_000 + b"]" * 200_000),
    "offsets_outside_file": st_file(lora({"data_offsets": [0, 10 ** 15]}), BODY),
    "offsets_reversed": st_file(lora({"data_offsets": [16, 0]}), BODY),
    "offsets_negative": st_file(lora({"data_offsets": [-16, 16]}), BODY),
    "offsets_not_numbers": st_file(lora({"data_offsets": ["a", None]}), BODY),
    "negative_shape": st_file(lora({"shape": [-2, -2]}), BODY),
    "overflowing_shape": st_file(lora({"shape": [2 ** 62, 2 ** 62, 2 ** 62]}), BODY),
    "shape_with_huge_int": st_file(b'{"w": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 4]}}', BODY),
    "too_many_dims": st_file(lora({"shape": [1] * 10_000}), BODY),
    "unknown_dtype": st_file(lora({"dtype": "Q13"}), BODY),
    "dtype_not_string": st_file(lora({"dtype": {"x": 1}}), BODY),
    "metadata_not_strings": st_file({"__metadata__": {"ss_network_dim": [1, 2], "ss_tag_frequency": "[" * 100_000}}
                                    | lora({}), BODY),
    "nan_weights": st_file(lora({}), np.array([np.nan, np.inf, -np.inf, 1e38] * 2, "<f4").tobytes()),
    "empty": b"",
    "seven_bytes": b"\x08\0\0\0\0\0\0",
}

# readable files: the point is only that they do not break anything
SILENT = {"nan_weights", "metadata_not_strings"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_inspect_gives_a_clear_answer(tmp_path, name):
    p = tmp_path / f"{name}.safetensors"
    p.write_bytes(CASES[name])
    r = lorascope("inspect", p, "--format", "json")
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    if r.returncode == 2:
        doc = strict_json(r.stdout)          # the document still comes, then the reason
        assert all(f["problems"] for f in doc["files"])
        assert r.stderr.startswith("lorascope: ")
    else:
        assert r.returncode in (0, 1), r.stderr
        doc = strict_json(r.stdout)
    if name not in SILENT:
        assert doc["files"][0]["problems"], doc


def test_every_hostile_checkpoint_in_one_run_under_a_memory_limit(tmp_path):
    """One real process, 3 GB of address space, all the cases at once."""
    run = base_run(tmp_path / "run")
    for name, data in CASES.items():
        (run / f"{name}.safetensors").write_bytes(data)
    r, doc, _ = analyze(run, tmp_path / "out", limited=True)
    for name in CASES:
        if name not in SILENT:
            assert problems_of(doc, f"{name}.safetensors"), name
    assert "ckpt.nonfinite" in {f["rule"] for f in doc["findings"]}


def test_inspect_missing_and_directory_arguments(tmp_path):
    (tmp_path / "d.safetensors").mkdir()
    r = lorascope("inspect", tmp_path / "nope.safetensors", tmp_path / "d.safetensors")
    assert r.returncode == 2 and "Traceback" not in r.stderr
