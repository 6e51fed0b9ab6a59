"""pass@k and paired comparisons: exact values worked out by hand, the fixed results files
in tests/data, a run directory as a side, and the CLI end to end."""

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from toy_envs import GuessNumber

import turnrl
from turnrl.agents import ExpertAgent, RandomAgent
from turnrl.compare import (
    EvalTarget,
    choose_target,
    compare,
    compare_records,
    load_records,
    mcnemar_exact,
    resolve_side,
)
from turnrl.errors import ConfigError
from turnrl.evaluate import (
    EpisodeRecord,
    bootstrap_ci,
    check_pass_at,
    evaluate,
    pass_at_k,
    pass_at_k_over_seeds,
    samples_differ,
)
from turnrl.trajectory import save_jsonl

turnrl.register("turnrl/GuessCompare-v0", GuessNumber, override=True)
DATA = Path(__file__).parent / "data"


# ---------------------------------------------------------------------------- pass@k
def test_pass_at_k_closed_form_by_hand():
    # n = 5 samples, c = 2 successes, k = 2: 1 - C(3, 2) / C(5, 2) = 1 - 3/10 = 0.7
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7, abs=1e-12)
    # k = 3: 1 - C(3, 3) / C(5, 3) = 1 - 1/10 = 0.9;  c = 1, k = 3: 1 - C(4, 3)/C(5, 3) = 0.6
    assert pass_at_k(5, 2, 3) == pytest.approx(0.9, abs=1e-12)
    assert pass_at_k(5, 1, 3) == pytest.approx(0.6, abs=1e-12)
    # k = 1 is the success rate c/n; n - c < k means every k-subset holds a success
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4, abs=1e-12)
    assert pass_at_k(5, 4, 2) == 1.0 and pass_at_k(5, 0, 5) == 0.0 and pass_at_k(5, 5, 5) == 1.0


def test_pass_at_k_equals_the_subset_count_and_the_binomial_ratio():
    # pass@k = the share of the C(n, k) subsets of samples holding at least one success
    for n in range(1, 9):
        outcomes_by_c = {c: [True] * c + [False] * (n - c) for c in range(n + 1)}
        for c, outcomes in outcomes_by_c.items():
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(outcomes, k))
                share = sum(any(s) for s in subsets) / len(subsets)
                ratio = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(share, abs=1e-12) == ratio
    # large n: no overflow (C(1000, 500) is ~1e299)
    assert pass_at_k(1000, 3, 500) == pytest.approx(1 - math.comb(997, 500) / math.comb(1000, 500))


def test_pass_at_k_over_seeds_averages_seeds_with_a_bootstrap_interval():
    # seed 0: 2 of 5 won, seed 1: 0 of 5, seed 2: 5 of 5
    won = {0: [1, 1, 0, 0, 0], 1: [0] * 5, 2: [1] * 5}
    records = [EpisodeRecord("g", s, i, bool(w)) for s, ws in won.items() for i, w in enumerate(ws)]
    p2 = pass_at_k_over_seeds(records, 2)
    assert p2.value == pytest.approx((0.7 + 0.0 + 1.0) / 3) and p2.seeds == 3
    p1 = pass_at_k_over_seeds(records, 1)
    assert p1.value == pytest.approx(7 / 15)  # pass@1 = the success rate
    # percentile bootstrap over the 3 per-seed values: inside [min, max], around the mean
    low, high = p2.ci95
    assert 0.0 <= low < p2.value < high <= 1.0
    assert pass_at_k_over_seeds(records, 2).ci95 == p2.ci95  # fixed RNG seed: reproducible
    with pytest.raises(ConfigError, match="seed 1 has 2"):
        pass_at_k_over_seeds(records[:7], 3)


@pytest.mark.parametrize("n,ks,named", [
    (3, [5], "pass@5 needs at least 5 samples per seed, got 3"),
    (3, [0], "k >= 1, got k=0"),
    (0, [], "samples per seed must be >= 1, got 0"),
])
def test_pass_at_errors_name_the_values(n, ks, named):
    with pytest.raises(ConfigError, match=named):
        check_pass_at(n, ks)
    with pytest.raises(ConfigError, match=named):
        evaluate("turnrl/GuessCompare-v0", ExpertAgent(), episodes=1, samples_per_seed=n, pass_at=ks)


def test_evaluate_plays_each_seed_n_times_on_the_same_game():
    r = evaluate("turnrl/GuessCompare-v0", RandomAgent(seed=0), episodes=6, samples_per_seed=4,
                 pass_at=(1, 2, 4), env_kwargs={"max_turns": 2})[0]
    assert r.episodes == 24 and r.seeds == 6 and r.samples_per_seed == 4
    assert [(x.seed, x.sample) for x in r.records] == [(s, i) for s in range(6) for i in range(4)]
    for s in range(6):  # same reset seed, same game: the same task and target each time
        trajs = [t for t in r.trajectories if t.seed == s]
        assert len({t.messages[1]["content"] for t in trajs}) == 1
        assert len({t.turns[0].info["expert_action"] for t in trajs}) == 1
    assert samples_differ(r.trajectories)  # the random agent draws anew each episode
    by_k = {p.k: p for p in r.pass_at}
    assert by_k[1].value == pytest.approx(r.success_rate)
    wins = {s: sum(x.won for x in r.records if x.seed == s) for s in range(6)}
    for k in (2, 4):
        assert by_k[k].value == pytest.approx(sum(pass_at_k(4, c, k) for c in wins.values()) / 6)
    d = r.to_dict()
    assert d["samples_per_seed"] == 4 and d["seeds"] == 6 and len(d["episode_results"]) == 24
    assert [p["k"] for p in d["pass_at_k"]] == [1, 2, 4]
    assert r.metrics("eval")["eval/pass@4"] == by_k[4].value


def test_a_deterministic_agent_repeats_itself():
    r = evaluate("turnrl/GuessCompare-v0", ExpertAgent(), episodes=3, samples_per_seed=3,
                 pass_at=(1, 3))[0]
    assert not samples_differ(r.trajectories)
    assert [p.value for p in r.pass_at] == [1.0, 1.0]


# ---------------------------------------------------------------------------- McNemar
def test_mcnemar_exact_by_hand():
    assert mcnemar_exact(0, 0) == 1.0                      # no discordant pair
    assert mcnemar_exact(1, 5) == 14 / 64                  # 2 (C(6,0) + C(6,1)) / 2^6
    assert mcnemar_exact(5, 1) == 14 / 64                  # symmetric
    assert mcnemar_exact(0, 5) == 2 / 32                   # 2 C(5,0) / 2^5
    assert mcnemar_exact(2, 6) == 74 / 256                 # 2 (1 + 8 + 28) / 2^8
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(1, 1) == 1.0  # capped at 1
    assert mcnemar_exact(0, 2000) == 0.0                   # 2 / 2^2000 underflows, no error
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


def test_bootstrap_ci_degenerate_and_reproducible():
    assert bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)
    assert bootstrap_ci([1, 0, 1, 1], seed=3) == bootstrap_ci([1, 0, 1, 1], seed=3)
    # clusters of unequal size: the statistic is sum / count, so one cluster of 2 pairs
    # with total 2 and one of 2 pairs with total 0 average to 0.5
    low, high = bootstrap_ci([2, 0], [2, 2])
    assert low == 0.0 and high == 1.0
    with pytest.raises(ValueError):
        bootstrap_ci([])


# ---------------------------------------------------------------------------- fixed files
def test_compare_fixed_result_files_by_hand():
    # tests/data: compare_a.json and compare_b.json, written in `turnrl eval --json` form.
    # coin, seeds 0-9:   A won 0 1 2 3 9,  B won 0-8
    #   A only (b): seed 9 -> 1;  B only (c): seeds 4-8 -> 5;  B - A = 9/10 - 5/10 = +0.4
    #   p = 2 (C(6,0) + C(6,1)) / 2^6 = 14/64 = 0.21875
    # cooking, A seeds 100-106 (won 100 101 106), B seeds 100-105 and 107 (won 100 102):
    #   pairs on 100-105; A only: 101, B only: 102 -> p = min(1, 2 (1 + 2) / 4) = 1; B - A = 0
    #   unpaired: A's seed 106, B's seed 107
    # all (pooled 16 pairs): b = 2, c = 6, p = 2 (1 + 8 + 28) / 2^8 = 74/256 = 0.2890625;
    #   B - A = (11 - 7) / 16 = +0.25
    a, b = load_records(DATA / "compare_a.json"), load_records(DATA / "compare_b.json")
    c = compare_records(a, b)
    coin, cooking = c.envs
    assert (coin.env, coin.pairs, coin.a_only, coin.b_only) == ("coin", 10, 1, 5)
    assert coin.success_a == 0.5 and coin.success_b == 0.9
    assert coin.difference == pytest.approx(0.4) and coin.mcnemar_p == 0.21875
    assert (cooking.pairs, cooking.a_only, cooking.b_only, cooking.mcnemar_p) == (6, 1, 1, 1.0)
    assert cooking.difference == 0.0 and (cooking.unpaired_a, cooking.unpaired_b) == (1, 1)
    assert c.overall.pairs == 16 and c.overall.difference == pytest.approx(0.25)
    assert c.overall.mcnemar_p == pytest.approx(74 / 256, abs=1e-15)
    assert c.unpaired_a == [("cooking", 106, 0)] and c.unpaired_b == [("cooking", 107, 0)]
    for s in (coin, cooking, c.overall):  # the paired bootstrap CI holds the true difference
        low, high = s.ci95
        assert -1.0 <= low <= s.difference <= high <= 1.0 and low < high
    assert compare_records(a, b).overall.ci95 == c.overall.ci95  # fixed RNG seed
    # swapping the sides flips the difference and its interval; p stays
    swapped = compare_records(b, a).overall
    assert swapped.difference == pytest.approx(-0.25) and swapped.mcnemar_p == c.overall.mcnemar_p
    assert swapped.ci95 == pytest.approx((-c.overall.ci95[1], -c.overall.ci95[0]))


def test_compare_json_and_trajectory_files_pair_the_same_way(tmp_path):
    r = evaluate("turnrl/GuessCompare-v0", RandomAgent(seed=2), episodes=5,
                 env_kwargs={"max_turns": 3})[0]
    (tmp_path / "r.json").write_text(json.dumps([r.to_dict()]))
    save_jsonl(r.trajectories, tmp_path / "r.jsonl")
    assert load_records(tmp_path / "r.json") == load_records(tmp_path / "r.jsonl") == r.records
    same = compare(str(tmp_path / "r.json"), str(tmp_path / "r.jsonl"))
    assert same.overall.difference == 0.0 and same.overall.mcnemar_p == 1.0
    assert same.overall.ci95 == (0.0, 0.0)


def test_side_errors(tmp_path):
    with pytest.raises(ConfigError, match="Did you mean 'random'"):
        resolve_side("randm")
    with pytest.raises(ConfigError, match="no such results file"):
        resolve_side(str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="not a run directory"):
        resolve_side(str(tmp_path))
    old = tmp_path / "old.json"
    old.write_text(json.dumps([{"env": "coin", "episodes": 1}]))
    with pytest.raises(ConfigError, match="no per-episode results"):
        resolve_side(str(old))
    with pytest.raises(ConfigError, match="needs an env or suite"):
        choose_target(resolve_side("random"), resolve_side("expert"), None)
    files = resolve_side(str(DATA / "compare_a.json"))
    with pytest.raises(ConfigError, match="two results files"):
        choose_target(files, files, EvalTarget("textworld"))
    far = [EpisodeRecord("coin", 1000 + i, 0, True) for i in range(3)]
    with pytest.raises(ConfigError, match="share no"):
        compare_records(load_records(DATA / "compare_a.json"), far)


def test_agents_play_the_same_seeds():
    c = compare("random", "expert", target=EvalTarget("turnrl/GuessCompare-v0", episodes=8,
                                                      seed=5, env_kwargs={"max_turns": 1}))
    assert c.overall.pairs == 8 and c.overall.success_b == 1.0
    assert c.overall.a_only == 0 and c.overall.b_only == 8 - round(8 * c.overall.success_a)
    assert c.overall.mcnemar_p == mcnemar_exact(0, c.overall.b_only)


def test_a_run_directory_plays_its_final_model_on_its_eval_seeds(tmp_path):
    from turnrl.agents import tiny

    run = tmp_path / "run"
    texts = ["Guess the hidden number. Reply with 'guess N'.", "guess 3", "No, go higher."] * 20
    tiny.make_tiny_model(run / "final_model", texts, vocab_size=300, hidden_size=64,
                         num_layers=1)
    (run / "config.yaml").write_text(
        "model: {name_or_path: unused}\n"
        "env: {id: turnrl/GuessCompare-v0, kwargs: {max_turns: 2}, train_seeds: [0, 10], "
        "eval_seeds: [100, 200]}\n"
        "rollout: {max_new_tokens: 4, max_context_tokens: 512}\neval: {episodes: 3}\n")
    side = resolve_side(str(run))
    target = choose_target(side, resolve_side("expert"), None)
    assert target == EvalTarget("turnrl/GuessCompare-v0", episodes=3, seed=100,
                                env_kwargs={"max_turns": 2})
    c = compare(str(run), "expert")  # both play eval seeds 100-102 of the run's env
    assert c.overall.pairs == 3 and c.overall.success_b == 1.0
    assert not c.unpaired_a and not c.unpaired_b
    assert c.overall.mcnemar_p == mcnemar_exact(c.overall.a_only, c.overall.b_only)


# ---------------------------------------------------------------------------- CLI
def _turnrl(*args):
    return subprocess.run([sys.executable, "-m", "turnrl.cli", *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ})


def test_cli_compare_fixed_files_json(tmp_path):
    out_path = tmp_path / "cmp.json"
    out = _turnrl("compare", str(DATA / "compare_a.json"), str(DATA / "compare_b.json"),
                  "--json", str(out_path))
    assert out.returncode == 0, out.stderr
    assert "McNemar p" in out.stdout and "0.219" in out.stdout and "+25.0%" in out.stdout
    assert "cooking seed 106" in out.stderr and "cooking seed 107" in out.stderr
    data = json.loads(out_path.read_text())
    assert data["difference"] == "B - A" and data["ci"]["resamples"] == 10_000
    assert [e["env"] for e in data["envs"]] == ["coin", "cooking"]
    assert data["overall"]["mcnemar_p"] == 0.2890625 and data["overall"]["pairs"] == 16
    assert data["envs"][0]["a_only"] == 1 and data["envs"][0]["b_only"] == 5
    low, high = data["overall"]["difference_ci95"]
    assert low <= 0.25 <= high
    assert data["unpaired_a"] == [["cooking", 106, 0]]


def test_cli_compare_random_expert_end_to_end(tmp_path):
    out_path = tmp_path / "cmp.json"
    out = _turnrl("compare", "random", "expert", "--target", "turnrl/TextWorld-v0", "--env-arg",
                  "challenge=tw-coin_collector", "--episodes", "4", "--json", str(out_path))
    assert out.returncode == 0, out.stderr
    overall = json.loads(out_path.read_text())["overall"]
    assert overall["pairs"] == 4 and overall["success_b"] == 1.0
    assert overall["difference"] == 1.0 - overall["success_a"] and overall["a_only"] == 0


def test_cli_eval_pass_at_k(tmp_path):
    path = tmp_path / "ev.json"
    out = _turnrl("eval", "turnrl/RideDispatch-v0", "--agent", "expert", "--episodes", "2",
                  "--samples-per-seed", "3", "--pass-at", "1", "--pass-at", "3", "--json", str(path))
    assert out.returncode == 0, out.stderr
    assert "pass@3 (95% CI)" in out.stdout and "6 (2x3)" in out.stdout
    assert "pass@k equals pass@1" in out.stderr  # the expert repeats itself
    row = json.loads(path.read_text())[0]
    assert row["samples_per_seed"] == 3 and [p["k"] for p in row["pass_at_k"]] == [1, 3]
    assert [(e["seed"], e["sample"]) for e in row["episode_results"]] == [
        (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
