"""Ride-hailing order dispatch: a seeded grid-city simulator, a text env for one
dispatcher, a per-driver view for shared driver policies, a PettingZoo parallel env, and
the random / greedy / matching baselines."""

from turnrl.envs.ride_dispatch.sim import (
    CONFIGS,
    Candidate,
    CityConfig,
    Hotspot,
    Simulator,
    get_config,
)

__all__ = ["CONFIGS", "Candidate", "CityConfig", "Hotspot", "Simulator", "get_config"]
