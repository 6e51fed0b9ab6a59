"""Suites shipped with turnrl. Eval seeds sit far from train seeds, so the two never meet
(checked by :class:`~turnrl.envs.suites.SuiteEntry`)."""

from __future__ import annotations

from turnrl.envs.suites import SuiteEntry, register_suite

TRAIN_SEEDS = tuple(range(0, 10_000))
EVAL_SEEDS = tuple(range(100_000, 100_100))

register_suite(
    "textworld",
    [
        SuiteEntry(
            "turnrl/TextWorld-v0",
            {"challenge": "tw-simple", "settings": {"rewards": "dense", "goal": "detailed"}},
            TRAIN_SEEDS, EVAL_SEEDS, name="tw-simple",
        ),
        SuiteEntry(
            "turnrl/TextWorld-v0",
            {"challenge": "tw-coin_collector", "settings": {"level": 5}},
            TRAIN_SEEDS, EVAL_SEEDS, name="tw-coin_collector",
        ),
        SuiteEntry(
            "turnrl/TextWorld-v0",
            {"challenge": "tw-treasure_hunter", "settings": {"level": 5}},
            TRAIN_SEEDS, EVAL_SEEDS, name="tw-treasure_hunter",
        ),
        SuiteEntry(
            "turnrl/TextWorld-v0",
            {"challenge": "tw-cooking", "settings": {"recipe": 1, "take": 1, "go": 6, "open": True}},
            TRAIN_SEEDS, EVAL_SEEDS, name="tw-cooking",
        ),
    ],
    description="The four TextWorld challenges at easy settings; 100 eval seeds each.",
)

# ALFWorld: one entry per task type, on generated households (no download needed).
# The expert is off in the suite (RL rollouts never pay for it); agents that read
# info["expert_action"] (the expert baseline, SFT data) switch it on through
# turnrl.rollout.env_kwargs_for.
_ALFWORLD_TASK_TYPES = (
    "pick_and_place_simple", "look_at_obj_in_light", "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep", "pick_cool_then_place_in_recep", "pick_two_obj_and_place",
)
_ALFWORLD_EVAL_SEEDS = tuple(range(100_000, 100_020))

register_suite(
    "alfworld",
    [
        SuiteEntry("turnrl/ALFWorld-v0", {"task_types": [t]},
                   TRAIN_SEEDS, _ALFWORLD_EVAL_SEEDS, name=t)
        for t in _ALFWORLD_TASK_TYPES
    ],
    description="ALFWorld's six task types on generated households (seen goal "
    "combinations); 20 eval seeds each.",
)

register_suite(
    "alfworld-unseen",
    [
        SuiteEntry("turnrl/ALFWorld-v0", {"task_types": [t], "split": "valid_unseen"},
                   (), _ALFWORLD_EVAL_SEEDS, name=t)
        for t in _ALFWORLD_TASK_TYPES
    ],
    description="ALFWorld's six task types on generated households whose goal "
    "combinations never occur in training (like ALFWorld's valid_unseen); eval only.",
)

register_suite(
    "code",
    [
        SuiteEntry("turnrl/CodeInterpreter-v0", {}, TRAIN_SEEDS, EVAL_SEEDS,
                   name="code-interpreter"),
        SuiteEntry("turnrl/CodeRepair-v0", {}, TRAIN_SEEDS, EVAL_SEEDS, name="code-repair"),
    ],
    description="Sandboxed code: reasoning-gym tasks with a Python tool, and HumanEval "
    "repair from test feedback; 100 eval seeds each.",
)

# Ride dispatch: the toy city and the larger one, 20 eval seeds each (the baseline table
# in BENCHMARKS.md uses these seeds).
_RIDE_EVAL_SEEDS = tuple(range(100_000, 100_020))
register_suite(
    "ride-dispatch",
    [
        SuiteEntry("turnrl/RideDispatch-v0", {"config": "mdpod"}, TRAIN_SEEDS, _RIDE_EVAL_SEEDS,
                   name="mdpod"),
        SuiteEntry("turnrl/RideDispatch-v0", {"config": "city"}, TRAIN_SEEDS, _RIDE_EVAL_SEEDS,
                   name="city"),
    ],
    description="One dispatcher on the MDPOD toy city and on the 20x20 city; 20 eval seeds "
    "each; won = answer rate >= 0.75.",
)
