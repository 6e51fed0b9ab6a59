"""ALFWorld's six task types and the small helpers shared by the generator, the official
data loader and the env. No engine import here, so listing task types is free."""

from __future__ import annotations

from collections.abc import Sequence

from turnrl.errors import ConfigError, did_you_mean

__all__ = ["TASK_TYPES", "SPLITS", "resolve_task_types", "resolve_split"]

#: The task types of ALFWorld's text benchmark, in ALFWorld's own order (ids 1..6).
TASK_TYPES: tuple[str, ...] = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)

#: Splits, named as in ALFWorld's ``json_2.1.1`` release. ``valid_unseen`` is the
#: out-of-distribution split.
SPLITS: tuple[str, ...] = ("train", "valid_seen", "valid_unseen")


def resolve_task_types(task_types: str | Sequence[str] | None) -> tuple[str, ...]:
    """Validate a task-type filter: ``None`` (all six), one name, or a list of names.

    ALFWorld's numeric ids (1..6) are accepted too.

    Raises:
        ConfigError: an unknown name (close matches are suggested) or an empty list.
    """
    if task_types is None:
        return TASK_TYPES
    if isinstance(task_types, (str, int)):
        task_types = [task_types]  # type: ignore[list-item]
    out: list[str] = []
    for t in task_types:
        if isinstance(t, int) and not isinstance(t, bool) and 1 <= t <= len(TASK_TYPES):
            t = TASK_TYPES[t - 1]
        if t not in TASK_TYPES:
            raise ConfigError(
                f"unknown ALFWorld task type {t!r}.{did_you_mean(str(t), TASK_TYPES)} "
                f"Task types: {', '.join(TASK_TYPES)} (or their ids 1-6)"
            )
        if t not in out:
            out.append(t)
    if not out:
        raise ConfigError(f"task_types is empty; give one or more of {', '.join(TASK_TYPES)}")
    return tuple(out)


def resolve_split(split: str) -> str:
    """Validate a split name.

    Raises:
        ConfigError: not one of :data:`SPLITS`.
    """
    if split not in SPLITS:
        raise ConfigError(
            f"unknown ALFWorld split {split!r}.{did_you_mean(str(split), SPLITS)} "
            f"Splits: {', '.join(SPLITS)}"
        )
    return split
