"""The trainer frees a colocated rollout engine's memory during each update (vLLM sleep
mode) and takes it back before the weight sync.

vLLM's sleep mode runs only on CUDA/ROCm/XPU, so here the engine is a stand-in: an HF
policy with the RolloutEngine methods that records what the trainer asks of it, and
when. (That a real vLLM engine refuses sleep mode on a CPU is tested in
tests/agents/test_vllm.py.)"""

import pytest

torch = pytest.importorskip("torch")

from toy_envs import GuessNumber  # noqa: E402

import turnrl  # noqa: E402
from turnrl.agents.base import RolloutEngine  # noqa: E402
from turnrl.agents.hf import HFPolicy  # noqa: E402
from turnrl.errors import ConfigError  # noqa: E402
from turnrl.trainer import Trainer, builders, load_config  # noqa: E402

turnrl.register("turnrl/GuessSleep-v0", GuessNumber, override=True, max_turns=3)


class RecordingEngine(HFPolicy):
    """A rollout engine that records sleep / wake_up / sync_weights / generate calls."""

    def __init__(self, path, log, **kwargs):
        super().__init__(path, **kwargs)
        self.log, self.asleep = log, False

    def generate(self, prompts, **kwargs):
        assert not self.asleep, "generated while asleep"
        self.log.append("generate")
        return super().generate(prompts, **kwargs)

    def sleep(self):
        self.log.append("sleep")
        self.asleep = True

    def wake_up(self):
        self.log.append("wake_up")
        self.asleep = False

    def sync_weights(self, model):
        assert not self.asleep, "weights synced into a sleeping engine"
        self.log.append("sync")
        self.model.load_state_dict(model.state_dict())
        return 0.0

    def close(self):
        self.log.append("close")


def test_update_runs_with_the_engine_asleep(tmp_path, tiny_guess_model, monkeypatch):
    log: list[str] = []

    def build_engine(path, **kwargs):
        assert kwargs["sleep_level"] == 1 and kwargs["gpu_memory_utilization"] == 0.4
        return RecordingEngine(path, log, max_new_tokens=kwargs["max_new_tokens"])

    monkeypatch.setattr(builders, "build_engine", build_engine)
    cfg = load_config(None, [
        f"model.name_or_path={tiny_guess_model}", "env.id=turnrl/GuessSleep-v0",
        "rollout.backend=vllm", "rollout.vllm_sleep=1", "rollout.vllm_gpu_memory_utilization=0.4",
        "rollout.episodes_per_update=4", "rollout.max_new_tokens=4", "total_updates=2",
        f"run_dir={tmp_path / 'run'}", "eval.episodes=1", "progress=false", "checkpoint_every=0",
    ])
    trainer = Trainer(cfg)
    assert isinstance(trainer.engine, RolloutEngine)
    log.clear()
    trainer.rl_update()
    trainer.rl_update()
    trainer.close()
    # rollout awake -> asleep for scoring and the update -> woken and synced -> rollout
    compact = [x for i, x in enumerate(log) if x != "generate" or log[i - 1 : i] != ["generate"]]
    assert compact == ["generate", "sleep", "wake_up", "sync", "generate", "sleep", "wake_up",
                       "sync", "close"]


def test_sleep_settings_are_checked():
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["model.name_or_path=x", "env.id=turnrl/GuessSleep-v0",
                           "rollout.vllm_sleep=3", "rollout.vllm_gpu_memory_utilization=1.5"])
    assert "vllm_sleep must be 0 (off), 1 or 2, got 3" in str(exc.value)
    assert "vllm_gpu_memory_utilization must be in (0, 1], got 1.5" in str(exc.value)
