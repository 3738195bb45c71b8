"""atheris harness: lorascope's wandb parser on arbitrary bytes (see fuzz/harness.py).

    .venv/bin/python fuzz/fuzz_wandb.py fuzz/corpus/wandb/queue fuzz/seeds/wandb -max_total_time=60
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

if __name__ == "__main__":
    from _main import run
    run("wandb")
