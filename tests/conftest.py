import os

import pytest

from helpers import WILD

# A rule or parser that crashes fails the tests instead of being recorded quietly.
os.environ.setdefault("LORASCOPE_STRICT", "1")


@pytest.fixture
def wild():
    if not WILD.is_dir():
        pytest.skip("../shared/wild-runs is not present")
    return WILD
