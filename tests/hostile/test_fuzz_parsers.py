"""Property-based fuzzing (hypothesis) of every parser: arbitrary bytes, and real files
(fuzz/seeds/) with bytes flipped, cut, duplicated or spliced.  The property: the parser
returns (never raises) and what it returns fits in the JSON report."""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostile.fuzzing import harness, seeds

pytestmark = pytest.mark.timeout(600)

FAST = settings(max_examples=int(os.environ.get("LORASCOPE_FUZZ_EXAMPLES", 200)), deadline=None,
                suppress_health_check=list(HealthCheck), derandomize=False)


@st.composite
def mutated(draw, target: str):
    pool = seeds(target)
    if not pool or draw(st.integers(0, 5)) == 0:
        return draw(st.binary(max_size=4096))
    data = bytearray(draw(st.sampled_from(pool)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.integers(0, 5))
        n = len(data)
        i = draw(st.integers(0, max(0, n - 1)))
        if op == 0 and n:                                   # flip a byte
            data[i] = draw(st.integers(0, 255))
        elif op == 1:                                       # cut the file
            del data[i:]
        elif op == 2:                                       # insert bytes
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == 3 and n:                                 # duplicate a slice
            j = draw(st.integers(i, n))
            data[j:j] = data[i:j][:4096]
        elif op == 4:                                       # an interesting number as text
            data[i:i] = draw(st.sampled_from([b"NaN", b"-Infinity", b"1e999", b"9" * 400, b"-1",
                                              b"\xff\xfe", b"\x00", b'"\\ud800"', b"[" * 64, b"null"]))
        elif op == 5 and n >= 8:                            # an absurd little-endian length
            data[i:i + 8] = draw(st.sampled_from([b"\xff" * 8, b"\x00\x00\x00\x00\x00\x00\x00\x40",
                                                  (2 ** 31).to_bytes(8, "little")]))
    return bytes(data)


def _case(target):
    fn = harness.TARGETS[target]

    @FAST
    @given(data=mutated(target))
    def test(data):
        fn(data)
    test.__name__ = f"test_{target}_never_raises"
    return test


test_tfevents = _case("tfevents")
test_safetensors = _case("safetensors")
test_config = _case("config")
test_trainer_state = _case("trainer_state")
test_llamafactory = _case("llamafactory")
test_textlog = _case("textlog")
test_model_config = _case("model_config")
test_dataset = _case("dataset")
test_image = _case("image")
test_wandb = _case("wandb")
test_wandb_files = _case("wandb_files")
test_mlflow = _case("mlflow")
test_aitk = _case("aitk")
test_terminal = _case("terminal")
test_html = _case("html")


@FAST
@given(strings=st.lists(st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from(
    list("\x1b\r\n\b\x07\x9b\u202e\u2066\u200b\ufeff\U000e0041[];:/\\<>\"'")), max_size=40),
    min_size=1, max_size=12))
def test_output_strings_of_every_character(strings):
    """Structured: any Unicode text (escape sequences, bidi, tags) in every data field."""
    data = b"\xfe".join(s.encode("utf-8", "surrogatepass") for s in strings)
    harness.terminal(data)
    harness.html(data)


json_value = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10 ** 400), max_value=10 ** 400)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12)

TENSOR_KEYS = ["lora_unet_a.lora_down.weight", "lora_unet_a.lora_up.weight", "lora_unet_a.alpha",
               "base_model.model.q_proj.lora_A.weight", "base_model.model.q_proj.lora_B.weight"]


@FAST
@given(entries=st.dictionaries(st.sampled_from(TENSOR_KEYS + ["__metadata__"]),
                               st.fixed_dictionaries({}, optional={
                                   "dtype": st.sampled_from(["F32", "F16", "BF16", "I8", "F64", "Q9"]) | json_value,
                                   "shape": st.lists(st.integers(-3, 2 ** 64), max_size=4) | json_value,
                                   "data_offsets": st.lists(st.integers(-3, 2 ** 64), max_size=3) | json_value})
                               | json_value, max_size=5),
       body=st.binary(max_size=256))
def test_safetensors_headers_of_every_shape(entries, body):
    """Structured headers: every field with every JSON type and out-of-range integers."""
    import json
    import struct
    h = json.dumps(entries).encode()
    harness.safetensors(struct.pack("<Q", len(h)) + h + body)


@FAST
@given(doc=st.dictionaries(st.sampled_from(
    ["learning_rate", "network_dim", "network_alpha", "lora_rank", "lora_alpha", "train_batch_size",
     "per_device_train_batch_size", "max_train_steps", "max_steps", "num_train_epochs", "max_train_epochs",
     "resolution", "train_data_dir", "stage", "finetuning_type", "dataset", "cutoff_len", "r",
     "peft_type", "target_modules", "warmup_steps", "max_grad_norm", "gradient_accumulation_steps",
     "model_name_or_path", "pretrained_model_name_or_path", "optimizer_type", "lr_scheduler"]),
    json_value, max_size=12), v=st.integers(0, 5))
def test_config_values_of_every_type(doc, v):
    import json
    harness.config(bytes([v]) + json.dumps(doc).encode())


@FAST
@given(hist=st.lists(st.dictionaries(st.sampled_from(["step", "loss", "eval_loss", "learning_rate",
                                                      "grad_norm", "epoch"]), json_value, max_size=6),
                     max_size=20),
       top=st.dictionaries(st.sampled_from(["max_steps", "global_step", "logging_steps", "num_train_epochs",
                                            "train_batch_size", "best_model_checkpoint"]), json_value))
def test_trainer_state_entries_of_every_type(hist, top):
    import json
    harness.trainer_state(json.dumps(dict(top, log_history=hist)).encode())
    lines = b"".join(json.dumps(dict(h, current_steps=h.get("step"))).encode() + b"\n" for h in hist)
    harness.llamafactory(b"\0" + lines)
