"""Config errors: every problem in one message, before anything is built."""

import pytest

from turnrl.errors import ConfigError
from turnrl.trainer.config import load_config

BASE = ["model.name_or_path=x", "env.id=turnrl/TextWorld-v0"]


def test_type_errors_do_not_hide_range_errors():
    with pytest.raises(ConfigError) as exc:
        load_config(None, [*BASE, "optim.lr=fast", "rollout.episodes_per_update=0",
                           "algorithm.clip_ratio=2", "eval.greedy=maybe"])
    msg = str(exc.value)
    for fragment in ("optim.lr must be a number, got 'fast'", "eval.greedy must be bool",
                     "episodes_per_update must be >= 1, got 0", "clip_ratio must be in (0, 1)"):
        assert fragment in msg, fragment


def test_tiny_model_settings_are_checked_up_front():
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["env.id=turnrl/TextWorld-v0",
                           "model.tiny={hidden_size: 32, layers: 2, vocab_size: 50}"])
    msg = str(exc.value)
    assert "model.tiny.hidden_size must be an integer >= 64" in msg
    assert "model.tiny has unknown keys ['layers']" in msg
    assert "model.tiny.vocab_size must be an integer >= 105" in msg
    with pytest.raises(ConfigError, match="model.tiny must be a dict, got 5"):
        load_config(None, ["env.id=turnrl/TextWorld-v0", "model.tiny=5"])


def test_files_that_cannot_be_read(tmp_path):
    with pytest.raises(ConfigError, match=r"config file .*nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  tiny: {hidden_size: 64\nenv: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml is not valid YAML \(line \d+, column \d+\)"):
        load_config(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping, got list"):
        load_config(listing)
    with pytest.raises(ConfigError, match="cannot read the value as YAML"):
        load_config(None, [*BASE, "env.kwargs={a: [1"])
