"""Environments: the :class:`TextEnv` contract, the registry, suites and built-in envs.

Built-in environments are registered here by string entry point, so importing
``turnrl.envs`` never imports an engine; the engine loads when an env is made.
"""

from __future__ import annotations

from turnrl.agent_registry import register_agent
from turnrl.envs.base import TEXT_CHARSET, InvalidAction, TextEnv, sanitize_text
from turnrl.envs.registry import EnvSpec, list_envs, load_plugins, make, register, spec
from turnrl.envs.suites import Suite, SuiteEntry, get_suite, list_suites, register_suite

__all__ = [
    "TEXT_CHARSET", "InvalidAction", "TextEnv", "sanitize_text",
    "EnvSpec", "list_envs", "load_plugins", "make", "register", "spec",
    "Suite", "SuiteEntry", "get_suite", "list_suites", "register_suite",
]

register(
    "turnrl/TextWorld-v0",
    "turnrl.envs.textworld.env:TextWorldEnv",
    description="TextWorld games (tw-simple, coin_collector, treasure_hunter, cooking) "
    "generated from (challenge, settings, seed), or your own .z8 game",
)

register(
    "turnrl/ALFWorld-v0",
    "turnrl.envs.alfworld.env:ALFWorldEnv",
    description="ALFWorld household tasks (6 task types) on ALFWorld's own PDDL engine: "
    "generated households, or the official json_2.1.1 games via data_dir / ALFWORLD_DATA",
)

register(
    "turnrl/CodeInterpreter-v0",
    "turnrl.envs.code.interpreter:CodeInterpreterEnv",
    description="reasoning-gym tasks (puzzle24, countdown, ...) solved with a sandboxed "
    "Python tool, R1-Code-Interpreter protocol; answers scored by reasoning-gym",
)
register(
    "turnrl/CodeRepair-v0",
    "turnrl.envs.code.repair:CodeRepairEnv",
    description="HumanEval: write the function, read failing tests (tool output), repair",
)

register(
    "turnrl/RideDispatch-v0",
    "turnrl.envs.ride_dispatch.env:RideDispatchEnv",
    description="ride-hailing order dispatch on a grid city: assign idle drivers to "
    "orders each round (configs mdpod, city); random/greedy/matching baselines",
)
register(
    "turnrl/RideDispatchDriver-v0",
    "turnrl.envs.ride_dispatch.env:RideDispatchDriverEnv",
    description="the dispatch city seen by one driver per turn (take an order or wait): "
    "a shared driver policy; turns of a round form the ospo preset's groups",
)
register(
    "turnrl/StockExplanation-v0",
    "turnrl.envs.stock.env:StockExplanationEnv",
    description="explain and predict a stock's next move from prices and posts, reflect "
    "and retry when wrong (SEP); seeded synthetic market or a StockNet-layout dataset",
)

# Baseline agents of the env packages, for `turnrl eval --agent NAME` (lazy, like the envs).
register_agent("dispatch_random", "turnrl.envs.ride_dispatch.policies:DispatchAgent",
               kwargs={"policy": "random"}, seeded=True,
               description="ride dispatch: each order to a random available driver")
register_agent("dispatch_greedy", "turnrl.envs.ride_dispatch.policies:DispatchAgent",
               kwargs={"policy": "greedy"}, seeded=False,
               description="ride dispatch: each order to the nearest free driver")
register_agent("dispatch_matching", "turnrl.envs.ride_dispatch.policies:DispatchAgent",
               kwargs={"policy": "matching"}, seeded=False,
               description="ride dispatch: the assignment that maximises the round's reward")
register_agent("stock_majority", "turnrl.envs.stock.baselines:StockAgent",
               kwargs={"policy": "majority"}, seeded=False,
               description="stock explanation: always the train split's majority label")
register_agent("stock_lexicon", "turnrl.envs.stock.baselines:StockAgent",
               kwargs={"policy": "lexicon"}, seeded=False,
               description="stock explanation: the sign of the posts' lexicon sentiment")

from turnrl.envs import builtin_suites as _builtin_suites  # noqa: E402,F401  (registers suites)
