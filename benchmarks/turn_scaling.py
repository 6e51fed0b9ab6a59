"""Cost per turn of turning a multi-turn episode into token ids, at 8, 32 and 128 turns:
turnrl's incremental path vs the naive re-render-and-re-tokenize approach, same episode,
same tokenizer, same run.

turnrl renders each new observation once, appends it to the ids already there
(``ChatRenderer.observation_ids`` + ``context_ids`` at rollout time) and builds training
samples by concatenating those ids (``build_samples``): no text is tokenized twice. The
naive approach, common in multi-turn RL code, renders the whole conversation through
the chat template and tokenizes it before every turn, and at training time re-tokenizes
each prefix to find where the assistant replies start and end (the loss mask).

Both paths are timed over the same synthetic TextWorld-like episode (observations of
~60 tokens, replies of ~8) with a tokenizer trained here; per-turn cost = total / turns.
Goal: turnrl's per-turn cost flat in the number of turns. The ids both paths produce are
checked to be equal (turnrl's sample also holds the next assistant header at its end):
the naive path is only slower, not different, with this template.

Usage::

    python benchmarks/turn_scaling.py [--turns 8 32 128] [--repeats 5]

Writes ``benchmarks/results/turn_scaling.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOMS = ["kitchen", "pantry", "cellar", "attic", "garden", "study", "hallway", "bedroom"]
THINGS = ["coin", "key", "lamp", "apple", "book", "box", "knife", "map"]


def _episode(turns: int, seed: int = 0) -> tuple[str, str, list[tuple[str, str]]]:
    rng = random.Random(seed)
    system = "You are playing a text game. Reply with one command."
    task = "Find the coin and take it. " + " ".join(
        f"There is a {rng.choice(THINGS)} in the {rng.choice(ROOMS)}." for _ in range(4))
    steps = []
    for _ in range(turns):
        action = f"go {rng.choice(['north', 'south', 'east', 'west'])} to the {rng.choice(ROOMS)}"
        room = rng.choice(ROOMS)
        obs = (f"-= {room.title()} =- You are in the {room}. " + " ".join(
            f"You see a {rng.choice(THINGS)} on the {rng.choice(['table', 'floor', 'shelf'])}."
            for _ in range(5)) + f" Exits lead {rng.choice(['north', 'south'])} and east.")
        steps.append((action, obs))
    return system, task, steps


def turnrl_path(renderer, system: str, task: str, steps) -> tuple[float, float, list[int]]:
    """Seconds for the rollout side (per-turn contexts) and the training side (samples)."""
    from turnrl.trajectory import Trajectory, Turn, build_samples, context_ids, parse_context

    full = parse_context("full")
    messages = [{"role": "system", "content": system}, {"role": "user", "content": task}]
    start = time.perf_counter()
    traj = Trajectory(env_id="bench", seed=0, task=task, messages=list(messages))
    traj.prompt_token_ids = renderer.prompt_ids(messages)
    for t, (action, obs) in enumerate(steps):
        context_ids(traj, t, full)  # what the policy generates from at this turn
        ids = renderer.encode(action) + [renderer.turn_end_id]  # stands in for sampled ids
        turn = Turn(action=action, reward=0.0, observation=obs, terminated=False, truncated=False,
                    info={}, token_ids=ids, logprobs=[0.0] * len(ids))
        turn.obs_token_ids = renderer.observation_ids({"role": "user", "content": obs},
                                                      action_ids=ids)
        traj.turns.append(turn)
    rollout = time.perf_counter() - start
    start = time.perf_counter()
    (sample,) = build_samples([traj], full)
    train = time.perf_counter() - start
    return rollout, train, sample.input_ids


def naive_path(tokenizer, system: str, task: str, steps) -> tuple[float, float, list[int]]:
    """Re-render and re-tokenize the whole conversation every turn; at training time
    tokenize every prefix ending in an assistant reply to locate the loss mask."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": task}]

    def ids_of(msgs, generation_prompt=False):
        text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    start = time.perf_counter()
    for action, obs in steps:
        ids_of(messages, generation_prompt=True)  # the prompt of this turn, from scratch
        messages += [{"role": "assistant", "content": action}, {"role": "user", "content": obs}]
    rollout = time.perf_counter() - start
    start = time.perf_counter()
    full = ids_of(messages)
    mask = [0] * len(full)
    for k in range(2, len(messages), 2):  # each assistant reply: tokenize before and after it
        begin = len(ids_of(messages[:k], generation_prompt=True))
        end = len(ids_of(messages[:k + 1]))
        mask[begin:end] = [1] * (end - begin)
    train = time.perf_counter() - start
    return rollout, train, full


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(RESULTS / "turn_scaling.json"))
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from turnrl.agents import tiny
    from turnrl.agents.prompting import ChatRenderer

    with tempfile.TemporaryDirectory() as tmp:
        system, task, steps = _episode(max(args.turns))
        corpus = [system, task] + [a for a, _ in steps] + [o for _, o in steps]
        path = tiny.make_tiny_model(Path(tmp) / "m", corpus * 3, vocab_size=800, hidden_size=64,
                                    num_layers=1)
        tokenizer = AutoTokenizer.from_pretrained(path)
    renderer = ChatRenderer(tokenizer)
    rows = []
    for turns in args.turns:
        system, task, steps = _episode(turns)
        ours, naive = [], []
        for _ in range(args.repeats):
            ours.append(turnrl_path(renderer, system, task, steps))
            naive.append(naive_path(tokenizer, system, task, steps))
        # turnrl's sample also ends with the next assistant header (the bootstrap state)
        same_ids = ours[0][2][:len(naive[0][2])] == naive[0][2]
        row = {"turns": turns, "tokens": len(ours[0][2]), "same_ids": same_ids}
        for name, runs in (("turnrl", ours), ("naive", naive)):
            row[f"{name}_rollout_us_per_turn"] = round(statistics.median(r[0] for r in runs) / turns * 1e6, 1)
            row[f"{name}_train_us_per_turn"] = round(statistics.median(r[1] for r in runs) / turns * 1e6, 1)
        row["speedup"] = round(
            (row["naive_rollout_us_per_turn"] + row["naive_train_us_per_turn"])
            / (row["turnrl_rollout_us_per_turn"] + row["turnrl_train_us_per_turn"]), 1)
        rows.append(row)
        print(f"{turns:4d} turns: turnrl {row['turnrl_rollout_us_per_turn'] + row['turnrl_train_us_per_turn']:8.1f} "
              f"us/turn, naive {row['naive_rollout_us_per_turn'] + row['naive_train_us_per_turn']:9.1f} us/turn",
              file=sys.stderr)
    first = rows[0]
    for row in rows:
        row["turnrl_growth_vs_first"] = round(
            (row["turnrl_rollout_us_per_turn"] + row["turnrl_train_us_per_turn"])
            / (first["turnrl_rollout_us_per_turn"] + first["turnrl_train_us_per_turn"]), 2)
    report = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "python": platform.python_version(),
              "command": "python benchmarks/turn_scaling.py " + " ".join(sys.argv[1:]), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(markdown(report))


def markdown(report: dict) -> str:
    """The results as a Markdown table (also used by ``benchmarks/report.py``)."""
    lines = ["| turns | tokens | turnrl rollout / train, µs per turn | naive rollout / train, µs per turn | "
             "naive / turnrl | turnrl per-turn cost vs fewest turns | same ids |",
             "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(
            f"| {r['turns']} | {r['tokens']:,} | {r['turnrl_rollout_us_per_turn']:.0f} / "
            f"{r['turnrl_train_us_per_turn']:.0f} | {r['naive_rollout_us_per_turn']:.0f} / "
            f"{r['naive_train_us_per_turn']:.0f} | {r['speedup']:.1f}x | {r['turnrl_growth_vs_first']:.2f}x | "
            f"{'yes' if r['same_ids'] else 'no'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
