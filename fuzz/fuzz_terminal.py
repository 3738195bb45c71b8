"""atheris harness: the terminal summary, inspect table and printed JSON on fuzzed data strings (see fuzz/harness.py).

    .venv/bin/python fuzz/fuzz_terminal.py fuzz/corpus/terminal/queue fuzz/seeds/terminal -max_total_time=60
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

if __name__ == "__main__":
    from _main import run
    run("terminal")
