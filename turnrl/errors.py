"""Exceptions raised by turnrl.

Every error raised at the public API says what was expected, what arrived and how to fix
it. Catch :class:`TurnRLError` to catch them all; each also derives from the matching
builtin (``LookupError``, ``ValueError``, ...) so generic handlers keep working.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TurnRLError(Exception):
    """Base class of every error turnrl raises on purpose."""


class UnknownEnvError(TurnRLError, LookupError):
    """An environment or suite id that is not registered."""

    def __str__(self) -> str:  # LookupError would repr() the message; keep it readable
        return str(self.args[0]) if self.args else ""


class DuplicateEnvError(TurnRLError, ValueError):
    """An id registered twice."""


class InvalidEnvIdError(TurnRLError, ValueError):
    """An id that does not follow ``<namespace>/<Name>-v<N>``."""


class ConfigError(TurnRLError, ValueError):
    """A bad argument or configuration value."""


class UnsupportedSettingsError(ConfigError):
    """Settings that the underlying engine cannot handle (e.g. a TextWorld level that
    generates more rooms than TextWorld 1.7 supports)."""


class CheckpointError(TurnRLError, RuntimeError):
    """A run directory's checkpoint that cannot be read (truncated, corrupt, incomplete),
    or a run directory another trainer is using."""


class GameGenerationError(TurnRLError, RuntimeError):
    """A game could not be generated, even after the deterministic retries."""


class PluginError(TurnRLError, ImportError):
    """A third-party environment package failed to load through its entry point."""


def close_matches(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Candidates that look like ``word``: case-insensitive and ignoring the namespace."""
    candidates = list(candidates)
    lowered = {c.lower(): c for c in candidates}
    hits = difflib.get_close_matches(word.lower(), list(lowered), n=n, cutoff=0.5)
    # Also compare the bare names ("textworld-v0" vs "turnrl/TextWorld-v0").
    bare = {c.lower().split("/")[-1]: c for c in candidates}
    hits += difflib.get_close_matches(word.lower().split("/")[-1], list(bare), n=n, cutoff=0.5)
    out: list[str] = []
    for h in hits:
        original = lowered.get(h) or bare.get(h)
        if original and original not in out:
            out.append(original)
    return out[:n]


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """A ' Did you mean ...?' suffix, or '' when nothing is close."""
    matches = close_matches(word, candidates)
    if not matches:
        return ""
    return " Did you mean " + " or ".join(repr(m) for m in matches) + "?"
