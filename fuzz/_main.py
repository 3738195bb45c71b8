"""The libFuzzer loop shared by every fuzz/fuzz_<parser>.py harness."""
from __future__ import annotations

import os
import sys

import atheris


def run(name: str) -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    os.environ.pop("LORASCOPE_STRICT", None)
    with atheris.instrument_imports(include=["lorascope"]):
        # instrument the package before the targets import it
        for m in ("lorascope.build", "lorascope.ingest.config", "lorascope.ingest.dataset",
                  "lorascope.ingest.llamafactory", "lorascope.ingest.safetensors",
                  "lorascope.ingest.textlog", "lorascope.ingest.trainer_state",
                  "lorascope.ingest.tfevents", "lorascope.ingest.wandb", "lorascope.ingest.mlflow",
                  "lorascope.ingest.aitk", "lorascope.inspect", "lorascope.report.safe",
                  "lorascope.report.text", "lorascope.report.html"):
            try:
                __import__(m)
            except ImportError:            # tfevents without tensorboard, html without jinja
                pass
    import harness
    target = harness.TARGETS[name]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()
