"""lorascope.ingest.safetensors on files written by the real writers (safetensors numpy /
torch, PEFT save_pretrained) and on hostile headers written byte by byte."""
from __future__ import annotations

import json
import math
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from lorascope.ingest.safetensors import leaf_name, parse, read_checkpoint, step_from_path

RNG = np.random.default_rng(0)


def _lora(r: int, fan_in: int, fan_out: int, conv: tuple[int, int] | None = None,
          zero_up: bool = False) -> tuple[np.ndarray, np.ndarray]:
    down = RNG.standard_normal((r, fan_in) + (conv or ())).astype(np.float32) * 0.1
    up = RNG.standard_normal((fan_out, r) + ((1, 1) if conv else ())).astype(np.float32) * 0.01
    if zero_up:
        up[:] = 0
    return down, up


def _effective_norm(down: np.ndarray, up: np.ndarray, alpha: float, r: int) -> float:
    d = down.astype(np.float64).reshape(down.shape[0], -1)
    u = up.astype(np.float64).reshape(up.shape[0], -1)
    return float(np.linalg.norm(u @ d) * alpha / r)


def write_kohya(path: Path, dtype=np.float16, zero_up: bool = False, nan: bool = False,
                metadata: dict | None = None) -> dict[str, np.ndarray]:
    t: dict[str, np.ndarray] = {}
    layers = {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": (8, 64, 64, None),
        "lora_unet_down_blocks_0_attentions_0_proj_in": (8, 64, 96, None),
        "lora_unet_down_blocks_0_resnets_0_conv1": (4, 32, 48, (3, 3)),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (8, 48, 48, None),
    }
    for name, (r, i, o, conv) in layers.items():
        down, up = _lora(r, i, o, conv, zero_up)
        if nan and name.endswith("proj_in"):
            up[3, 1] = np.nan
            up[4, 2] = np.inf
        t[f"{name}.lora_down.weight"] = down.astype(dtype)
        t[f"{name}.lora_up.weight"] = up.astype(dtype)
        t[f"{name}.alpha"] = np.array(r / 2, dtype=dtype)
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": "8", "ss_network_alpha": "4",
            "ss_learning_rate": "0.0001", "ss_steps": "750", "ss_epoch": "3",
            "ss_base_model_version": "sd_v1"}
    meta.update(metadata or {})
    save_file(t, path, metadata=meta)
    return t


# -- kohya ----------------------------------------------------------------------------

def test_kohya_layout_rank_alpha_norms_and_step(tmp_path):
    f = tmp_path / "mylora-000003.safetensors"
    t = write_kohya(f)
    ck = read_checkpoint(f, f.name)
    assert ck.format == "kohya"
    assert ck.problems == []
    assert ck.dtype == "F16"
    assert ck.rank == 8 and ck.alpha == 4.0
    assert ck.step == 750                          # ss_steps, not the epoch in the name
    assert ck.metadata["ss_network_dim"] == "8"
    assert ck.target_modules == ["conv1", "proj_in", "q_proj", "to_q"]
    mods = {m.name: m for m in ck.modules}
    assert len(mods) == 4
    conv = mods["lora_unet_down_blocks_0_resnets_0_conv1"]
    assert conv.rank == 4 and conv.alpha == 2.0
    for name, m in mods.items():
        down = t[f"{name}.lora_down.weight"].astype(np.float32)
        up = t[f"{name}.lora_up.weight"].astype(np.float32)
        assert m.norm == pytest.approx(_effective_norm(down, up, m.alpha, m.rank), rel=1e-4)
        assert m.mean_abs == pytest.approx(float(np.abs(up).mean()), rel=1e-4)
        assert not m.zero and m.nonfinite == 0
    # every tensor got statistics
    st = {s.name: s for s in ck.tensors}
    up = t["lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight"].astype(np.float64)
    s = st["lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight"]
    assert s.norm == pytest.approx(np.linalg.norm(up), rel=1e-5)
    assert s.abs_max == pytest.approx(np.abs(up).max())


def test_kohya_epoch_file_name_is_an_epoch_not_a_step(tmp_path):
    f = tmp_path / "out" / "mylora-000005.safetensors"
    f.parent.mkdir()
    write_kohya(f, metadata={"ss_steps": "", "ss_epoch": ""})
    p = parse(f, "out/mylora-000005.safetensors")
    assert p.checkpoints[0].step is None
    assert p.facts["checkpoint_epoch"] == 5
    assert p.source.kind == "safetensors" and p.source.records == 12


def test_kohya_metadata_feeds_config(tmp_path):
    f = tmp_path / "mylora.safetensors"
    write_kohya(f)
    p = parse(f, f.name)
    keys = {cv.key: cv.value for cv in p.config}
    if not keys:
        pytest.skip("config.parse_safetensors_metadata not available")
    assert keys.get("learning_rate") == pytest.approx(1e-4)
    assert keys.get("lora_rank") == 8


def test_zero_up_weights(tmp_path):
    f = tmp_path / "z.safetensors"
    write_kohya(f, zero_up=True)
    ck = read_checkpoint(f, f.name)
    assert all(m.zero for m in ck.modules)
    assert all(m.norm == 0 and m.mean_abs == 0 for m in ck.modules)


def test_nan_and_inf_are_counted_and_norms_stay_finite(tmp_path):
    f = tmp_path / "n.safetensors"
    t = write_kohya(f, nan=True)
    ck = read_checkpoint(f, f.name)
    m = {m.name: m for m in ck.modules}["lora_unet_down_blocks_0_attentions_0_proj_in"]
    assert m.nonfinite == 2
    up = t["lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight"].astype(np.float64)
    clean = np.where(np.isfinite(up), up, 0)
    down = t["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"].astype(np.float64)
    assert m.norm == pytest.approx(np.linalg.norm(clean @ down) * 4 / 8, rel=1e-4)
    assert sum(x.nonfinite for x in ck.modules) == 2


def test_bf16_through_torch_writer(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as tsave
    down = torch.randn(16, 128) * 0.1
    up = torch.randn(256, 16) * 0.01
    up[0, 0] = float("nan")
    t = {"lora_unet_mid_block_attentions_0_proj_out.lora_down.weight": down.bfloat16(),
         "lora_unet_mid_block_attentions_0_proj_out.lora_up.weight": up.bfloat16(),
         "lora_unet_mid_block_attentions_0_proj_out.alpha": torch.tensor(8.0).bfloat16()}
    f = tmp_path / "b.safetensors"
    tsave(t, str(f))
    ck = read_checkpoint(f, f.name)
    assert ck.dtype == "BF16" and ck.rank == 16 and ck.alpha == 8.0
    m = ck.modules[0]
    assert m.nonfinite == 1
    u = torch.nan_to_num(up.bfloat16().double(), nan=0.0)
    d = down.bfloat16().double()
    assert m.norm == pytest.approx(float((u @ d).norm() * 8 / 16), rel=1e-4)
    assert m.mean_abs == pytest.approx(float(u.abs().sum() / (u.numel() - 1)), rel=1e-4)


# -- PEFT -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def peft_dir(tmp_path_factory):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, vocab_size=128)
    model = LlamaForCausalLM(cfg)
    lcfg = peft.LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                           rank_pattern={"layers.1.self_attn.v_proj": 2},
                           alpha_pattern={"layers.1.self_attn.v_proj": 4}, task_type="CAUSAL_LM")
    pm = peft.get_peft_model(model, lcfg)
    with torch.no_grad():
        for n, prm in pm.named_parameters():
            if "lora_B" in n:
                prm.normal_(0, 0.02)
    out = tmp_path_factory.mktemp("peft") / "checkpoint-40"
    pm.save_pretrained(out)
    return out, pm


def test_peft_layout_with_adapter_config_beside(peft_dir):
    out, pm = peft_dir
    f = out / "adapter_model.safetensors"
    p = parse(f, "checkpoint-40/adapter_model.safetensors")
    ck = p.checkpoints[0]
    assert ck.format == "peft" and ck.problems == []
    assert ck.step == 40
    assert len(ck.modules) == 4
    assert ck.target_modules == ["q_proj", "v_proj"]
    assert ck.rank == 4 and ck.alpha == 16
    m = {m.name: m for m in ck.modules}
    v1 = m["base_model.model.model.layers.1.self_attn.v_proj"]
    assert v1.rank == 2 and v1.alpha == 4         # rank_pattern / alpha_pattern
    # the norm is the scaled delta the PEFT layer applies
    layer = pm.base_model.model.model.layers[1].self_attn.v_proj
    delta = layer.get_delta_weight("default").double()
    assert v1.norm == pytest.approx(float(delta.detach().norm()), rel=1e-4)
    assert p.facts.get("task") == "llm"


def test_peft_alpha_given_explicitly_overrides_neighbour(peft_dir):
    out, _ = peft_dir
    ck = read_checkpoint(out / "adapter_model.safetensors", "a.safetensors",
                         adapter_config={"lora_alpha": 8, "r": 4})
    assert ck.alpha == 8 and ck.step is None


def test_peft_without_adapter_config_has_no_alpha(peft_dir, tmp_path):
    out, _ = peft_dir
    f = tmp_path / "adapter_model.safetensors"
    f.write_bytes((out / "adapter_model.safetensors").read_bytes())
    ck = read_checkpoint(f, f.name)
    assert ck.format == "peft" and ck.alpha is None and all(m.alpha is None for m in ck.modules)
    assert all(m.norm and m.norm > 0 for m in ck.modules)


# -- diffusers ------------------------------------------------------------------------

def test_diffusers_mixed_suffixes_and_adapter_metadata(tmp_path):
    t = {}
    d1, u1 = _lora(4, 40, 40)
    t["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight"] = d1
    t["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.up.weight"] = u1
    d2, u2 = _lora(4, 40, 40)
    t["unet.down_blocks.0.attentions.0.proj_in.lora_A.weight"] = d2
    t["unet.down_blocks.0.attentions.0.proj_in.lora_B.weight"] = u2
    d3, u3 = _lora(4, 24, 24)
    t["text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.down.weight"] = d3
    t["text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.up.weight"] = u3
    d4, u4 = _lora(4, 16, 32, conv=(3, 3))
    t["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.lora_A.weight"] = d4
    t["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.lora_B.weight"] = u4
    meta = {"lora_adapter_metadata": json.dumps({"unet.lora_alpha": 8, "unet.r": 4,
                                                 "text_encoder.lora_alpha": 2, "text_encoder.r": 4})}
    f = tmp_path / "checkpoint-500" / "pytorch_lora_weights.safetensors"
    f.parent.mkdir()
    save_file(t, f, metadata=meta)
    ck = read_checkpoint(f, "checkpoint-500/pytorch_lora_weights.safetensors")
    assert ck.format == "diffusers" and ck.step == 500
    assert len(ck.modules) == 4 and ck.rank == 4
    m = {m.name: m for m in ck.modules}
    assert m["unet.down_blocks.0.attentions.0.proj_in"].alpha == 8
    te = m["text_encoder.text_model.encoder.layers.0.self_attn.q_proj"]
    assert te.alpha == 2
    assert te.norm == pytest.approx(_effective_norm(d3, u3, 2, 4), rel=1e-4)
    conv = m["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"]
    assert conv.norm == pytest.approx(_effective_norm(d4, u4, 8, 4), rel=1e-4)
    assert ck.target_modules == ["proj_in", "q_proj", "to_out.0", "to_q"]


def test_diffusers_without_metadata_has_no_alpha(tmp_path):
    d, u = _lora(4, 8, 8)
    f = tmp_path / "pytorch_lora_weights.safetensors"
    save_file({"unet.a.to_k.lora.down.weight": d, "unet.a.to_k.lora.up.weight": u}, f)
    ck = read_checkpoint(f, f.name)
    assert ck.format == "diffusers" and ck.alpha is None
    assert ck.modules[0].norm == pytest.approx(_effective_norm(d, u, 4, 4), rel=1e-4)


# -- files that are not adapters, or not whole -----------------------------------------

def test_full_model_file_is_not_an_error(tmp_path):
    f = tmp_path / "model.safetensors"
    save_file({"model.layers.0.mlp.up_proj.weight": np.ones((8, 4), np.float32),
               "lm_head.weight": np.ones((16, 4), np.float32)}, f)
    p = parse(f, f.name)
    ck = p.checkpoints[0]
    assert ck.format == "unknown" and ck.modules == [] and ck.problems == []
    assert p.facts.get("no_lora_modules") is True
    assert {s.name: s.norm for s in ck.tensors}["lm_head.weight"] == pytest.approx(8.0)


def test_adapter_without_lora_tensors_is_a_problem(tmp_path):
    f = tmp_path / "adapter_model.safetensors"
    save_file({"base_model.model.lm_head.weight": np.ones((4, 4), np.float32)}, f)
    ck = read_checkpoint(f, f.name)
    assert ck.format == "peft" and ck.modules == []
    assert any("no LoRA weights" in x for x in ck.problems)


def test_empty_adapter_file(tmp_path):
    f = tmp_path / "my_lora.safetensors"
    save_file({}, f)
    ck = read_checkpoint(f, f.name)
    assert ck.tensors == [] and any("no tensors" in x for x in ck.problems)


def test_unpaired_half_is_reported(tmp_path):
    d, u = _lora(4, 8, 8)
    f = tmp_path / "x.safetensors"
    save_file({"lora_unet_a_to_q.lora_down.weight": d, "lora_unet_a_to_q.lora_up.weight": u,
               "lora_unet_a_to_k.lora_down.weight": d}, f)
    ck = read_checkpoint(f, f.name)
    assert len(ck.modules) == 1
    assert any("only one of their two weights" in x for x in ck.problems)


def _raw(path: Path, header: bytes | dict, data: bytes = b"", length: int | None = None) -> Path:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h) if length is None else length) + h + data)
    return path


@pytest.mark.parametrize("name, make, expect", [
    ("empty", lambda p: p.write_bytes(b"") or p, "shorter than the 8-byte"),
    ("absurd_length", lambda p: _raw(p, b"{}", length=2 ** 63), "impossible"),
    ("length_past_end", lambda p: _raw(p, b"{}", length=4096), "impossible"),
    ("bad_json", lambda p: _raw(p, b'{"a": [1, 2'), "not valid JSON"),
    ("not_utf8", lambda p: _raw(p, b'{"\xff\xfe": 1}'), "not valid JSON"),
    ("json_list", lambda p: _raw(p, b"[1, 2]"), "not a JSON object"),
    ("offsets_outside", lambda p: _raw(p, {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1 << 40]}},
                                       b"\0" * 16), "outside"),
    ("negative_shape", lambda p: _raw(p, {"w": {"dtype": "F32", "shape": [-4, 1], "data_offsets": [0, 16]}},
                                      b"\0" * 16), "negative"),
    ("overflow_shape", lambda p: _raw(p, {"w": {"dtype": "F32", "shape": [2 ** 62, 2 ** 62, 2 ** 62],
                                                "data_offsets": [0, 16]}}, b"\0" * 16), "needs"),
    ("size_mismatch", lambda p: _raw(p, {"w": {"dtype": "F16", "shape": [4], "data_offsets": [0, 16]}},
                                     b"\0" * 16), "needs 8"),
    ("unknown_dtype", lambda p: _raw(p, {"w": {"dtype": "Q99", "shape": [4], "data_offsets": [0, 16]}},
                                     b"\0" * 16), "unknown dtype"),
    ("shape_not_ints", lambda p: _raw(p, {"w": {"dtype": "F32", "shape": ["4"], "data_offsets": [0, 16]}},
                                      b"\0" * 16), "shape"),
    ("entry_not_object", lambda p: _raw(p, {"w": 7}), "not an object"),
])
def test_hostile_headers_become_problems(tmp_path, name, make, expect):
    f = make(tmp_path / f"{name}.safetensors")
    p = parse(f, f.name)                           # must not raise
    assert any(expect in x for x in p.source.problems), p.source.problems
    assert p.source.kind == "safetensors"


def test_bad_tensor_entry_does_not_lose_the_good_ones(tmp_path):
    d = np.arange(8, dtype=np.float32)
    hdr = {"good": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]},
           "bad": {"dtype": "F32", "shape": [8], "data_offsets": [32, 64]}}
    f = _raw(tmp_path / "m.safetensors", hdr, d.tobytes())
    ck = read_checkpoint(f, f.name)
    assert [t.name for t in ck.tensors] == ["good"]
    assert ck.tensors[0].abs_max == 7.0
    assert any("bad" in x and "outside" in x for x in ck.problems)


def test_truncated_real_file(tmp_path):
    f = tmp_path / "t.safetensors"
    write_kohya(f)
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 100])
    ck = read_checkpoint(f, f.name)             # the last tensor(s) are lost, not the file
    assert ck.problems and any("outside" in x for x in ck.problems)
    assert len(ck.modules) >= 2


# -- names ----------------------------------------------------------------------------

@pytest.mark.parametrize("rel, fmt, step, epoch", [
    ("checkpoint-1200/adapter_model.safetensors", "peft", 1200, None),
    ("out/lora-step00000500.safetensors", "kohya", 500, None),
    ("out/lora-000007.safetensors", "kohya", None, 7),
    ("out/pytorch_lora_weights_300.safetensors", "diffusers", 300, None),
    ("out/lora.safetensors", "kohya", None, None),
])
def test_step_from_path(rel, fmt, step, epoch):
    assert step_from_path(rel, fmt) == (step, epoch)


def test_leaf_names():
    assert leaf_name("lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_out_0", "kohya") == "to_out_0"
    assert leaf_name("base_model.model.model.layers.0.mlp.gate_proj", "peft") == "gate_proj"
    assert leaf_name("unet.a.attn1.to_out.0", "diffusers") == "to_out.0"


def test_parallel_scan_gives_the_serial_results(tmp_path, monkeypatch):
    import lorascope.ingest._tensorscan as ts
    f = tmp_path / "p.safetensors"
    write_kohya(f, dtype=np.float32, nan=True)
    monkeypatch.setattr(ts, "BATCH", 256)                 # many small tasks
    monkeypatch.setattr(ts, "PARALLEL_MIN_BYTES", 1 << 40)
    serial = read_checkpoint(f, f.name)
    monkeypatch.setattr(ts, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(ts, "SCAN_WORKERS", 3)
    monkeypatch.setattr(ts, "_cpus", lambda: 3)
    parallel = read_checkpoint(f, f.name)
    assert parallel.modules == serial.modules
    assert parallel.tensors == serial.tensors and parallel.problems == serial.problems
    assert sum(m.nonfinite for m in parallel.modules) == 2


def test_a_file_large_enough_for_scan_threads_reads_as_in_one(tmp_path, monkeypatch):
    """A 40 MB adapter scanned by several threads (from the default threshold of 32 MiB)
    equals the one-thread reading, number for number."""
    import threading

    import lorascope.ingest._tensorscan as ts
    monkeypatch.setattr(ts, "_cpus", lambda: 3)
    rng = np.random.default_rng(7)
    t = {}
    for i in range(110):
        t[f"lora_unet_blocks_{i}_to_q.lora_down.weight"] = (rng.standard_normal((32, 1280)) * 0.02).astype(np.float16)
        t[f"lora_unet_blocks_{i}_to_q.lora_up.weight"] = (rng.standard_normal((4096, 32)) * 0.01).astype(np.float16)
        t[f"lora_unet_blocks_{i}_to_q.alpha"] = np.array(16.0, np.float16)
    t["lora_unet_blocks_7_to_q.lora_up.weight"][5, 5] = np.inf
    f = tmp_path / "big.safetensors"
    save_file(t, f)
    assert f.stat().st_size >= ts.PARALLEL_MIN_BYTES
    real, seen, me = ts.Scanner.task, set(), threading.get_ident()

    def tagged(self, task):
        seen.add(threading.get_ident())
        if threading.get_ident() == me:
            time.sleep(0.002)                      # so another thread surely takes some
        return real(self, task)

    monkeypatch.setattr(ts.Scanner, "task", tagged)
    parallel = read_checkpoint(f, f.name)
    assert len(seen) >= 2                          # a second thread took spans
    monkeypatch.setattr(ts, "SCAN_WORKERS", 1)
    serial = read_checkpoint(f, f.name)
    assert parallel.modules == serial.modules and parallel.tensors == serial.tensors
    assert [m.nonfinite for m in parallel.modules].count(1) == 1
    m0 = parallel.modules[0]
    down = t["lora_unet_blocks_0_to_q.lora_down.weight"].astype(np.float64)
    up = t["lora_unet_blocks_0_to_q.lora_up.weight"].astype(np.float64)
    assert m0.norm == pytest.approx(np.linalg.norm(up @ down) * 16 / 32, rel=1e-4)


def test_locon_tucker_core_is_in_the_norm(tmp_path):
    """LyCORIS LoCon with use_tucker writes down [r, in, 1, 1], mid [r, r, 3, 3] and
    up [out, r, 1, 1]: the layer's update is up x mid x down, whose norm the file reader
    gets from the two Gram matrices and the small core."""
    torch = pytest.importorskip("torch")
    locon = pytest.importorskip("lycoris.modules.locon")
    from safetensors.torch import save_file as tsave
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(40, 24, 3, padding=1)
    m = locon.LoConModule("lora_unet_down_blocks_0_resnets_0_conv1", conv, 1.0,
                          lora_dim=4, alpha=2, use_tucker=True)
    with torch.no_grad():
        m.lora_up.weight.normal_(0, 0.05)          # LyCORIS starts it at zero
    sd = {f"{m.lora_name}.{k}": v.detach().to(torch.float16).contiguous()
          for k, v in m.state_dict().items()}
    assert f"{m.lora_name}.lora_mid.weight" in sd
    f = tmp_path / "locon.safetensors"
    tsave(sd, str(f), metadata={"ss_network_module": "lycoris.kohya"})
    ck = read_checkpoint(f, f.name)
    assert ck.format == "kohya" and ck.problems == []
    (mod,) = ck.modules
    with torch.no_grad():
        for k, v in m.state_dict().items():        # the weights as stored (float16)
            v.copy_(sd[f"{m.lora_name}.{k}"].float())
        expected = float(m.get_diff_weight()[0].double().norm())
    assert mod.rank == 4 and mod.alpha == 2
    assert mod.norm == pytest.approx(expected, rel=1e-4)
    # without the core, the norm would be that of up @ down: clearly different
    up = sd[f"{m.lora_name}.lora_up.weight"].double().reshape(24, 4)
    down = sd[f"{m.lora_name}.lora_down.weight"].double().reshape(4, 40)
    assert abs(float((up @ down).norm()) * 0.5 - expected) > 0.1 * expected


def _applied_update(module, linear, torch) -> float:
    """The norm of the update a LyCORIS layer really adds in training: its forward on
    the identity, minus the frozen layer's."""
    eye = torch.eye(linear.in_features)
    with torch.no_grad():
        return float((module(eye) - linear(eye)).double().norm())


@pytest.mark.parametrize("algo, kwargs", [
    ("loha", {}),
    ("lokr", {}),                         # lokr_w1 whole, lokr_w2 = w2_a @ w2_b
    ("lokr", {"factor": 4}),
    ("lokr", {"full_matrix": True}),      # both whole: scale 1
])
def test_lycoris_loha_and_lokr_layers(tmp_path, algo, kwargs):
    torch = pytest.importorskip("torch")
    pytest.importorskip("lycoris")
    from lycoris.modules.loha import LohaModule
    from lycoris.modules.lokr import LokrModule
    from safetensors.torch import save_file as tsave
    torch.manual_seed(1)
    cls = LohaModule if algo == "loha" else LokrModule
    layers, sd = [], {}
    for i, (fan_in, fan_out) in enumerate(((64, 96), (48, 40))):
        lin = torch.nn.Linear(fan_in, fan_out)
        m = cls(f"lora_unet_blocks_{i}_attn_to_q", lin, 1.0, lora_dim=4, alpha=2, **kwargs)
        with torch.no_grad():
            for n, prm in m.named_parameters():
                if n.startswith(("hada_", "lokr_")):
                    prm.normal_(0, 0.1)           # LyCORIS starts one factor at zero
            for k, v in m.state_dict().items():   # what the file will hold (bf16)
                v.copy_(v.to(torch.bfloat16).float())
        layers.append((m, lin))
        sd.update({f"{m.lora_name}.{k}": v.detach().to(torch.bfloat16).contiguous()
                   for k, v in m.state_dict().items()})
    dead_name = layers[1][0].lora_name
    zero_key = "hada_w2_a" if algo == "loha" else (
        "lokr_w2" if f"{dead_name}.lokr_w2" in sd else "lokr_w2_b")
    sd[f"{dead_name}.{zero_key}"].zero_()                       # one layer never trained
    f = tmp_path / f"{algo}.safetensors"
    tsave(sd, str(f), metadata={"ss_network_module": "lycoris.kohya", "ss_network_dim": "4"})
    ck = read_checkpoint(f, f.name)
    assert ck.format == "kohya" and ck.problems == [], ck.problems
    assert ck.dtype == "BF16" and ck.target_modules == ["to_q"]
    mods = {m.name: m for m in ck.modules}
    assert len(mods) == 2
    m0, lin0 = layers[0]
    got = mods[m0.lora_name]
    keys = m0.state_dict()
    decomposed = any(k.endswith("_b") for k in keys)
    # LyCORIS stores alpha = rank where it keeps both LoKr factors whole (scale 1): that
    # layer has no rank and no alpha of its own
    assert got.alpha == (float(keys["alpha"]) if decomposed or algo == "loha" else None)
    assert not got.zero and got.nonfinite == 0
    assert got.rank == (4 if decomposed else None)
    assert kwargs != {"full_matrix": True} or not decomposed
    assert got.norm == pytest.approx(_applied_update(m0, lin0, torch), rel=1e-3)
    dead = mods[layers[1][0].lora_name]
    assert dead.zero and dead.norm == 0 and dead.mean_abs == 0


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_lycoris_shaped_file_reads_without_losing_statistics(tmp_path, data):
    """LyCORIS factors with any shapes and dtypes (mismatched, empty, scalars, a
    lora_mid that does not fit) give modules or problems, never an exception, and every
    tensor keeps its statistics."""
    keys = ["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "lokr_w1",
            "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2",
            "lora_down.weight", "lora_up.weight", "lora_mid.weight", "alpha"]
    header, blob = {}, bytearray()
    for i in range(data.draw(st.integers(1, 3))):
        for k in data.draw(st.lists(st.sampled_from(keys), min_size=1, max_size=6, unique=True)):
            dtype = data.draw(st.sampled_from(["F16", "BF16", "F32", "I8"]))
            shape = data.draw(st.lists(st.integers(0, 5), min_size=0, max_size=4))
            n = int(np.prod(shape)) if shape else 1
            size = {"F16": 2, "BF16": 2, "F32": 4, "I8": 1}[dtype] * n
            header[f"lora_unet_b{i}_to_q.{k}"] = {"dtype": dtype, "shape": shape,
                                                  "data_offsets": [len(blob), len(blob) + size]}
            blob += bytes(data.draw(st.integers(0, 255)) for _ in range(min(size, 4))) + bytes(max(0, size - 4))
    f = _raw(tmp_path / f"l{data.draw(st.integers(0, 10 ** 9))}.safetensors", header, bytes(blob))
    ck = read_checkpoint(f, f.name)
    assert not any("cannot read tensor data" in p for p in ck.problems), ck.problems
    assert all(t.name in header for t in ck.tensors) and len(ck.tensors) == len(header)
    for m in ck.modules:
        assert m.norm is None or (math.isfinite(m.norm) and m.norm >= 0)


def test_an_empty_tensor_in_a_file_without_data_is_fine(tmp_path):
    # found by the LyCORIS property test: the size check stopped multiplying the shape
    # once it passed the (zero) data length, before it reached the zero dimension
    f = _raw(tmp_path / "e.safetensors", {"w": {"dtype": "F16", "shape": [1, 0], "data_offsets": [0, 0]}})
    ck = read_checkpoint(f, f.name)
    assert ck.problems == []
    assert [(t.name, t.shape, t.zero) for t in ck.tensors] == [("w", (1, 0), False)]


def test_a_loha_layer_too_large_to_form_gets_no_norm(tmp_path, monkeypatch):
    """Bounded time: a LoHa update is formed only up to MAX_UPDATE elements (a hostile
    file could declare 67M x 67M with rank-1 factors)."""
    import lorascope.ingest._lycoris as ly
    monkeypatch.setattr(ly, "MAX_UPDATE", 100)
    rng = np.random.default_rng(2)
    t = {f"lora_unet_a_to_q.{k}": rng.standard_normal(s).astype(np.float32)
         for k, s in (("hada_w1_a", (20, 2)), ("hada_w1_b", (2, 10)),
                      ("hada_w2_a", (20, 2)), ("hada_w2_b", (2, 10)))}
    f = tmp_path / "big_loha.safetensors"
    save_file(t, f)
    (m,) = read_checkpoint(f, f.name).modules
    assert m.norm is None and m.rank == 2 and not m.zero
    monkeypatch.setattr(ly, "MAX_UPDATE", 1 << 28)
    (m,) = read_checkpoint(f, f.name).modules
    dw = (t["lora_unet_a_to_q.hada_w1_a"] @ t["lora_unet_a_to_q.hada_w1_b"]).astype(np.float64) * \
        (t["lora_unet_a_to_q.hada_w2_a"] @ t["lora_unet_a_to_q.hada_w2_b"])
    assert m.norm == pytest.approx(float(np.linalg.norm(dw)), rel=1e-5)   # no alpha: scale 1
