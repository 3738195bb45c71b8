"""lorascope: the post-mortem of a LoRA fine-tuning run.

From Python (see :mod:`lorascope.api`)::

    import lorascope
    run = lorascope.load("output/my_lora")         # .scalars, .checkpoints, .dataset: DataFrames
    report = lorascope.analyze("output/my_lora")   # .verdict, .findings (a DataFrame); Jupyter shows it

``import lorascope`` stays light: numpy, scipy and pandas load on first use.
"""
__version__ = "0.1.0"
__all__ = ["__version__", "analyze", "load"]


def __getattr__(name: str):
    if name == "load":
        from lorascope.api import load
        return load
    if name == "analyze":
        from lorascope.api import analyze
        return analyze
    raise AttributeError(f"module 'lorascope' has no attribute {name!r}")
