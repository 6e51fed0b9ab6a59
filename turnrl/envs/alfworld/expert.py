"""ALFWorld's hand-coded expert, driven step by step, with the fixes it needs here.

The expert is ALFWorld's own (``alfworld.agents.expert.HandCodedTWAgent``): a per-task
policy that searches receptacles, takes the target, transforms it and puts it down. Three
things are added around it:

1. **Grammar.** It tracks puts by looking for ``put`` in the last command, but looks for
   ``move X to Y`` among the admissible commands and proposes it. With the grammar bundled
   in alfworld 0.4.x the engine's command is ``move X to Y``, so the expert would never
   empty its hands (and loops on pick-two tasks); with the released ``json_2.1.1`` grammar
   (``put X in/on Y``) it never sees that it could put, and wanders until a random
   fallback happens to put. We tell it every put as ``put X in/on Y``, show it admissible
   puts as ``move X to Y``, and map its proposal back onto the game's admissible form
   (:func:`~turnrl.envs.alfworld.engine.canonical_command`).
2. **Determinism.** It draws from Python's global ``random``; we run it on its own seeded
   stream and leave the caller's global state untouched.
3. **Fallback.** When it proposes an inadmissible command, or gives up (its step budget,
   or its subgoals run out), the next action comes from the planner (Fast Downward on the
   current state) -- slow on real scenes, so only then. ALFWorld's own wrapper answers
   "look" there instead; ``fallback="look"`` keeps that behaviour.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from turnrl.envs.alfworld.engine import AlfredEngine, canonical_command

__all__ = ["HandcodedExpert"]


# The only predicates the hand-coded policies read ("holds agent mug 1", "ishot mug 1", ...).
_EXPERT_PREDICATES = frozenset({"holds", "inreceptacle", "isclean", "ishot", "iscool"})


class _Fact(NamedTuple):
    name: str
    names: tuple[str, ...]


def _expert_view(state: Any) -> dict[str, Any]:
    """What the hand-coded expert reads from a state, with only the facts it uses.

    textworld's ``facts`` info converts every fact of the world (thousands on real scenes,
    most of them ``canContain``) to readable names on every step; the policies look at five
    predicates, so we convert just those from the raw facts the engine keeps anyway.
    """
    infos = state["_entity_infos"]
    facts = [
        _Fact(f.name, tuple(infos[v.name].name or v.name for v in f.arguments))
        for f in state["_facts"] if f.name in _EXPERT_PREDICATES
    ]
    # The policies test "move X to Y" against the admissible commands: show puts that way.
    admissible = [_as_move(c) for c in state["admissible_commands"]]
    return {"feedback": state["feedback"], "admissible_commands": admissible,
            "won": state["won"], "facts": facts}


def _as_move(command: str) -> str:
    """``put X in/on Y`` -> ``move X to Y``: the form the expert proposes and looks for."""
    if command.startswith("put ") and " in/on " in command:
        obj, _, recep = command[len("put "):].rpartition(" in/on ")
        return f"move {obj} to {recep}"
    return command


def _as_put(command: str) -> str:
    """``move X to Y`` -> ``put X in/on Y``: the form the expert's state tracking reads."""
    if command.startswith("move ") and " to " in command:
        obj, _, recep = command[len("move "):].rpartition(" to ")
        return f"put {obj} in/on {recep}"
    return command


class HandcodedExpert:
    """Next-action oracle for one episode.

    Args:
        engine: the engine the episode runs on.
        fallback: ``"planner"`` (default) or ``"look"`` (ALFWorld's own behaviour) when
            the hand-coded policy has no admissible proposal.
        max_steps: the hand-coded policy's own step budget (ALFWorld uses 200).
    """

    def __init__(self, engine: AlfredEngine, *, fallback: str = "planner", max_steps: int = 200) -> None:
        if fallback not in ("planner", "look"):
            raise ValueError(f"fallback must be 'planner' or 'look', got {fallback!r}")
        self.engine = engine
        self.fallback = fallback
        self.max_steps = max_steps
        self._agent: Any = None
        self._rng_state: Any = None
        self._proposal: str | None = None
        self.fallbacks = 0  # how often the planner (or "look") stood in, this episode

    @contextlib.contextmanager
    def _own_random(self) -> Iterator[None]:
        outer = random.getstate()
        random.setstate(self._rng_state)
        try:
            yield
        finally:
            self._rng_state = random.getstate()
            random.setstate(outer)

    def reset(self, traj_data: Mapping[str, Any], state: Any, *, seed: int) -> None:
        """Start an episode: ``traj_data`` holds ``task_type`` and ``pddl_params`` (as in
        ALFWorld's ``traj_data.json``); ``state`` is the engine's state after reset."""
        import alfworld.gen.constants as constants
        from alfworld.agents.expert import HandCodedTWAgent

        params = {**traj_data["pddl_params"], "task_type": traj_data["task_type"]}
        # As ALFWorld's HandCodedAgent.reset does: object and receptacle names lower-cased.
        params = {k: v.lower() if v in constants.OBJECTS else v for k, v in params.items()}
        agent = HandCodedTWAgent(max_steps=self.max_steps)
        agent.task_params = params
        agent.policy = agent.get_task_policy(params)(params, max_steps=self.max_steps)
        self._agent = agent
        self._rng_state = random.Random(seed).getstate()
        self.fallbacks = 0
        with self._own_random():
            agent.observe(state["feedback"])
        self._proposal = "look"  # ALFWorld's expert opens every episode with a look

    def observe(self, state: Any, command: str) -> None:
        """Tell the expert what was done (``command``, as sent to the engine) and where it
        led (``state``)."""
        if self._agent is None:
            raise RuntimeError("HandcodedExpert.observe() before reset()")
        if state["won"]:
            self._proposal = None
            return
        try:
            with self._own_random():
                proposal = self._agent.act(_expert_view(state), 0, state["won"], _as_put(command))
        except Exception:  # HandCodedAgentTimeout / Failed, or a heuristic tripping over a scene
            proposal = None
        if proposal is not None:
            proposal = canonical_command(proposal, state["admissible_commands"])
            if proposal not in state["admissible_commands"]:
                proposal = None
        self._proposal = proposal

    def next_action(self) -> str:
        """The expert's next command (always admissible unless the game is won or lost)."""
        if self._proposal is not None:
            return self._proposal
        self.fallbacks += 1
        admissible = self.engine.state["admissible_commands"]
        if self.fallback == "planner":
            plan = self.engine.plan()
            if plan:
                command = canonical_command(plan[0], admissible)
                if command in admissible:
                    self._proposal = command
                    return command
        self._proposal = "look"
        return "look"
