"""``turnrl/ALFWorld-v0``: ALFWorld's household tasks on ALFWorld's own text engine."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

from turnrl.envs.alfworld.engine import (
    INTRO_HEADER,
    AlfredEngine,
    canonical_command,
    require_engine,
)
from turnrl.envs.alfworld.expert import HandcodedExpert
from turnrl.envs.alfworld.games import (
    GameRecord,
    GeneratedGames,
    OfficialGames,
    resolve_data_dir,
)
from turnrl.envs.alfworld.generator import generate_household
from turnrl.envs.alfworld.tasks import resolve_split, resolve_task_types
from turnrl.envs.base import InvalidAction, TextEnv, state_digest
from turnrl.envs.parsing import InvalidReply, extract_command
from turnrl.errors import ConfigError

__all__ = ["ALFWorldEnv"]

#: PDDL predicates that only record what the agent has looked at (``look``, ``examine``,
#: ``open`` set them): no action's precondition, goal or text reads them, so they are left
#: out of ``info["state_key"]`` -- looking around does not make a new state. So are the
#: planner's ``not_*`` facts: kept for negative preconditions, they pile up as the agent
#: moves (every place it has left), where the positive facts already say the state.
_BOOKKEEPING_PREDICATES = frozenset({"checked", "examined"})


def _state_key(facts: Any) -> str:
    """``info["state_key"]``: a digest of the engine's positive, non-bookkeeping facts."""
    return state_digest(str(f) for f in facts
                        if f.name not in _BOOKKEEPING_PREDICATES and not f.name.startswith("not_"))

_INSTRUCTIONS = """\
You are a household robot in a text world. Each episode puts you in a room full of \
receptacles (cabinets, drawers, countertops, a fridge, a microwave, a sinkbasin, ...) and \
gives you a task such as "put a clean mug in coffeemachine". Objects are named with a \
number, e.g. "mug 1"; look inside closed receptacles by opening them.

Reply with exactly one command per turn, on the last line or after "Action:". Commands:
  go to <receptacle>                     open <receptacle> / close <receptacle>
  take <object> from <receptacle>        put <object> in/on <receptacle>
  clean <object> with <sinkbasin>        heat <object> with <microwave>
  cool <object> with <fridge>            use <lamp>
  examine <something>    look    inventory
("move <object> to <receptacle>" is accepted for put.) A command the room does not allow \
gets "Nothing happens."

Example:
Thought: A mug is likely in a cabinet. I will check cabinet 1 first.
Action: go to cabinet 1"""


class ALFWorldEnv(TextEnv):
    """ALFWorld household tasks (six task types) on ALFWorld's real text engine.

    The engine is TextWorld's ``PddlEnv`` with ALFWorld's PDDL domain, text grammar and
    name demangler, so observations and commands are the ones ALFWorld players know:
    "You are in the middle of a room. Looking quickly around you, you see a cabinet 1,
    ... Your task is to: put a clean mug in coffeemachine." By default the households are
    generated (:mod:`turnrl.envs.alfworld.generator`) and need no download; point
    ``data_dir`` (or ``$ALFWORLD_DATA``) at the official ``json_2.1.1`` tree to play the
    real games instead.

    Reward 1 when the task is achieved (``terminated``, ``info["won"]``); the turn budget
    ends the episode with ``truncated``. ``info["state_key"]`` is a digest of the engine's
    PDDL state (where the agent is, what it holds, where each object is, what is open,
    clean, hot, cool, on, sliced, ...), identical exactly when that state is.

    Args:
        task_types: ALFWorld task types to play (names or ids 1-6; default all six).
            Generated games: seed ``s`` plays task type ``task_types[s % len]``.
        split: ``train`` (default), ``valid_seen`` or ``valid_unseen``. Generated games:
            ``valid_unseen`` uses only held-out (task, object, receptacle) combinations.
        data_dir: the official ``json_2.1.1`` folder, its parent, or an ALFWorld config
            file. Default: ``$ALFWORLD_DATA`` if set, else generated households.
        source: ``"auto"`` (official games when a data dir is known, else generated),
            ``"generated"`` or ``"official"``.
        expert: put ALFWorld's hand-coded expert's next command in
            ``info["expert_action"]`` (else ``None``). It runs on every step (~1-3% more time
            per step; the planner fallback is slower), so it is off by default.
        expert_fallback: ``"planner"`` (Fast Downward's next step when the hand-coded
            expert has no admissible proposal) or ``"look"`` (ALFWorld's behaviour).
        num_receptacles: generated rooms: an int or a ``(low, high)`` range (default 8-14).
        num_distractors: generated rooms: objects besides the targets (default 4-12).
        cache_dir: where verified generated games are cached (default
            ``$TURNRL_CACHE`` or ``~/.cache/turnrl``).
        max_turns: turn budget (default 50, as in the literature).
        invalid_penalty: reward added on a turn whose command was not admissible.
        show_commands: end every observation with the admissible commands ("Admissible
            commands: go to cabinet 1, ..."), as verl-agent's ALFWorld prompt does: the
            agent chooses among listed commands instead of composing one.
        render_mode: ``None``, ``"ansi"`` or ``"human"``.
        instructions: replaces the system prompt; ``""`` sends none.

    Example:
        >>> env = turnrl.make("turnrl/ALFWorld-v0", task_types=["pick_two_obj_and_place"], expert=True)
        >>> obs, info = env.reset(seed=0)
        >>> obs, reward, terminated, truncated, info = env.step(info["expert_action"])
    """

    instructions = _INSTRUCTIONS

    def __init__(
        self,
        *,
        task_types: str | int | Sequence[str | int] | None = None,
        split: str = "train",
        data_dir: str | os.PathLike[str] | None = None,
        source: str = "auto",
        expert: bool = False,
        expert_fallback: str = "planner",
        num_receptacles: int | Sequence[int] | None = None,
        num_distractors: int | Sequence[int] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        max_turns: int = 50,
        invalid_penalty: float = 0.0,
        show_commands: bool = False,
        render_mode: str | None = None,
        instructions: str | None = None,
    ) -> None:
        super().__init__(max_turns=max_turns, invalid_penalty=invalid_penalty,
                         render_mode=render_mode, instructions=instructions)
        if not isinstance(show_commands, bool):
            raise ConfigError(f"show_commands must be True or False, got {show_commands!r}")
        self.show_commands = show_commands
        if source not in ("auto", "generated", "official"):
            raise ConfigError(f"source must be 'auto', 'generated' or 'official', got {source!r}")
        if expert_fallback not in ("planner", "look"):
            raise ConfigError(f"expert_fallback must be 'planner' or 'look', got {expert_fallback!r}")
        self.task_types = resolve_task_types(task_types)  # type: ignore[arg-type]
        self.split = resolve_split(split)
        self.expert = bool(expert)
        self.expert_fallback = expert_fallback
        if data_dir is None and source != "generated":
            data_dir = _data_dir_from_environment(strict=source == "official")
        if source == "official" and data_dir is None:
            raise ConfigError("source='official' needs data_dir= (or $ALFWORLD_DATA) pointing "
                              "at ALFWorld's json_2.1.1 folder")
        require_engine()
        self.source = "official" if (data_dir is not None and source != "generated") else "generated"
        self._official: OfficialGames | None = None
        self._generated: GeneratedGames | None = None
        if self.source == "official":
            assert data_dir is not None
            self._official = OfficialGames(resolve_data_dir(data_dir), self.split, self.task_types)
        else:
            # Fail fast on bad sizes rather than at the first reset.
            generate_household(0, self.task_types[0], split=self.split,
                               num_receptacles=num_receptacles, num_distractors=num_distractors)
            self._generated = GeneratedGames(split=self.split, num_receptacles=num_receptacles,
                                             num_distractors=num_distractors, cache_dir=cache_dir)
        self._engine = AlfredEngine()
        self._expert = HandcodedExpert(self._engine, fallback=expert_fallback) if self.expert else None
        self._record: GameRecord | None = None

    @property
    def num_games(self) -> int | None:
        """Games in the official split (``None`` for generated households: unbounded)."""
        return len(self._official) if self._official is not None else None

    # ------------------------------------------------------------------ TextEnv hooks
    def _reset_episode(self, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        seed = self.episode_seed
        if self._official is not None:
            record = self._official.get(seed, self._engine)
        else:
            assert self._generated is not None
            task_type = self.task_types[seed % len(self.task_types)]
            record = self._generated.get(seed, task_type, self._engine)
        self._engine.load(record.key, record.data)  # no-op when it is still loaded (warm)
        state = self._engine.reset()
        self._record = record
        if self._expert is not None:
            self._expert.reset(record.traj_data, state, seed=record.expert_seed)
        obs = _intro(state["feedback"])
        task = obs.rpartition("Your task is to: ")[2].strip()
        info = self._info(state)
        info.update(task=task, task_type=record.task_type, game=record.game_id)
        return self._with_commands(obs, state), info

    def parse_action(self, reply: str) -> str:
        try:
            return extract_command(reply)
        except InvalidReply as exc:
            raise InvalidAction(str(exc)) from None

    def _step_action(self, command: str) -> tuple[str, float, bool, dict[str, Any]]:
        admissible = self._engine.state["admissible_commands"]
        command = canonical_command(command, admissible)
        invalid = command not in admissible
        state = self._engine.step(command)
        if self._expert is not None:
            self._expert.observe(state, command)
        won = bool(state["won"])
        info = self._info(state)
        info["invalid_action"] = invalid
        return self._with_commands(str(state["feedback"]), state), (1.0 if won else 0.0), won, info

    def _with_commands(self, obs: str, state: Any) -> str:
        if not self.show_commands or state["won"]:
            return obs
        return f"{obs}\nAdmissible commands: {', '.join(state['admissible_commands'])}."

    def _info(self, state: Any) -> dict[str, Any]:
        won = bool(state["won"])
        expert_action = None
        if self._expert is not None and not won:
            expert_action = self._expert.next_action()
        assert self._record is not None or True
        return {
            "admissible_actions": list(state["admissible_commands"]),
            "won": won,
            "expert_action": expert_action,
            "task_type": self._record.task_type if self._record is not None else None,
            "state_key": _state_key(state["_facts"]),
        }

    def close(self) -> None:
        self._engine.close()
        super().close()


def _data_dir_from_environment(*, strict: bool) -> str | None:
    """``$ALFWORLD_DATA`` if it holds the official games, else ``None``.

    Importing alfworld sets ``ALFWORLD_DATA`` to ``~/.cache/alfworld`` (creating it) when it
    was unset, so its mere presence says nothing: only a folder with games counts. A
    user-set folder without games is reported (with ``strict``, as an error).
    """
    value = os.environ.get("ALFWORLD_DATA")
    if not value:
        return None
    try:
        resolve_data_dir(value)
    except ConfigError as exc:
        default = os.path.expanduser("~/.cache/alfworld")
        if strict:
            raise
        if os.path.abspath(os.path.expanduser(value)) != os.path.abspath(default):
            warnings.warn(f"ALFWORLD_DATA={value} holds no ALFWorld games ({exc}); playing "
                          "generated households", stacklevel=3)
        return None
    return value


def _intro(feedback: str) -> str:
    """ALFWorld's intro without its banner, blocks joined by single newlines -- the form
    LLM agents on ALFWorld (ReAct and its successors) see."""
    parts = [p.strip() for p in str(feedback).split("\n\n") if p.strip()]
    if parts and parts[0] == INTRO_HEADER:
        parts = parts[1:]
    return "\n".join(parts)
