"""Fixtures for the sandbox tests: real backends only, skipped with the reason when one
cannot run here."""

from __future__ import annotations

import pytest
from sandbox_helpers import FAST

from turnrl.sandbox import SandboxUnavailable
from turnrl.sandbox.bubblewrap import BubblewrapSandbox


@pytest.fixture(scope="session")
def bwrap() -> BubblewrapSandbox:
    try:
        return BubblewrapSandbox(FAST)
    except SandboxUnavailable as exc:
        pytest.skip(f"bubblewrap backend unavailable: {exc}")
