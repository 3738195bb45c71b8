"""accelerate's ``default_config.yaml``: how many processes ran (the devices an effective
batch multiplies by) and the mixed precision.  A launcher, not a trainer."""
from __future__ import annotations

from pathlib import Path

from lorascope.trainers import Layout
from lorascope.trainers._keys import Key, Out, find, read_table, to_int, to_str

KEYS = (Key("num_devices", ("num_processes",), to_int),)
KEY_NAMES = {"compute_environment", "distributed_type", "num_processes", "machine_rank"}


def detect(doc: dict, flat: dict, rel: str) -> bool:
    return len(set(doc) & KEY_NAMES) >= 2


def read(out: Out, doc: dict, flat: dict, facts: dict, path: Path, rel: str) -> None:
    read_table(out, flat, KEYS)
    mp = find(flat, "mixed_precision")
    if mp is not None and to_str(mp[1]):
        out.put("mixed_precision", to_str(mp[1]).lower(), mp[0])


LAYOUT = Layout(name="accelerate", trainer=None, task=None, keys=KEYS, detect=detect, read=read,
                doc="accelerate default_config.yaml")
