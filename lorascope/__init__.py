"""lorascope: the post-mortem of a LoRA fine-tuning run."""
__version__ = "0.1.0"
