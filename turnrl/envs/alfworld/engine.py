"""The ALFWorld text engine: TextWorld's ``PddlEnv`` with ALFWorld's demangler, kept warm.

:class:`AlfredEngine` plays one game at a time on its own copy of Fast Downward (each
``PddlEnv`` loads a private copy of ``libdownward.so``, so engines in one process never
share planner state). Two costs dominate on real ALFWorld scenes: translating the PDDL
problem (``load`` translates it twice, and textworld's ``reset`` twice more) and stepping.
The engine translates a game once, when it is loaded, snapshots the initial state, and
answers later resets of the same game by restoring that snapshot -- the same state a cold
reset builds, without the translator.

Two text grammars exist: the one bundled with alfworld 0.4.x says ``move X to Y`` and
"You arrive at fridge 1"; the one inside the released ``json_2.1.1`` games says
``put X in/on Y`` and "You arrive at loc 12". :func:`canonical_command` maps either form
of a put (and ``put X in Y`` / ``put X on Y``) onto the form the loaded game admits.
"""

from __future__ import annotations

import contextlib
import copy
import re
import sys
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

#: TextWorld's grammar parser (tatsu) is shared by every engine in a process and is not
#: thread-safe: concurrent steps raise "pop from empty list" or bogus parse errors. Calls
#: into the engine hold this lock, so env threads (``rollout.step_workers``) are safe but do
#: not parallelise ALFWorld; subprocess or Ray env pools do.
ENGINE_LOCK = threading.RLock()

__all__ = ["AlfredEngine", "canonical_command", "require_engine", "bundled_logic",
           "INTRO_HEADER"]

INTRO_HEADER = "-= Welcome to TextWorld, ALFRED! =-"
_PUT_RE = re.compile(r"^(?:put|move|place)\s+(.+?)\s+(?:in/on|into|onto|in|on|to)\s+(.+)$")


def require_engine() -> None:
    """Import-check the optional dependencies, with the install command in the error.

    Raises:
        ImportError: alfworld or textworld[pddl] (fast_downward) is missing.
    """
    missing = []
    for module, package in (("alfworld", "alfworld==0.4.2"),
                            ("fast_downward", "textworld[pddl]==1.7.0")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise ImportError(
            "turnrl/ALFWorld-v0 needs " + " and ".join(missing) + ". Install them with "
            "`pip install 'turnrl[alfworld]'` (or `pip install " + " ".join(
                repr(m) for m in missing) + "`)."
        )


@lru_cache(maxsize=1)
def bundled_logic() -> tuple[str, str]:
    """``(pddl_domain, grammar)`` shipped in the alfworld package (``alfworld/data``)."""
    import alfworld

    data = Path(alfworld.__file__).parent / "data"
    return (data / "alfred.pddl").read_text(), (data / "alfred.twl2").read_text()


def canonical_command(command: str, admissible: list[str] | tuple[str, ...]) -> str:
    """Rewrite a put in either grammar (``move X to Y``, ``put X in/on Y``, ``put X in Y``,
    ``put X on Y``) into the form the current game admits; other commands pass unchanged.

    >>> canonical_command("put mug 1 in coffeemachine 1", ["move mug 1 to coffeemachine 1"])
    'move mug 1 to coffeemachine 1'
    """
    if command in admissible:
        return command
    m = _PUT_RE.match(command)
    if m is None:
        return command
    obj, recep = m.group(1), m.group(2)
    for candidate in (f"move {obj} to {recep}", f"put {obj} in/on {recep}"):
        if candidate in admissible:
            return candidate
    return command


@contextlib.contextmanager
def _quiet_translator() -> Iterator[None]:
    # fast_downward.pddl2sas overwrites sys.argv (its option parser reads it); put it back
    # so that a CLI's own arguments survive loading a game.
    argv = list(sys.argv)
    try:
        yield
    finally:
        sys.argv[:] = argv


def _make_warm_pddl_env(infos: Any) -> Any:
    from textworld.core import GameState
    from textworld.envs.pddl import PddlEnv

    class _WarmPddlEnv(PddlEnv):
        """PddlEnv whose reset restores a snapshot of the initial state instead of
        translating the problem again."""

        def load(self, filename_or_data: Any) -> None:
            with _quiet_translator():
                super().load(filename_or_data)
            self._initial = self._pddl_state
            self._initial_facts = _copy_facts(self._pddl_state)

        def reset(self) -> Any:
            state = copy.copy(self._initial)
            _restore_facts(state, self._initial_facts)
            self.downward_lib.load_sas(state.sas.encode("utf-8"))
            self.downward_lib.load_sas_replan(state.sas_replan.encode("utf-8"))
            self._pddl_state = state
            self.prev_state = None
            self.state = GameState()
            self._last_action = None
            self._moves = 0
            context = {"state": state, "facts": list(state.facts), "variables": {},
                       "mapping": {}, "entity_infos": self._entity_infos}
            self.state.feedback = self._logic.grammar.derive("#intro#", context)
            self.state.raw = self.state.feedback
            self._gather_infos()
            return self.state

    return _WarmPddlEnv(infos)


def _copy_facts(state: Any) -> dict[str, Any]:
    # Propositions and Variables are immutable; copying the containers is enough.
    return {
        "_facts": {k: set(v) for k, v in state._facts.items()},
        "_vars_by_name": dict(state._vars_by_name),
        "_vars_by_type": {k: set(v) for k, v in state._vars_by_type.items()},
        "_var_counts": Counter(state._var_counts),
    }


def _restore_facts(state: Any, saved: Mapping[str, Any]) -> None:
    state._facts = defaultdict(set, {k: set(v) for k, v in saved["_facts"].items()})
    state._vars_by_name = dict(saved["_vars_by_name"])
    state._vars_by_type = defaultdict(set, {k: set(v) for k, v in saved["_vars_by_type"].items()})
    state._var_counts = Counter(saved["_var_counts"])


class GameLoadError(RuntimeError):
    """A game file the planner cannot load (an unsolvable problem makes Fast Downward's
    translator emit a dummy task, and loading fails)."""


class AlfredEngine:
    """One ALFWorld game at a time, on the real engine.

    Example:
        >>> engine = AlfredEngine()
        >>> engine.load("my-game", game_data)      # a game.tw-pddl dict
        >>> state = engine.reset()
        >>> state = engine.step("go to fridge 1")
        >>> state["feedback"], state["admissible_commands"], state["won"]
    """

    def __init__(self) -> None:
        require_engine()
        import textworld
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler

        infos = textworld.EnvInfos(admissible_commands=True, won=True)
        self._pddl = _make_warm_pddl_env(infos)
        self._env = AlfredDemangler(self._pddl, shuffle=False)
        self.game_key: Any = None
        self.state: Any = None
        self.closed = False

    def load(self, key: Any, game_data: Mapping[str, Any]) -> None:
        """Load a game (a ``game.tw-pddl`` dict), unless ``key`` is the game already loaded.

        Raises:
            GameLoadError: the planner cannot load it (typically: unsolvable).
        """
        if self.closed:
            raise RuntimeError("this ALFWorld engine is closed; make a new env")
        if key is not None and key == self.game_key:
            return
        self.game_key = None
        try:
            with ENGINE_LOCK:
                self._env.load(dict(game_data))
        except Exception as exc:  # the translator fails in many ways on a bad problem
            raise GameLoadError(f"cannot load ALFWorld game {key!r}: {type(exc).__name__}: {exc}") from exc
        self.game_key = key

    def reset(self) -> Any:
        """Back to the loaded game's initial state; returns textworld's ``GameState``."""
        if self.game_key is None:
            raise RuntimeError("AlfredEngine.reset() before a game was loaded")
        with ENGINE_LOCK:
            self.state = self._env.reset()
        return self.state

    def step(self, command: str) -> Any:
        """Apply one command. An inadmissible command leaves the world unchanged and gets
        the engine's "Nothing happens."."""
        with ENGINE_LOCK:
            self.state, _, _ = self._env.step(command)
        return self.state

    def plan(self) -> list[str]:
        """The planner's remaining plan from the current state, as commands (costly on real
        scenes: 50-800 ms)."""
        pddl = self._pddl
        with ENGINE_LOCK, _quiet_translator():
            return list(pddl._pddl_state.replan(pddl._entity_infos))

    def close(self) -> None:
        """Free the planner's task memory. Idempotent; the engine cannot be used afterwards.

        The library copy itself stays mapped: unloading it (``dlclose``) crashes the
        interpreter at exit, because the C++ library registered exit handlers.
        """
        self.game_key = None
        self.state = None
        lib = getattr(self._pddl, "downward_lib", None)
        if lib is not None and not self.closed:
            lib.cleanup()
        self.closed = True
