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
        import lorascope.build  # noqa: F401  (instrument the package before the target imports it)
        import lorascope.ingest.config  # noqa: F401
        import lorascope.ingest.dataset  # noqa: F401
        import lorascope.ingest.llamafactory  # noqa: F401
        import lorascope.ingest.safetensors  # noqa: F401
        import lorascope.ingest.textlog  # noqa: F401
        import lorascope.ingest.trainer_state  # noqa: F401
        import lorascope.ingest.wandb  # noqa: F401
        import lorascope.ingest.mlflow  # noqa: F401
        import lorascope.ingest.aitk  # noqa: F401
        try:
            import lorascope.ingest.tfevents  # noqa: F401
        except ImportError:
            pass
    import harness
    target = harness.TARGETS[name]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()
