"""Fixtures shared by the env tests."""

import pytest

from turnrl.sandbox import SandboxUnavailable, make_sandbox


@pytest.fixture(scope="module")
def sandbox():
    """A bubblewrap sandbox for the code envs (the test is skipped where none can run)."""
    try:
        return make_sandbox("bubblewrap")
    except SandboxUnavailable as exc:
        pytest.skip(f"bubblewrap sandbox unavailable: {exc}")
