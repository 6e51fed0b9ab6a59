"""Sharded training (FSDP2, ``distributed.strategy=fsdp``), on CPU with gloo.

Two processes holding half of every weight, gradient and optimizer state must give the
update one process gives on the same episodes (losses, statistics, gradients, weights);
their checkpoint must be the one-process checkpoint (whole weights and optimizer states in
the one-process layout), so that either resumes the other's; and a launched run (rollouts
of uneven length on the ranks, evaluation, KL reference, checkpoints, export) must go
through. The launched checks start real processes (torchrun), hence slow.
"""

from __future__ import annotations

import json
import pickle
import random
import shutil
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")

from test_distributed import (  # noqa: E402
    COMMON,
    WORKER,
    _episodes,
    _free_port,
    _grads,
    _launch,
    _max_diffs,
    assert_rank_matches_one_process,
)

from turnrl.errors import ConfigError  # noqa: E402
from turnrl.trainer import Trainer, load_config  # noqa: E402
from turnrl.trainer.distributed import Distributed  # noqa: E402
from turnrl.trainer.fsdp import _other_dtype_parts, layers_of  # noqa: E402

FSDP = ["distributed.strategy=fsdp"]
#: As test_distributed's cases (uneven shares and dummy passes on purpose), sharded.
CASES = {
    # separate critic (a second sharded model), KL reference (a third, no grad), the memory
    # levers (chunked logprobs read the sharded LM head; checkpointed layers; token-budget
    # passes), and gradient clipping on (the norm over both ranks' shards)
    "ppo-lean": ["algorithm.name=ppo", "algorithm.kl_coef=0.05", "algorithm.entropy_coef=0.01",
                 "rollout.episodes_per_update=7", "optim.minibatch_size=7",
                 "model.logprob_chunk_tokens=16", "model.gradient_checkpointing=true",
                 "optim.max_tokens_per_micro_batch=740", "optim.max_grad_norm=0.05"],
    # value head on the policy's detached hidden state, one sample per micro-batch
    "vldac": ["algorithm.name=vldac", "algorithm.critic_warmup_updates=0",
              "rollout.episodes_per_update=5", "optim.minibatch_size=3", "optim.micro_batch_size=1"],
    # no critic, no reference, full logits, several micro-batches per step
    "grpo": ["algorithm.name=grpo", "rollout.group_size=4", "rollout.episodes_per_update=12",
             "rollout.context=window(1)", "algorithm.loss_agg=seq-mean-token-mean",
             "optim.minibatch_size=12", "optim.micro_batch_size=2"],
}
#: The case whose update is checkpointed and resumed across process counts.
RESUMED = "ppo-lean"
#: The SFT warm start (expert episodes split over the ranks, batches of 3 split into
#: micro-batches of 1), then the KL reference reset to its result (copied shard by shard).
SFT = ["algorithm.name=ppo", "algorithm.kl_coef=0.05", "sft.episodes=5", "sft.epochs=2",
       "sft.batch_size=3", "sft.lr=1e-3", "optim.micro_batch_size=1", "optim.minibatch_size=3"]


def _params(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _rewarded(episodes, seed: int):
    """The same episodes with other turn rewards (a second update's data)."""
    episodes = pickle.loads(pickle.dumps(episodes))
    rng = random.Random(seed)
    for traj in episodes:
        for turn in traj.turns:
            turn.reward = round(rng.uniform(-1.0, 1.0), 3)
    return episodes


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_guess_model):
    """For each case: one process's update on fixed episodes, and each of two FSDP ranks'
    update on its share (one torchrun for all cases). For :data:`RESUMED` also: both
    checkpoints, and a second update after resuming each from the other's checkpoint."""
    root = tmp_path_factory.mktemp("fsdp")
    reference = {}
    for name, overrides in CASES.items():
        case = root / name
        case.mkdir()
        overrides = [f"model.name_or_path={tiny_guess_model}", *COMMON, *overrides]
        episodes = _episodes(case, tiny_guess_model, CASES[name])
        (case / "episodes.pkl").write_bytes(pickle.dumps(episodes))
        (case / "overrides.json").write_text(json.dumps([*overrides, *FSDP]))
        trainer = Trainer(load_config(None, [*overrides, f"run_dir={case / 'one'}"]))
        metrics = trainer.rl_update(episodes)
        reference[name] = {
            "metrics": metrics, "episodes": len(episodes), "grads": _grads(trainer.model),
            "critic_grads": _grads(trainer.critic) if trainer.critic is not None else {},
            "params": _params(trainer.model),
        }
        if name == RESUMED:
            second = _rewarded(episodes, seed=1)
            (case / "episodes2.pkl").write_bytes(pickle.dumps(second))
            trainer.update = 1
            trainer.save()
            trainer.close()
            shutil.copytree(case / "one", case / "resume")  # the FSDP ranks resume this
            trainer = Trainer(load_config(None, [*overrides, f"run_dir={case / 'one'}"]), resume=True)
            trainer.rl_update(second)
            reference[name]["resumed"] = _params(trainer.model)
    (root / "sft").mkdir()
    overrides = [f"model.name_or_path={tiny_guess_model}", *COMMON, *SFT]
    (root / "sft" / "overrides.json").write_text(json.dumps([*overrides, *FSDP]))
    trainer = Trainer(load_config(None, [*overrides, f"run_dir={root / 'sft' / 'one'}"]))
    metrics = trainer.train_sft()
    trainer.learner.reset_reference()
    reference["sft"] = {"metrics": metrics, "params": _params(trainer.model),
                        "reference": _params(trainer.ref_model)}
    names = [*CASES, "sft"]
    _launch([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
             "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(WORKER),
             *(str(root / name) for name in names)], root)
    ranks = {name: [torch.load(root / name / f"rank{r}.pt", weights_only=False) for r in range(2)]
             for name in names}
    return root, reference, ranks


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_two_sharded_processes_give_the_one_process_update(runs, case):
    _, reference, ranks = runs
    ref = reference[case]
    assert sum(r["episodes"] for r in ranks[case]) == ref["episodes"]
    for rank in ranks[case]:
        assert_rank_matches_one_process(case, ref, rank)
        # what a vLLM engine is sent: every weight whole (tied head included)
        synced = rank["synced"]
        assert synced["lm_head.weight"].shape == ref["params"]["model.embed_tokens.weight"].shape
        assert _max_diffs(ref["params"], {k: synced[k] for k in ref["params"]})[1] < 1e-5
    if case == "ppo-lean":  # the clip was active: the norm is over both ranks' shards
        assert ref["metrics"]["grad_norm"] > 0.05
    assert _max_diffs(ranks[case][0]["params"], ranks[case][1]["params"])[0] == 0.0


@pytest.mark.slow
def test_sharded_sft_gives_the_one_process_warm_start(runs):
    _, reference, ranks = runs
    ref = reference["sft"]
    for rank in ranks["sft"]:
        assert rank["metrics"]["sft_samples"] == ref["metrics"]["sft_samples"] > 0
        assert rank["metrics"]["sft_loss"] == pytest.approx(ref["metrics"]["sft_loss"], rel=1e-5)
        assert _max_diffs(ref["params"], rank["params"])[1] < 1e-5
        # the reference now is the warm-started policy, on every rank
        assert _max_diffs(rank["params"], rank["reference"])[0] == 0.0


@pytest.mark.slow
def test_sharded_checkpoint_is_the_one_process_checkpoint(runs):
    root, _, _ = runs
    one, two = (torch.load(root / RESUMED / run / "checkpoints" / "step_000001" / "state.pt",
                           weights_only=False) for run in ("one", "run"))
    for key in ("optimizer", "critic_optimizer"):
        assert one[key]["param_groups"] == two[key]["param_groups"]
        assert one[key]["state"].keys() == two[key]["state"].keys()
        for index, state in one[key]["state"].items():
            for name in ("exp_avg", "exp_avg_sq"):
                other = two[key]["state"][index][name]
                assert type(other) is torch.Tensor and other.shape == state[name].shape
                assert float((state[name] - other).abs().max()) <= 1e-5 * float(state[name].abs().max()) + 1e-12
    assert _max_diffs(one["critic"], two["critic"])[1] < 1e-5
    from safetensors.torch import load_file

    weights = [load_file(root / RESUMED / run / "checkpoints" / "step_000001" / "model" /
                         "model.safetensors") for run in ("one", "run")]
    assert weights[0].keys() == weights[1].keys()
    assert _max_diffs(*weights)[1] < 1e-5


@pytest.mark.slow
def test_checkpoints_resume_across_process_counts(runs, tiny_guess_model):
    root, reference, ranks = runs
    case = root / RESUMED
    # one process resumes the two sharded ranks' checkpoint ...
    overrides = json.loads((case / "overrides.json").read_text())
    overrides = [o for o in overrides if o not in FSDP]
    trainer = Trainer(load_config(None, [*overrides, f"run_dir={case / 'run'}"]), resume=True)
    trainer.rl_update(pickle.loads((case / "episodes2.pkl").read_bytes()))
    expected = reference[RESUMED]["resumed"]  # one process, straight through
    assert _max_diffs(expected, _params(trainer.model))[1] < 1e-5
    # ... and two sharded ranks resumed the one-process checkpoint
    for rank in range(2):
        resumed = torch.load(case / f"resumed{rank}.pt", weights_only=False)["params"]
        assert _max_diffs(expected, resumed)[1] < 1e-5
    assert _max_diffs(expected, reference[RESUMED]["params"])[0] > 0  # the second update moved


@pytest.mark.slow
def test_sharded_run_trains_evaluates_checkpoints_and_exports(tmp_path, tiny_guess_model):
    """A whole run under FSDP, in bfloat16: the ranks' rollouts and evaluations differ in
    length (the weights are gathered around them), a KL reference and a separate critic
    (a bfloat16 backbone with a float32 value head: groups of their own) are sharded, and
    the checkpoint and final model are whole; one process then resumes it."""
    run = tmp_path / "run"
    config = tmp_path / "c.yaml"
    config.write_text(
        "# torchrun --nproc_per_node 2 -m turnrl.cli train c.yaml\n"
        f"model: {{name_or_path: {tiny_guess_model}, dtype: bfloat16}}\n"
        "env: {id: turnrl/PluginCounter-v0}\n"
        "algorithm: {name: ppo, kl_coef: 0.05, entropy_coef: 0.01}\n"  # a gradient at reward 0

        "rollout: {episodes_per_update: 4, max_new_tokens: 6, num_envs: 4}\n"
        "optim: {minibatch_size: 2, micro_batch_size: 1}\n"
        "distributed: {strategy: fsdp}\n"
        f"total_updates: 2\ncheckpoint_every: 1\nlog_episodes: 0\nrun_dir: {run}\n"
        "eval: {episodes: 3}\nprogress: false\n")
    _launch([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
             "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
             "-m", "turnrl.cli", "train", str(config), "--no-plot"], tmp_path)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["step"]) for r in rows] == [
        ("eval:before", 0), ("train", 0), ("train", 1), ("eval:after_rl", 2)]
    assert all(r["nan_skipped"] == 0.0 for r in rows if r["phase"] == "train")
    from transformers import AutoModelForCausalLM

    final = AutoModelForCausalLM.from_pretrained(run / "final_model", dtype=torch.bfloat16)
    reference = AutoModelForCausalLM.from_pretrained(run / "reference", dtype=torch.bfloat16)
    start = AutoModelForCausalLM.from_pretrained(tiny_guess_model, dtype=torch.bfloat16)
    for name, p in start.named_parameters():  # whole weights, trained away from the start
        assert final.state_dict()[name].shape == p.shape
        assert torch.equal(reference.state_dict()[name], p)  # the reference is the start
    assert any(not torch.equal(final.state_dict()[n], p) for n, p in start.named_parameters())
    critic = torch.load(run / "checkpoints" / "step_000002" / "state.pt", weights_only=False)["critic"]
    assert critic["head.net.weight"].dtype == torch.float32 and critic["head.net.weight"].shape == (1, 64)
    # one process resumes the sharded run's last checkpoint for a third update
    _launch([sys.executable, "-m", "turnrl.cli", "train", "--resume", str(run), "total_updates=3",
             "--no-plot"], tmp_path)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["phase"] == "train"] == [0, 1, 2]


# ---------------------------------------------------------------- without processes
def test_strategy_is_checked():
    base = ["model.name_or_path=x", "env.id=turnrl/GuessDist-v0"]
    assert load_config(None, base).distributed.strategy == "ddp"
    assert load_config(None, [*base, *FSDP]).distributed.strategy == "fsdp"
    with pytest.raises(ConfigError, match=r"distributed.strategy must be one of ddp, fsdp, got "
                                          r"'fsdp2'.*Did you mean 'fsdp'"):
        load_config(None, [*base, "distributed.strategy=fsdp2"])
    with pytest.raises(ConfigError, match=r"distributed.strategy=fsdp shards full fine-tuning; "
                                          r"with model.lora .* distributed.strategy=ddp"):
        load_config(None, [*base, *FSDP, "model.lora={r: 4}"])


def test_one_process_ignores_the_strategy(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = load_config(None, ["model.name_or_path=x", "env.id=turnrl/GuessDist-v0", *FSDP])
    dist = Distributed.from_config(cfg.distributed)
    assert dist.world_size == 1 and not dist.sharded
    model = torch.nn.Linear(2, 2)
    dist.shard_modules([model])  # nothing to shard in one process
    assert type(model.weight) is torch.nn.Parameter


def test_groups_are_the_layers_and_parts_in_another_dtype(tiny_guess_model):
    from transformers import AutoModelForCausalLM

    from turnrl.trainer.critic import ValueModel

    model = AutoModelForCausalLM.from_pretrained(tiny_guess_model)
    layers = layers_of(model)
    assert [type(m).__name__ for m in layers] == ["LlamaDecoderLayer"] * 2
    assert layers == list(model.model.layers)
    assert _other_dtype_parts(model, layers) == []
    critic = ValueModel.from_pretrained(tiny_guess_model, dtype=torch.bfloat16)
    layers = layers_of(critic)
    assert layers == list(critic.backbone.layers)
    assert _other_dtype_parts(critic, layers) == [critic.head]  # float32 on bfloat16
