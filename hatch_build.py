"""Build hook: compiles the checkpoint scan's single pass (lorascope/ingest/_scankernel.pyx,
its loops in _scankernel.h) with Cython and the C compiler, in place, so that a wheel and
an editable install both carry it.  Optional: without a compiler (or with
LORASCOPE_NO_KERNEL=1) the build goes on and lorascope scans with numpy alone, to the same
statistics, a few times slower (bench/bench_ckpt.py)."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

HERE = Path(__file__).resolve().parent
SOURCE = "lorascope/ingest/_scankernel.pyx"


def build_in_place() -> list[str]:
    """Compile the extension next to its source; returns the built files (relative)."""
    from Cython.Build import cythonize
    from setuptools import Distribution, Extension
    from setuptools.command.build_ext import build_ext

    ext = Extension("lorascope.ingest._scankernel", [SOURCE], include_dirs=["lorascope/ingest"],
                    extra_compile_args=["-O3", "-g0", "-Wno-psabi"] if os.name != "nt" else ["/O2"])
    dist = Distribution({"ext_modules": cythonize([ext], quiet=True, language_level=3),
                         "script_name": "hatch_build.py"})
    cmd = build_ext(dist)
    cmd.inplace = True
    with tempfile.TemporaryDirectory() as scratch:     # object files: not in the checkout
        cmd.build_temp = scratch
        cmd.ensure_finalized()
        cmd.run()
    return [Path(cmd.get_ext_fullpath(ext.name)).resolve().relative_to(HERE).as_posix()]


class KernelHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        # registered for the wheel target only (pyproject.toml): wheels and editable installs
        if os.environ.get("LORASCOPE_NO_KERNEL"):
            return
        cwd = os.getcwd()
        os.chdir(HERE)
        try:
            built = build_in_place()
        except Exception as e:                  # noqa: BLE001 - any build failure: numpy path
            print(f"lorascope: the compiled checkpoint scan was not built ({type(e).__name__}: "
                  f"{e}); lorascope will scan with numpy alone", file=sys.stderr)
            return
        finally:
            os.chdir(cwd)
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        build_data["artifacts"].extend(built)
