"""Multi-process training (DDP through accelerate, gloo on CPU).

Two processes must give the update one process gives on the same episodes: the same
losses and statistics, the same all-reduced gradients, the same parameters after the
optimizer steps; and a two-process run writes each run-directory file once. The
launched checks start real processes (torchrun, ``accelerate launch``), hence slow.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")

from toy_envs import GuessNumber  # noqa: E402

import turnrl  # noqa: E402
from turnrl.envs.suites import SuiteEntry  # noqa: E402
from turnrl.errors import ConfigError  # noqa: E402
from turnrl.trainer import Trainer, load_config  # noqa: E402
from turnrl.trainer.distributed import Distributed, shard_range  # noqa: E402
from turnrl.trainer.env_mix import EnvMix  # noqa: E402
from turnrl.trajectory import Trajectory  # noqa: E402

turnrl.register("turnrl/GuessDist-v0", GuessNumber, override=True, max_turns=3)

TESTS = Path(__file__).parents[1]
WORKER = Path(__file__).parent / "_distributed_worker.py"

COMMON = [
    "env.id=turnrl/GuessDist-v0", "rollout.max_new_tokens=5", "rollout.num_envs=12",
    "total_updates=1", "progress=false", "optim.lr=1e-3", "optim.critic_lr=1e-3",
    "optim.epochs_per_update=2", "log_tokens=0", "log_episodes=0",
    # Clipping would rescale a gradient of the wrong size to the right norm: off.
    "optim.max_grad_norm=1e6",
]
#: Uneven on purpose: 7 episodes are 4 + 3 per rank; a minibatch of 3 leaves one rank a
#: single sample for two micro-batches (a dummy pass); 3 GRPO groups are 2 + 1.
CASES = {
    "ppo": ["algorithm.name=ppo", "algorithm.kl_coef=0.05", "algorithm.entropy_coef=0.01",
            "rollout.episodes_per_update=7", "optim.minibatch_size=4", "optim.micro_batch_size=1"],
    # value head on the policy's (detached) hidden state: a second DDP module fed by the first
    "vldac": ["algorithm.name=vldac", "algorithm.critic_warmup_updates=0",
              "rollout.episodes_per_update=5", "optim.minibatch_size=3", "optim.micro_batch_size=1"],
    "grpo": ["algorithm.name=grpo", "rollout.group_size=4", "rollout.episodes_per_update=12",
             "rollout.context=window(1)", "algorithm.loss_agg=seq-mean-token-mean",
             "optim.minibatch_size=12", "optim.micro_batch_size=2"],
    # the memory levers: chunked logprobs, gradient checkpointing (policy and separate
    # critic), token-budget micro-batches (samples of ~184 tokens, up to 4 per pass; the
    # ranks' packings differ in count, so one rank runs a dummy pass)
    "ppo-lean": ["algorithm.name=ppo", "algorithm.kl_coef=0.05", "algorithm.entropy_coef=0.01",
                 "rollout.episodes_per_update=7", "optim.minibatch_size=7",
                 "model.logprob_chunk_tokens=16", "model.gradient_checkpointing=true",
                 "optim.max_tokens_per_micro_batch=740"],
}
#: Logged by both runs and compared.
METRICS = ("policy_loss", "entropy", "kl_ref", "value_loss", "clipfrac", "approx_kl",
           "ratio_max", "grad_norm", "critic_grad_norm", "adv/mean", "adv/abs_mean",
           "value/mean", "rollout/return", "rollout/episodes", "perf/action_tokens")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(cmd: list[str], tmp_path: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    """Run a launcher command with a clean distributed environment (no outer WORLD_SIZE,
    no user accelerate config, one thread per process)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(TESTS / "plugin_pkg"), env.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def _episodes(tmp_path: Path, model: Path, overrides: list[str]):
    """A fixed update's episodes from the tiny model, with varied turn rewards so that
    every advantage estimator has signal."""
    trainer = Trainer(load_config(None, [f"model.name_or_path={model}", *COMMON, *overrides,
                                         f"run_dir={tmp_path / 'collect'}"]))
    episodes = trainer.rollout()
    rng = random.Random(0)
    for traj in episodes:
        for turn in traj.turns:
            turn.reward = round(rng.uniform(-1.0, 1.0), 3)
    return episodes


def _grads(module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_guess_model):
    """For each case: one process's update on the fixed episodes, and each of two ranks'
    update on its share of them (one torchrun for all cases)."""
    root = tmp_path_factory.mktemp("dist")
    reference = {}
    for name, overrides in CASES.items():
        case = root / name
        case.mkdir()
        overrides = [f"model.name_or_path={tiny_guess_model}", *COMMON, *overrides]
        episodes = _episodes(case, tiny_guess_model, CASES[name])
        (case / "episodes.pkl").write_bytes(pickle.dumps(episodes))
        (case / "overrides.json").write_text(json.dumps(overrides))
        trainer = Trainer(load_config(None, [*overrides, f"run_dir={case / 'one'}"]))
        metrics = trainer.rl_update(episodes)
        reference[name] = {
            "metrics": metrics, "episodes": len(episodes), "grads": _grads(trainer.model),
            "critic_grads": _grads(trainer.critic) if trainer.critic is not None else {},
            "params": {n: p.detach().clone() for n, p in trainer.model.named_parameters()},
        }
    _launch([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
             "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(WORKER),
             *(str(root / name) for name in CASES)], root)
    ranks = {name: [torch.load(root / name / f"rank{r}.pt", weights_only=False) for r in range(2)]
             for name in CASES}
    return reference, ranks


def _max_diffs(one: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Over the tensors: the largest absolute difference of an entry, and the largest
    relative difference ``|a - b| / |a|`` (L2 norms of each tensor)."""
    assert one.keys() == other.keys()
    abs_diff = max(float((one[k] - other[k]).abs().max()) for k in one)
    rel_diff = max(float((one[k] - other[k]).norm() / one[k].norm().clamp(min=1e-12)) for k in one)
    return abs_diff, rel_diff


def assert_rank_matches_one_process(case: str, ref: dict, rank: dict) -> None:
    """One rank's metrics, gradients (policy, critic) and updated weights equal the
    one-process update's (also used by test_fsdp.py)."""
    for key in METRICS:
        if key in ref["metrics"]:
            assert rank["metrics"][key] == pytest.approx(ref["metrics"][key], rel=1e-5, abs=1e-6), key
    assert rank["metrics"]["nan_skipped"] == 0.0
    for part in ("grads", "critic_grads", "params"):
        if not ref[part]:  # no critic
            assert not rank[part]
            continue
        abs_diff, rel_diff = _max_diffs(ref[part], rank[part])
        print(f"{case} {part}: max abs diff {abs_diff:.2e}, max rel diff {rel_diff:.2e}")
        assert rel_diff < 1e-5, (part, abs_diff, rel_diff)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_give_the_one_process_update(runs, case):
    reference, ranks = runs
    ref = reference[case]
    # each rank played its share (whole groups) and trained on everyone's episodes
    assert sum(r["episodes"] for r in ranks[case]) == ref["episodes"]
    assert min(r["episodes"] for r in ranks[case]) < max(r["episodes"] for r in ranks[case])
    for rank in ranks[case]:
        assert_rank_matches_one_process(case, ref, rank)
    # the gradients moved something, and both ranks stepped alike
    assert max(float(g.abs().max()) for g in ref["grads"].values()) > 1e-4
    assert _max_diffs(ranks[case][0]["params"], ranks[case][1]["params"])[0] == 0.0


@pytest.mark.slow
def test_two_process_run_writes_each_file_once(tmp_path, tiny_guess_model):
    run = tmp_path / "run"
    config = tmp_path / "c.yaml"
    config.write_text(
        "# accelerate launch --multi_gpu --num_processes 2 -m turnrl.cli train c.yaml\n"
        f"model: {{name_or_path: {tiny_guess_model}}}\n"
        "env: {id: turnrl/PluginCounter-v0}\n"
        "rollout: {episodes_per_update: 4, max_new_tokens: 4, num_envs: 4}\n"
        "optim: {minibatch_size: 2, micro_batch_size: 1}\n"
        f"total_updates: 2\ncheckpoint_every: 1\nlog_episodes: 2\nrun_dir: {run}\n"
        "eval: {episodes: 3}\nprogress: false\n")
    proc = _launch([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                    "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                    "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
                    "-m", "turnrl.cli", "train", str(config), "--no-plot"], tmp_path)
    assert proc.stdout.count("held-out success rate") == 1  # rank 0 reports
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["step"]) for r in rows] == [
        ("eval:before", 0), ("train", 0), ("train", 1), ("eval:after_rl", 2)]
    assert [r["rollout/episodes"] for r in rows if r["phase"] == "train"] == [4.0, 4.0]
    assert rows[0]["eval/episodes"] == rows[-1]["eval/episodes"] == 3.0  # 2 + 1 per rank
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 * 2  # 2 episodes per evaluation and update
    assert len(list((run / "tensorboard").iterdir())) == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000001", "step_000002"]
    state = torch.load(run / "checkpoints" / "step_000002" / "state.pt", weights_only=False)
    assert state["update"] == 2 and len(state["policy_rng_ranks"]) == 2
    assert not torch.equal(*state["policy_rng_ranks"])  # each rank samples its own stream
    for name in ("config.yaml", "results.json", "final_model/config.json"):
        assert (run / name).exists(), name


# ---------------------------------------------------------------- without processes
def test_shard_range_splits_into_contiguous_blocks():
    assert [list(shard_range(7, r, 3)) for r in range(3)] == [[0, 1, 2], [3, 4], [5, 6]]
    assert [list(shard_range(1, r, 2)) for r in range(2)] == [[0], []]
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\), got 2"):
        shard_range(4, 2, 2)


def test_sharded_env_mix_plays_one_process_groups_in_its_order():
    entries = [SuiteEntry("turnrl/GuessDist-v0", {}, range(100), range(1000, 1001), name="a"),
               SuiteEntry("turnrl/GuessDist-v0", {}, range(100, 200), range(1000, 1001), name="b")]
    weights = [1.0, 2.0]
    whole = EnvMix(entries, seed=3, weights=weights).sample_groups(9)
    shards = []
    for rank in range(2):
        mix = EnvMix(entries, seed=3, weights=weights)
        mix.shard(rank, 2)
        shards.append(mix.sample_groups(9))
    # every group once, and per entry the ranks' blocks in one-process order
    assert [shards[0][e] + shards[1][e] for e in range(2)] == whole
    assert sum(len(s) for s in shards[0]) == 5 and sum(len(s) for s in shards[1]) == 4

    # merge: episodes back in one-process order, group numbers offset past rank 0's groups
    def episodes(groups_per_entry):
        out = []
        for name, seeds in zip("ab", groups_per_entry, strict=True):
            out += [Trajectory("x", seed, "", group=g, entry=name) for g, seed in enumerate(seeds)
                    for _ in range(2)]
        return out

    merged = EnvMix(entries, seed=3, weights=weights).merge([episodes(s) for s in shards])
    expected = episodes(whole)
    assert [(t.entry, t.seed, t.group) for t in merged] == [(t.entry, t.seed, t.group) for t in expected]


def test_sharded_env_mix_rng_stays_in_step():
    entries = [SuiteEntry("turnrl/GuessDist-v0", {}, range(100), range(1000, 1001), name="a")]
    mixes = [EnvMix(entries, seed=5) for _ in range(3)]
    for rank, mix in enumerate(mixes):
        mix.shard(rank, 3)
        mix.sample_groups(4)
    states = [m.state() for m in mixes]
    assert states[0] == states[1] == states[2]


def test_one_process_needs_no_accelerate(monkeypatch):
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    dist = Distributed.from_config(load_config(None, ["model.name_or_path=x", "env.id=turnrl/GuessDist-v0"]).distributed)
    assert (dist.accelerator, dist.rank, dist.world_size, dist.is_main) == (None, 0, 1, True)
    assert dist.gather({"a": 1}) == [{"a": 1}] and dist.seed(7) == 7 and list(dist.shard(3)) == [0, 1, 2]


def test_distributed_settings_are_checked(monkeypatch):
    base = ["model.name_or_path=x", "env.id=turnrl/GuessDist-v0"]
    with pytest.raises(ConfigError, match="distributed.timeout_s must be > 0, got 0"):
        load_config(None, [*base, "distributed.timeout_s=0"])
    with pytest.raises(ConfigError, match="Did you mean 'timeout_s'"):
        load_config(None, [*base, "distributed.timeout=60"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = load_config(None, [*base, "model.device=cuda:1"])
    with pytest.raises(ConfigError, match=r"model.device='cuda:1' would put all 2 processes on one GPU"):
        Distributed.from_config(cfg.distributed, device=cfg.model.device)


def test_minibatch_smaller_than_the_process_count_is_refused(monkeypatch, tmp_path):
    four = Distributed(None)
    four.world_size = 4
    monkeypatch.setattr(Distributed, "from_config", classmethod(lambda cls, cfg, device=None: four))
    cfg = load_config(None, ["model.name_or_path=x", "env.id=turnrl/GuessDist-v0",
                             "optim.minibatch_size=2", "optim.micro_batch_size=1",
                             f"run_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"optim.minibatch_size \(2\) counts samples per optimizer "
                                          r"step over all 4 processes.*optim.minibatch_size=4"):
        Trainer(cfg)
