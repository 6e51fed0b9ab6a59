"""Household generator: from (seed, task type, split) a solvable ALFWorld game.

ALFWorld's official games are PDDL problems extracted from AI2-THOR scenes. Without that
data we build the same kind of problem ourselves and play it on ALFWorld's own PDDL domain
and text grammar, so the observations, commands and goals are the ones ALFWorld players
know. Scenes are plausible because every choice comes from ALFWorld's own tables
(``alfworld.gen.constants``): which receptacles a room holds, which objects each receptacle
can contain (``VAL_RECEPTACLE_OBJECTS``), which objects can be cleaned, heated or cooled
(``VAL_ACTION_OBJECTS``), which receptacles open (``OPENABLE_CLASS_LIST``) and which rooms
each task type happens in (``GOALS_VALID``). Goals and task sentences come from ALFWorld's
goal library (``alfworld.gen.goal_library``).

A generated problem is only a candidate: :mod:`turnrl.envs.alfworld.games` plays it with
the expert and keeps it only if the expert wins (retrying with the next variant if not).

Splits hold out goal combinations, like ALFWorld's out-of-distribution split:
``(task type, object, receptacle)`` combinations with a stable hash in the held-out fifth
are used only by ``valid_unseen``; ``train`` and ``valid_seen`` draw from the rest (and
differ from each other by their random stream, so the same seed gives different houses).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from turnrl.envs.alfworld.tasks import TASK_TYPES, resolve_split
from turnrl.errors import ConfigError

__all__ = [
    "GENERATOR_VERSION", "HouseholdProblem", "generate_household", "goal_combinations",
    "is_unseen_combination", "DEFAULT_NUM_RECEPTACLES", "DEFAULT_NUM_DISTRACTORS",
]

#: Bump when generation changes, so cached games of an older generator are not reused.
GENERATOR_VERSION = 1

DEFAULT_NUM_RECEPTACLES: tuple[int, int] = (8, 14)
DEFAULT_NUM_DISTRACTORS: tuple[int, int] = (4, 12)

# Receptacle kinds per room: (type, fewest, most). Kinds of real AI2-THOR rooms.
_ROOMS: dict[str, tuple[tuple[str, int, int], ...]] = {
    "Kitchen": (
        ("CounterTop", 1, 3), ("Cabinet", 2, 8), ("Drawer", 1, 6), ("Fridge", 1, 1),
        ("Microwave", 1, 1), ("SinkBasin", 1, 1), ("StoveBurner", 0, 4),
        ("CoffeeMachine", 0, 1), ("Toaster", 0, 1), ("GarbageCan", 1, 1),
        ("DiningTable", 0, 1), ("Shelf", 0, 3),
    ),
    "Bathroom": (
        ("CounterTop", 1, 1), ("SinkBasin", 1, 2), ("Cabinet", 1, 4), ("Toilet", 1, 1),
        ("ToiletPaperHanger", 1, 1), ("TowelHolder", 0, 1), ("HandTowelHolder", 0, 2),
        ("GarbageCan", 1, 1), ("Drawer", 0, 4), ("BathtubBasin", 0, 1), ("Shelf", 0, 2),
        ("Cart", 0, 1),
    ),
    "Bedroom": (
        ("Bed", 1, 1), ("Desk", 0, 2), ("Drawer", 1, 6), ("Dresser", 0, 1), ("Shelf", 0, 6),
        ("SideTable", 0, 2), ("GarbageCan", 1, 1), ("LaundryHamper", 0, 1), ("Safe", 0, 1),
        ("ArmChair", 0, 1),
    ),
    "LivingRoom": (
        ("Sofa", 1, 1), ("ArmChair", 0, 2), ("CoffeeTable", 1, 1), ("SideTable", 0, 2),
        ("TVStand", 0, 1), ("Drawer", 0, 4), ("Cabinet", 0, 4), ("Shelf", 0, 4),
        ("GarbageCan", 1, 1), ("Dresser", 0, 1), ("Ottoman", 0, 1), ("Safe", 0, 1),
        ("DiningTable", 0, 1),
    ),
}
# Receptacles a desk lamp can stand on (look_at_obj_in_light).
_LAMP_HOSTS = ("Desk", "SideTable", "Dresser", "Shelf", "CoffeeTable")
# The appliance each transforming task needs, and the object property it requires.
_APPLIANCE = {
    "pick_clean_then_place_in_recep": ("SinkBasin", "Cleanable"),
    "pick_heat_then_place_in_recep": ("Microwave", "Heatable"),
    "pick_cool_then_place_in_recep": ("Fridge", "Coolable"),
}
# Receptacles that share a location with a sibling of the same kind now and then
# ("You are facing the drawer 3, and drawer 2").
_STACKABLE = ("Drawer", "Cabinet", "Shelf")
_UNSEEN_BUCKETS = 5  # one combination in five is held out for valid_unseen


@lru_cache(maxsize=1)
def _tables() -> dict[str, Any]:
    """ALFWorld's compatibility tables, without the sliced variants (not supported by the
    text benchmark, as in ALFWorld) and without movable receptacles used as receptacles."""
    import alfworld.gen.constants as c

    movable = set(c.MOVABLE_RECEPTACLES)
    can_contain = {
        r: sorted(o for o in objs if "Sliced" not in o)
        for r, objs in c.VAL_RECEPTACLE_OBJECTS.items() if r not in movable
    }
    actions = {k: {o for o in v if "Sliced" not in o} for k, v in c.VAL_ACTION_OBJECTS.items()}
    return {
        "can_contain": can_contain,
        "actions": actions,
        "openable": set(c.OPENABLE_CLASS_LIST),
        "movable": movable,
        "goals_valid": {k: sorted(v) for k, v in c.GOALS_VALID.items()},
        # Object types: everything but the static receptacles (movable ones such as Bowl
        # are objects too), as in ALFWorld's problem files.
        "objects": sorted(o for o in c.OBJECTS
                          if "Sliced" not in o and (o not in c.RECEPTACLES or o in movable)),
        "receptacle_types": sorted(set(c.RECEPTACLES) - movable),
    }


def _room_types(room: str) -> list[str]:
    return [kind for kind, _, _ in _ROOMS[room]]


def is_unseen_combination(task_type: str, obj: str, recep: str) -> bool:
    """Whether ``(task_type, obj, recep)`` is held out for the ``valid_unseen`` split.

    A stable hash (never Python's salted ``hash``), so the split is the same everywhere.
    """
    digest = hashlib.sha256(f"{task_type}|{obj}|{recep}".encode()).hexdigest()
    return int(digest, 16) % _UNSEEN_BUCKETS == 0


def goal_combinations(task_type: str, split: str = "train") -> list[tuple[str, str, str]]:
    """Every ``(room, object, receptacle)`` goal the generator may pick for a task type in
    a split. ``receptacle`` is the target receptacle, or ``"DeskLamp"`` for
    ``look_at_obj_in_light``."""
    split = resolve_split(split)
    t = _tables()
    out = []
    for room in t["goals_valid"][task_type]:
        kinds = _room_types(room)
        homes = {o for r in kinds for o in t["can_contain"].get(r, ())}
        if task_type == "look_at_obj_in_light":
            if not any(h in kinds for h in _LAMP_HOSTS):
                continue
            pairs = [(o, "DeskLamp") for o in sorted(homes)]
        else:
            appliance, prop = _APPLIANCE.get(task_type, (None, None))
            if appliance is not None and appliance not in kinds:
                continue
            pairs = []
            for r in kinds:
                if r in (appliance, "SinkBasin", "BathtubBasin"):
                    continue  # never "put a clean X in sinkbasin"
                for o in t["can_contain"].get(r, ()):
                    if prop is not None and o not in t["actions"][prop]:
                        continue
                    # The object must be able to start somewhere other than the target.
                    if not any(o in t["can_contain"].get(r2, ()) for r2 in kinds if r2 != r):
                        continue
                    pairs.append((o, r))
        for o, r in pairs:
            if is_unseen_combination(task_type, o, r) == (split == "valid_unseen"):
                out.append((room, o, r))
    return sorted(set(out))


@dataclass
class HouseholdProblem:
    """A generated household: the PDDL problem plus what ALFWorld's ``traj_data.json``
    would hold for it.

    Attributes:
        task_type: one of :data:`~turnrl.envs.alfworld.tasks.TASK_TYPES`.
        room: ``Kitchen``, ``Bathroom``, ``Bedroom`` or ``LivingRoom``.
        pddl_problem: the problem text, for ALFWorld's ``alfred.pddl`` domain.
        task_desc: the goal sentence shown after "Your task is to: ".
        pddl_params: ALFWorld's ``pddl_params`` (``object_target``, ``parent_target``,
            ``toggle_target``, ``mrecep_target``, ``object_sliced``).
        receptacles: receptacle ids in the problem (for tests and statistics).
        objects: object ids in the problem.
    """

    task_type: str
    room: str
    pddl_problem: str
    task_desc: str
    pddl_params: dict[str, Any]
    receptacles: list[str] = field(default_factory=list)
    objects: list[str] = field(default_factory=list)

    @property
    def traj_data(self) -> dict[str, Any]:
        """The two fields of ALFWorld's ``traj_data.json`` its hand-coded expert reads."""
        return {"task_type": self.task_type, "pddl_params": dict(self.pddl_params)}


def _count(value: int | Sequence[int] | None, default: tuple[int, int], name: str,
           rng: random.Random) -> int:
    if value is None:
        value = default
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ConfigError(f"{name} must be >= 0, got {value}")
        return value
    try:
        low, high = (int(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be an int or a (low, high) pair, got {value!r}") from None
    if not 0 <= low <= high:
        raise ConfigError(f"{name} range must satisfy 0 <= low <= high, got {value!r}")
    return rng.randint(low, high)


def _rid(kind: str, k: int) -> str:
    # SinkBasin / BathtubBasin ids follow ALFWorld's "Sink|...|SinkBasin" form: the
    # demangler names them "sinkbasin N" from the "basin" in the id.
    if kind.endswith("Basin"):
        return f"{kind[:-5]}_bar_{k}_bar_{kind}"
    return f"{kind}_bar_{k}"


def generate_household(
    seed: int,
    task_type: str,
    *,
    split: str = "train",
    num_receptacles: int | Sequence[int] | None = None,
    num_distractors: int | Sequence[int] | None = None,
    variant: int = 0,
) -> HouseholdProblem:
    """Generate one household problem (not yet checked solvable).

    Args:
        seed: picks the household; the same arguments always give the same problem.
        task_type: one of the six ALFWorld task types.
        split: ``train``, ``valid_seen`` or ``valid_unseen`` (held-out goal combinations).
        num_receptacles: receptacles in the room, an int or a ``(low, high)`` range
            (default 8-14). The room's required receptacles are always there.
        num_distractors: objects besides the targets (default 4-12).
        variant: retry counter; callers bump it when a candidate is rejected.

    Raises:
        ConfigError: unknown task type or split, or a bad size.
    """
    if task_type not in TASK_TYPES:
        raise ConfigError(f"unknown task type {task_type!r}; one of {', '.join(TASK_TYPES)}")
    split = resolve_split(split)
    t = _tables()
    rng = random.Random(f"turnrl-alfworld|v{GENERATOR_VERSION}|{split}|{task_type}|{seed}|{variant}")
    n_receptacles = _count(num_receptacles, DEFAULT_NUM_RECEPTACLES, "num_receptacles", rng)
    n_distractors = _count(num_distractors, DEFAULT_NUM_DISTRACTORS, "num_distractors", rng)

    combos = goal_combinations(task_type, split)
    room, target, parent = rng.choice(combos)
    layout = _ROOMS[room]
    can_contain = t["can_contain"]
    look = task_type == "look_at_obj_in_light"

    # ---- receptacles: the room's required ones, the ones the task needs, then fill up
    counts = {kind: lo for kind, lo, _ in layout}
    most = {kind: hi for kind, _, hi in layout}
    needed = [] if look else [parent]
    if task_type in _APPLIANCE:
        needed.append(_APPLIANCE[task_type][0])
    if look:
        needed.append(rng.choice([h for h in _LAMP_HOSTS if h in counts]))
    starts = [r for r in counts if r != parent and target in can_contain.get(r, ())]
    needed.append(rng.choice(starts))
    for kind in needed:
        counts[kind] = max(counts[kind], 1)
    while sum(counts.values()) < n_receptacles:
        room_left = [k for k in counts if counts[k] < most[k]]
        if not room_left:
            break
        counts[rng.choice(room_left)] += 1
    receptacles: list[tuple[str, str]] = []  # (id, kind)
    for kind, _, _ in layout:
        receptacles += [(_rid(kind, k), kind) for k in range(1, counts[kind] + 1)]

    # ---- locations: one per receptacle, some stacked drawers/cabinets/shelves share one
    location_of: dict[str, str] = {}
    n_locations = 0
    previous: dict[str, str] = {}
    for rid, kind in receptacles:
        if kind in _STACKABLE and kind in previous and rng.random() < 0.3:
            location_of[rid] = location_of[previous[kind]]
        else:
            n_locations += 1
            location_of[rid] = f"loc_bar_{n_locations}"
        previous[kind] = rid
    start_location = f"loc_bar_{n_locations + 1}"  # "the middle of the room"

    # ---- objects: targets away from the goal receptacle, then distractors anywhere
    objects: list[tuple[str, str, str]] = []  # (id, kind, receptacle id)
    per_kind: dict[str, int] = {}

    def place(kind: str, allowed: list[tuple[str, str]]) -> None:
        per_kind[kind] = per_kind.get(kind, 0) + 1
        rid, _ = rng.choice(allowed)
        objects.append((f"{kind}_bar_{per_kind[kind]}", kind, rid))

    n_targets = rng.randint(2, 3) if task_type == "pick_two_obj_and_place" else rng.randint(1, 2)
    target_homes = [(rid, k) for rid, k in receptacles
                    if k != parent and target in can_contain.get(k, ())]
    for _ in range(n_targets):
        place(target, target_homes)
    kinds_here = {k for _, k in receptacles}
    distractor_kinds = sorted({o for k in kinds_here for o in can_contain.get(k, ())} - {target})
    for _ in range(n_distractors):
        kind = rng.choice(distractor_kinds)
        homes = [(rid, k) for rid, k in receptacles if kind in can_contain.get(k, ())]
        place(kind, homes)
    lamp_hosts = [(rid, k) for rid, k in receptacles if k in _LAMP_HOSTS]
    if look or (lamp_hosts and room in ("Bedroom", "LivingRoom") and rng.random() < 0.5):
        per_kind["DeskLamp"] = 1
        objects.append(("DeskLamp_bar_1", "DeskLamp", rng.choice(lamp_hosts)[0]))

    problem = _problem_text(
        name=f"turnrl_{task_type}_{split}_{seed}_{variant}",
        receptacles=receptacles, objects=objects, location_of=location_of,
        start_location=start_location, n_locations=n_locations + 1,
        goal=_goal_text(task_type, target, parent),
    )
    import alfworld.gen.goal_library as glib

    template = rng.choice(glib.gdict[task_type]["templates"])
    task_desc = template.format(obj=target.lower(), recep=parent.lower(),
                                toggle="desklamp", mrecep="")
    params = {
        "object_target": target,
        "parent_target": "" if look else parent,
        "toggle_target": "DeskLamp" if look else "",
        "mrecep_target": "",
        "object_sliced": False,
    }
    return HouseholdProblem(
        task_type=task_type, room=room, pddl_problem=problem, task_desc=task_desc,
        pddl_params=params, receptacles=[r for r, _ in receptacles],
        objects=[o for o, _, _ in objects],
    )


def _goal_text(task_type: str, target: str, parent: str) -> str:
    import alfworld.gen.goal_library as glib

    goal = glib.gdict[task_type]["pddl"].format(
        obj=target, recep=parent, toggle="DeskLamp", mrecep="")
    return goal.replace("#", "-")  # the library writes "?r # receptacle" for "?r - receptacle"


def _problem_text(*, name: str, receptacles: list[tuple[str, str]],
                  objects: list[tuple[str, str, str]], location_of: dict[str, str],
                  start_location: str, n_locations: int, goal: str) -> str:
    t = _tables()
    can_contain, actions = t["can_contain"], t["actions"]
    decl = ["agent1 - agent"]
    # Every type constant the domain mentions must be declared, as in ALFWorld's files.
    decl += [f"{o}Type - otype" for o in t["objects"]]
    decl += [f"{r}Type - rtype" for r in t["receptacle_types"]]
    decl += [f"{oid} - object" for oid, _, _ in objects]
    decl += [f"{rid} - receptacle" for rid, _ in receptacles]
    decl += [f"loc_bar_{i} - location" for i in range(1, n_locations + 1)]

    init = [f"(atLocation agent1 {start_location})"]
    kinds_here = []
    for rid, kind in receptacles:
        init.append(f"(receptacleType {rid} {kind}Type)")
        init.append(f"(receptacleAtLocation {rid} {location_of[rid]})")
        if kind in t["openable"]:
            init.append(f"(openable {rid})")
        if kind not in kinds_here:
            kinds_here.append(kind)
    for kind in kinds_here:
        init += [f"(canContain {kind}Type {o}Type)" for o in can_contain.get(kind, ())]
    for oid, kind, rid in objects:
        init.append(f"(objectType {oid} {kind}Type)")
        init.append(f"(inReceptacle {oid} {rid})")
        init.append(f"(objectAtLocation {oid} {location_of[rid]})")
        if kind in actions["Toggleable"]:
            init.append(f"(toggleable {oid})")
            continue  # lamps stay where they are
        init.append(f"(pickupable {oid})")
        if kind in t["movable"]:
            init.append(f"(isReceptacleObject {oid})")
        for prop, predicate in (("Cleanable", "cleanable"), ("Heatable", "heatable"),
                                ("Coolable", "coolable"), ("Sliceable", "sliceable")):
            if kind in actions[prop]:
                init.append(f"({predicate} {oid})")
    nl = "\n        "
    return (
        f"(define (problem {name})\n(:domain alfred)\n(:objects\n        {nl.join(decl)}\n        )\n"
        f"(:init\n        {nl.join(init)}\n        )\n{goal}"
    )
