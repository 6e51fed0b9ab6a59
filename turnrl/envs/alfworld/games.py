"""Where ALFWorld games come from: generated households (checked solvable, cached on disk)
or the official ``json_2.1.1`` release.

Both sources answer ``get(...) -> GameRecord``: the ``game.tw-pddl`` dict the engine
loads, the ``traj_data`` the expert reads, and a key that identifies the game so the
engine can keep it warm.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turnrl.envs.alfworld.engine import AlfredEngine, GameLoadError, bundled_logic
from turnrl.envs.alfworld.expert import HandcodedExpert
from turnrl.envs.alfworld.generator import (
    DEFAULT_NUM_DISTRACTORS,
    DEFAULT_NUM_RECEPTACLES,
    GENERATOR_VERSION,
    HouseholdProblem,
    generate_household,
)
from turnrl.envs.alfworld.tasks import SPLITS, TASK_TYPES
from turnrl.errors import ConfigError, GameGenerationError

__all__ = ["GameRecord", "GeneratedGames", "OfficialGames", "resolve_data_dir", "cache_root",
           "EXPERT_BUDGET"]

#: Steps the expert gets to win a generated game before the game is rejected: the
#: literature's turn budget, so the expert wins every generated game within max_turns=50.
EXPERT_BUDGET = 50
_MAX_VARIANTS = 25


@dataclass(frozen=True)
class GameRecord:
    """One playable game.

    Attributes:
        key: identity of the game (equal keys -> the engine may reuse the loaded game).
        game_id: readable id (``generated/train/pick_two_obj_and_place/17`` or the
            game's path relative to the data root).
        data: the ``game.tw-pddl`` dict (``pddl_domain``, ``grammar``, ``pddl_problem``).
        traj_data: ``task_type`` and ``pddl_params``, as in ``traj_data.json``.
        expert_seed: seeds the expert's random choices for this game.
    """

    key: tuple[Any, ...]
    game_id: str
    data: dict[str, Any]
    traj_data: dict[str, Any]
    expert_seed: int

    @property
    def task_type(self) -> str:
        return str(self.traj_data["task_type"])


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir``, else ``$TURNRL_CACHE``, else ``~/.cache/turnrl``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("TURNRL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "turnrl"


def _atomic_write_json(path: Path, payload: dict[str, Any]) -> None:
    # Write to a temp file in the same folder, then rename: readers never see half a file
    # and concurrent writers of the same game just replace each other's identical result.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _range_tag(value: Any, default: tuple[int, int]) -> str:
    if value is None:
        value = default
    if isinstance(value, int):
        return str(value)
    low, high = (int(v) for v in value)
    return f"{low}-{high}"


def game_data(problem: HouseholdProblem) -> dict[str, Any]:
    """The ``game.tw-pddl`` dict of a generated problem, on ALFWorld's bundled domain and
    grammar (the task sentence written into the grammar, as ``alfworld-generate`` does)."""
    domain, grammar = bundled_logic()
    return {
        "pddl_domain": domain,
        "grammar": grammar.replace("UNKNOWN GOAL", problem.task_desc),
        "pddl_problem": problem.pddl_problem,
    }


def play_expert(engine: AlfredEngine, traj_data: dict[str, Any], *, seed: int,
                max_steps: int, fallback: str = "planner") -> list[str] | None:
    """Reset the loaded game and let the expert play it; its commands if it wins within
    ``max_steps``, else ``None``."""
    state = engine.reset()
    if state["won"]:
        return None
    expert = HandcodedExpert(engine, fallback=fallback)
    expert.reset(traj_data, state, seed=seed)
    commands: list[str] = []
    while len(commands) < max_steps:
        command = expert.next_action()
        state = engine.step(command)
        commands.append(command)
        if state["won"]:
            return commands
        expert.observe(state, command)
    return None


class GeneratedGames:
    """Generated households for one split and size setting, checked solvable by the
    expert, cached on disk.

    The cache holds, per game, which generation variant passed and the expert's
    walkthrough (never the problem itself: it is regenerated, byte for byte, from the
    seed -- a hash guards that).

    Args:
        split: ``train``, ``valid_seen`` or ``valid_unseen``.
        num_receptacles: see :func:`~turnrl.envs.alfworld.generator.generate_household`.
        num_distractors: idem.
        cache_dir: cache root (default ``$TURNRL_CACHE`` or ``~/.cache/turnrl``); games
            live under ``alfworld/gen-v<N>/``.
    """

    def __init__(self, *, split: str = "train", num_receptacles: Any = None,
                 num_distractors: Any = None, cache_dir: str | os.PathLike[str] | None = None) -> None:
        self.split = split
        self.num_receptacles = num_receptacles
        self.num_distractors = num_distractors
        tag = (f"r{_range_tag(num_receptacles, DEFAULT_NUM_RECEPTACLES)}"
               f"_d{_range_tag(num_distractors, DEFAULT_NUM_DISTRACTORS)}")
        self.directory = cache_root(cache_dir) / "alfworld" / f"gen-v{GENERATOR_VERSION}" / split / tag
        self.generated = 0  # games generated (and verified) by this object, not from cache

    def _problem(self, seed: int, task_type: str, variant: int) -> HouseholdProblem:
        return generate_household(seed, task_type, split=self.split, variant=variant,
                                  num_receptacles=self.num_receptacles,
                                  num_distractors=self.num_distractors)

    def _record(self, seed: int, task_type: str, variant: int, problem: HouseholdProblem) -> GameRecord:
        return GameRecord(
            key=("generated", self.directory.as_posix(), task_type, seed, variant),
            game_id=f"generated/{self.split}/{task_type}/{seed}",
            data=game_data(problem),
            traj_data=problem.traj_data,
            expert_seed=zlib.crc32(f"{self.split}/{task_type}/{seed}/{variant}".encode()),
        )

    def get(self, seed: int, task_type: str, engine: AlfredEngine) -> GameRecord:
        """The game for ``(seed, task_type)``; generates and verifies it on ``engine`` if
        it is not cached (the engine is then left holding it, warm).

        Raises:
            GameGenerationError: no variant passed the expert within its budget.
        """
        path = self.directory / task_type / f"{seed}.json"
        try:
            cached = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cached = None
        if cached is not None:
            problem = self._problem(seed, task_type, int(cached["variant"]))
            if _sha(problem.pddl_problem) == cached.get("problem_sha256"):
                return self._record(seed, task_type, int(cached["variant"]), problem)
        for variant in range(_MAX_VARIANTS):
            problem = self._problem(seed, task_type, variant)
            record = self._record(seed, task_type, variant, problem)
            try:
                engine.load(record.key, record.data)
            except GameLoadError:
                continue  # unsolvable problem: the translator could not build a task
            walkthrough = play_expert(engine, record.traj_data, seed=record.expert_seed,
                                      max_steps=EXPERT_BUDGET)
            if walkthrough is None:
                continue  # won at the start, or the expert could not win it
            self.generated += 1
            _atomic_write_json(path, {
                "generator_version": GENERATOR_VERSION, "variant": variant,
                "problem_sha256": _sha(problem.pddl_problem), "room": problem.room,
                "task_desc": problem.task_desc, "pddl_params": problem.pddl_params,
                "walkthrough": walkthrough,
            })
            return record
        raise GameGenerationError(
            f"no solvable {task_type} household for seed {seed} (split {self.split!r}) "
            f"after {_MAX_VARIANTS} variants; try other num_receptacles / num_distractors"
        )


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------- official
def resolve_data_dir(data_dir: str | os.PathLike[str]) -> Path:
    """Find the ``json_2.1.1`` tree from what the user points at.

    Accepted: the ``json_2.1.1`` folder itself (it holds ``train``, ``valid_seen``,
    ``valid_unseen``), its parent (ALFWorld's ``$ALFWORLD_DATA``), or an ALFWorld YAML
    config whose ``dataset.data_path`` names a split folder.

    Raises:
        ConfigError: nothing usable there.
    """
    path = Path(os.path.expandvars(os.fspath(data_dir))).expanduser()
    if path.suffix in (".yaml", ".yml") and path.is_file():
        import yaml

        config = yaml.safe_load(path.read_text()) or {}
        data_path = (config.get("dataset") or {}).get("data_path")
        if not data_path:
            raise ConfigError(f"ALFWorld config {path} has no dataset.data_path")
        path = Path(os.path.expandvars(data_path)).expanduser().parent
    if (path / "json_2.1.1").is_dir():
        path = path / "json_2.1.1"
    if path.name in SPLITS and not any((path / s).is_dir() for s in SPLITS):
        path = path.parent  # pointed at a split folder
    if not path.is_dir() or not any((path / s).is_dir() for s in SPLITS):
        raise ConfigError(
            f"no ALFWorld games under {path}: expected the json_2.1.1 folder (with "
            f"{', '.join(SPLITS)} inside), its parent ($ALFWORLD_DATA), or an ALFWorld "
            f"config file. Leave data_dir unset (and ALFWORLD_DATA unset) to play "
            f"generated households instead."
        )
    return path


class OfficialGames:
    """The games of one split of the official release, filtered like ALFWorld does.

    Games are found by their folders (``<task_type>-<object>-<mrecep>-<recep>-<scene>/
    <trial>/game.tw-pddl``): movable-receptacle and sliced tasks are skipped (ALFWorld's
    text benchmark skips them too), and so are games not marked ``"solvable": true``
    (checked when a game is first drawn). Seed ``s`` plays game ``s % len(games)`` in
    sorted order.

    Raises:
        ConfigError: the split is missing or holds no game of the asked task types.
    """

    def __init__(self, root: Path, split: str, task_types: Sequence[str] = TASK_TYPES) -> None:
        self.root = root
        self.split = split
        split_dir = root / split
        if not split_dir.is_dir():
            present = [s for s in SPLITS if (root / s).is_dir()]
            raise ConfigError(
                f"split {split!r} is not in {root} (present: {', '.join(present) or 'none'})"
            )
        games = []
        for game_file in sorted(split_dir.glob("*/*/game.tw-pddl")):
            task_dir = game_file.parent.parent.name
            if "movable" in task_dir or "Sliced" in task_dir:
                continue
            if task_dir.split("-", 1)[0] in task_types:
                games.append(game_file)
        if not games:
            raise ConfigError(
                f"no games of task types {list(task_types)} in {split_dir}"
            )
        self.games = games
        self._unsolvable: set[int] = set()
        self._last: GameRecord | None = None

    def __len__(self) -> int:
        return len(self.games)

    def get(self, seed: int, engine: AlfredEngine) -> GameRecord:
        """The game drawn by ``seed`` (the next solvable one if it is marked unsolvable).

        Raises:
            GameGenerationError: no game in the split can be loaded.
        """
        n = len(self.games)
        for i in range(n):
            index = (seed + i) % n
            if index in self._unsolvable:
                continue
            game_file = self.games[index]
            if self._last is not None and self._last.key == ("official", str(game_file)):
                engine.load(self._last.key, self._last.data)  # a no-op when still loaded
                return self._last
            try:
                data = json.loads(game_file.read_text(encoding="utf-8"))
                traj = json.loads((game_file.parent / "traj_data.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self._unsolvable.add(index)
                continue
            if not data.get("solvable", False):
                self._unsolvable.add(index)
                continue
            rel = game_file.parent.relative_to(self.root).as_posix()
            record = GameRecord(
                key=("official", str(game_file)), game_id=rel, data=data,
                traj_data={"task_type": traj["task_type"], "pddl_params": traj["pddl_params"]},
                expert_seed=zlib.crc32(rel.encode()),
            )
            try:
                engine.load(record.key, record.data)
            except GameLoadError:
                self._unsolvable.add(index)
                continue
            self._last = record
            return record
        raise GameGenerationError(f"none of the {n} games in {self.root / self.split} can be loaded")
