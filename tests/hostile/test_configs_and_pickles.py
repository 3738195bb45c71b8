"""YAML / TOML configs and pickles: nothing in a file is ever executed; alias bombs
and deep nesting return fast."""
from __future__ import annotations

import pickle
import time

import pytest

from hostile.util import analyze, base_run, problems_of

pytestmark = pytest.mark.timeout(240)


def yaml_tags(marker) -> list[str]:
    cmd = f"touch {marker}"
    return [
        f"learning_rate: !!python/object/apply:os.system ['{cmd}']\n",
        f"x: !!python/object/apply:subprocess.check_output [['touch', '{marker}']]\n",
        f"x: !!python/object/new:os.system ['{cmd}']\n",
        "x: !!python/name:os.system\n",
        "x: !!python/module:os\n",
        f"!!python/object/apply:os.system ['{cmd}']\n",
        f"x: !!python/object/apply:builtins.exec [\"open('{marker}', 'w')\"]\n",
    ]


def test_yaml_python_tags_are_never_executed(tmp_path):
    marker = tmp_path / "PWNED"
    run = base_run(tmp_path / "run")
    for i, doc in enumerate(yaml_tags(marker)):
        (run / f"config_{i}.yaml").write_text(doc)
    r, doc, _ = analyze(run, tmp_path / "out", subprocess_=True, html=False)
    assert not marker.exists(), "a YAML tag was executed"
    for i in range(len(yaml_tags(marker))):
        assert problems_of(doc, f"config_{i}.yaml"), f"config_{i}.yaml: tag accepted silently"


def billion_laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i-1}"] * 9) + "]")
    return "\n".join(lines) + "\nlearning_rate: 1.0e-4\n"


@pytest.mark.parametrize("name,text", [
    ("bomb.yaml", billion_laughs()),
    ("big_bomb.yaml", billion_laughs(40)),
    ("merge_bomb.yaml", "a: &a {x: 1}\n" + "".join(f"b{i}: &b{i} {{<<: [*a], y{i}: 1}}\n" for i in range(5000))),
    ("deep.yaml", "[" * 50_000),
    ("deep_map.yaml", "a:\n" + "".join(" " * i + "a:\n" for i in range(1, 3000))),
    ("deep.toml", "a = " + "[" * 50_000),
    ("tables.toml", "".join(f"[t{i}]\nx = {i}\n" for i in range(50_000))),
    ("bad.toml", "learning_rate = nan\nnetwork_dim = inf\n[x\n"),
    ("binary.yaml", "\x00\x01\x02" * 1000),
])
def test_hostile_config_returns_fast(tmp_path, name, text):
    run = base_run(tmp_path / "run")
    (run / name).write_text(text)
    t0 = time.monotonic()
    r, doc, _ = analyze(run, tmp_path / "out", html=False)
    assert time.monotonic() - t0 < 60       # nothing expanded: a 9^10-element document is never built


class Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("name", ["training_args.bin", "optimizer.pt", "model.ckpt", "rng_state.pth",
                                  "scheduler.pkl", "pytorch_model.bin"])
def test_pickles_are_never_unpickled(tmp_path, name):
    marker = tmp_path / "PWNED"
    run = base_run(tmp_path / "run")
    (run / "checkpoint-10").mkdir()
    for where in (run / name, run / "checkpoint-10" / name):
        where.write_bytes(pickle.dumps(Evil(marker), protocol=2))
    analyze(run, tmp_path / "out", subprocess_=True, html=False)
    assert not marker.exists(), f"{name} was unpickled"


def test_pickle_named_like_a_config_is_not_executed(tmp_path):
    """A pickle dropped under a name some parser reads (json/yaml/log/safetensors)."""
    marker = tmp_path / "PWNED"
    run = base_run(tmp_path / "run")
    payload = pickle.dumps(Evil(marker))
    for name in ("training_args.json", "config.yaml", "train.log", "adapter_model.safetensors",
                 "events.out.tfevents.1.x", "trainer_log.jsonl"):
        (run / name).write_bytes(payload)
    analyze(run, tmp_path / "out", html=False)
    assert not marker.exists()
