"""atheris harness: lorascope's trainer_state parser on arbitrary bytes (see fuzz/harness.py).

    .venv/bin/python fuzz/fuzz_trainer_state.py fuzz/corpus/trainer_state/queue fuzz/seeds/trainer_state -max_total_time=60
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

if __name__ == "__main__":
    from _main import run
    run("trainer_state")
