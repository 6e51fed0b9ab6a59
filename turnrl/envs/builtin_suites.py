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
