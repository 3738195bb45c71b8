"""atheris harness: lorascope's model_config parser on arbitrary bytes (see fuzz/harness.py).

    .venv/bin/python fuzz/fuzz_model_config.py fuzz/corpus/model_config/queue fuzz/seeds/model_config -max_total_time=60
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

if __name__ == "__main__":
    from _main import run
    run("model_config")
