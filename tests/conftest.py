import os
import sys
import tempfile
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))  # tests/toy_envs.py

# One game cache for the whole test session: hermetic (never the user's cache), but shared
# between tests so each TextWorld game is generated once.
if "TURNRL_CACHE" not in os.environ:
    os.environ["TURNRL_CACHE"] = tempfile.mkdtemp(prefix="turnrl-test-cache-")


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return Path(os.environ["TURNRL_CACHE"])
