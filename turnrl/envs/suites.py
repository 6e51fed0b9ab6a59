"""Suites: named sets of environments with fixed, disjoint train and eval seeds.

A suite is what you train and evaluate on: ``turnrl eval textworld --agent expert``
plays every entry of the ``textworld`` suite on its eval seeds. Eval seeds never overlap
train seeds, checked when the suite is built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from turnrl.errors import ConfigError, DuplicateEnvError, UnknownEnvError, did_you_mean

__all__ = ["SuiteEntry", "Suite", "register_suite", "get_suite", "list_suites", "is_suite"]


@dataclass(frozen=True)
class SuiteEntry:
    """One environment of a suite.

    Attributes:
        env_id: registered environment id.
        kwargs: keyword arguments for :func:`turnrl.make`.
        train_seeds: seeds used for training episodes.
        eval_seeds: seeds used for evaluation; disjoint from ``train_seeds``.
        name: short label shown in tables (defaults to the env id).
    """

    env_id: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    train_seeds: tuple[int, ...] = ()
    eval_seeds: tuple[int, ...] = ()
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "train_seeds", tuple(int(s) for s in self.train_seeds))
        object.__setattr__(self, "eval_seeds", tuple(int(s) for s in self.eval_seeds))
        if not self.name:
            object.__setattr__(self, "name", self.env_id)
        overlap = sorted(set(self.train_seeds) & set(self.eval_seeds))
        if overlap:
            raise ConfigError(
                f"suite entry {self.name!r}: eval seeds must not overlap train seeds; "
                f"both hold {overlap[:5]}{' ...' if len(overlap) > 5 else ''}"
            )
        if not self.eval_seeds:
            raise ConfigError(f"suite entry {self.name!r} has no eval seeds")


@dataclass(frozen=True)
class Suite:
    """A named list of :class:`SuiteEntry`."""

    name: str
    entries: tuple[SuiteEntry, ...]
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", tuple(self.entries))
        if not self.entries:
            raise ConfigError(f"suite {self.name!r} has no entries")
        names = [e.name for e in self.entries]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"suite {self.name!r} has duplicate entry names {dupes}")

    def with_kwargs(self, kwargs: Mapping[str, Any]) -> tuple[SuiteEntry, ...]:
        """The entries with ``kwargs`` added to each entry's own keyword arguments (e.g.
        ``max_turns`` for every env of the suite).

        Raises:
            ConfigError: a key some entry sets itself: that is what tells the entries apart
                (a task type, a challenge), so it cannot be overridden for all of them.
        """
        clashes = sorted({k for e in self.entries for k in e.kwargs} & set(kwargs))
        if clashes:
            raise ConfigError(
                f"env kwargs {clashes} are set per entry by suite {self.name!r} (they tell its "
                f"entries apart); override other keyword arguments only, or use one env id")
        return tuple(dataclasses.replace(e, kwargs={**e.kwargs, **kwargs}) for e in self.entries)


_SUITES: dict[str, Suite] = {}


def register_suite(
    name: str, entries: Sequence[SuiteEntry], *, description: str = "", override: bool = False
) -> Suite:
    """Register a suite under ``name`` (e.g. ``"textworld"``).

    Raises:
        DuplicateEnvError: the name is taken and ``override`` is false.
        ConfigError: seeds overlap, or the suite is empty.
    """
    if name in _SUITES and not override:
        raise DuplicateEnvError(f"suite {name!r} is already registered; pass override=True")
    suite = Suite(name=name, entries=tuple(entries), description=description)
    _SUITES[name] = suite
    return suite


def get_suite(name: str) -> Suite:
    """The suite registered as ``name``.

    Raises:
        UnknownEnvError: no such suite (close matches are suggested).
    """
    try:
        return _SUITES[name]
    except KeyError:
        raise UnknownEnvError(
            f"no suite named {name!r}.{did_you_mean(name, _SUITES)} "
            f"Known suites: {', '.join(sorted(_SUITES)) or '(none)'}"
        ) from None


def is_suite(name: str) -> bool:
    """Whether a suite is registered as ``name``."""
    return name in _SUITES


def list_suites() -> list[Suite]:
    """All registered suites, sorted by name."""
    return [_SUITES[k] for k in sorted(_SUITES)]
