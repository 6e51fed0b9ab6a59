import pytest

import turnrl
from turnrl.envs.suites import Suite, SuiteEntry
from turnrl.errors import ConfigError, UnknownEnvError


def test_textworld_suite_has_four_challenges_with_disjoint_seeds():
    suite = turnrl.get_suite("textworld")
    assert [e.name for e in suite.entries] == [
        "tw-simple", "tw-coin_collector", "tw-treasure_hunter", "tw-cooking"]
    for entry in suite.entries:
        assert not set(entry.train_seeds) & set(entry.eval_seeds)
        assert entry.env_id in [s.id for s in turnrl.list_envs()]


def test_every_registered_suite_is_disjoint():
    for suite in turnrl.list_suites():
        for e in suite.entries:
            assert not set(e.train_seeds) & set(e.eval_seeds), (suite.name, e.name)


def test_overlapping_seeds_rejected():
    with pytest.raises(ConfigError, match=r"overlap.*\[3, 4\]"):
        SuiteEntry("turnrl/TextWorld-v0", {}, train_seeds=range(5), eval_seeds=range(3, 8))


def test_empty_and_duplicate_entries_rejected():
    with pytest.raises(ConfigError):
        Suite("x", ())
    e = SuiteEntry("turnrl/TextWorld-v0", eval_seeds=(1,), name="a")
    with pytest.raises(ConfigError, match="duplicate"):
        Suite("x", (e, e))


def test_unknown_suite_suggests():
    with pytest.raises(UnknownEnvError, match="textworld"):
        turnrl.get_suite("textwrld")
