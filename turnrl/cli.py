"""The ``turnrl`` command line.

    turnrl envs                               list environments and suites
    turnrl play turnrl/TextWorld-v0 --seed 3  play an environment yourself
    turnrl eval textworld --agent expert      success rates with 95% intervals
    turnrl compare random expert --target textworld   paired comparison on the same seeds
    turnrl train configs/quickstart.yaml      SFT warm start + turn-level PPO
    accelerate launch --multi_gpu -m turnrl.cli train CONFIG   the same, data parallel
    turnrl plot runs/quickstart               PNG curves of a run
    turnrl view runs/quickstart               HTML report: episodes, tokens, mask audit
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from turnrl.errors import ConfigError, TurnRLError

__all__ = ["main"]


def _parse_env_args(pairs: Sequence[str]) -> dict[str, Any]:
    """``["level=3", "settings={goal: brief}"]`` -> ``{"level": 3, "settings": {...}}``.
    Values are read as YAML, so numbers, booleans, lists and mappings work."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--env-arg takes KEY=VALUE, got {pair!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--env-arg {key}: cannot read value {value!r}: {exc}") from None
    return out


# ---------------------------------------------------------------------------- envs
def cmd_envs(args: argparse.Namespace) -> int:
    from turnrl.envs import list_envs, list_suites

    envs = list_envs()
    suites = list_suites()
    if args.json:
        print(json.dumps({
            "envs": [{"id": s.id, "description": s.description} for s in envs],
            "suites": [{"name": s.name, "description": s.description,
                        "entries": [e.name for e in s.entries]} for s in suites],
        }, indent=2))
        return 0
    width = max(len(s.id) for s in envs) if envs else 10
    print("Environments:")
    for s in envs:
        print(f"  {s.id:<{width}}  {s.description}")
    if suites:
        print("\nSuites (use with `turnrl eval SUITE`):")
        w = max(len(s.name) for s in suites)
        for suite in suites:
            print(f"  {suite.name:<{w}}  {suite.description}")
            print(f"  {'':<{w}}  entries: {', '.join(e.name for e in suite.entries)}")
    return 0


# ---------------------------------------------------------------------------- play
_PLAY_HELP = """Type a command and press Enter. Special commands:
  /actions   list admissible commands     /hint   show the expert's next command
  /reset     start a new episode          /quit   leave (Ctrl-D works too)"""


def cmd_play(args: argparse.Namespace) -> int:
    from turnrl.envs import make

    env = make(args.env_id, **_parse_env_args(args.env_arg))
    seed = args.seed
    try:
        obs, info = env.reset(seed=seed)
        print(f"== {args.env_id}  seed {seed}  (type /help for help)\n")
        print(obs)
        total = 0.0
        while True:
            try:
                line = input("\n> ")
            except EOFError:
                print()
                break
            command = line.strip()
            if command in ("/quit", "/exit"):
                break
            if command == "/help":
                print(_PLAY_HELP)
                continue
            if command == "/actions":
                actions = info.get("admissible_actions")
                print("\n".join(actions) if actions else "(this env lists no admissible actions)")
                continue
            if command == "/hint":
                print(info.get("expert_action") or "(no expert action available)")
                continue
            if command == "/reset":
                seed = seed + 1 if seed is not None else None
                obs, info = env.reset(seed=seed)
                total = 0.0
                print(f"\n== new episode, seed {seed}\n\n{obs}")
                continue
            obs, reward, terminated, truncated, info = env.step(line)
            total += reward
            print(obs)
            if reward:
                print(f"[reward {reward:+g}, return {total:g}]")
            if info.get("invalid_action"):
                print("[invalid action]")
            if terminated or truncated:
                outcome = "won" if info.get("won") else ("out of turns" if truncated else "over")
                print(f"\n== episode {outcome}: return {total:g} in {info.get('turn')} turns")
                break
    finally:
        env.close()
    return 0


# ---------------------------------------------------------------------------- eval
def _columns(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a plain table: first column left-aligned, the others right-aligned."""
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )
    return [line(header), line(["-" * w for w in widths])] + [line(row) for row in rows]


def _format_table(results: Sequence[Any]) -> str:
    ks = [p.k for p in results[0].pass_at] if results else []
    header = ["env", "episodes", "success", "95% CI", "return", "turns", "invalid"]
    header += [f"pass@{k} (95% CI)" for k in ks]
    rows = []
    for r in results:
        low, high = r.success_ci95
        episodes = str(r.episodes)
        if r.samples_per_seed > 1:
            episodes += f" ({r.seeds}x{r.samples_per_seed})"
        rows.append([
            r.env, episodes, f"{r.success_rate:.1%}", f"[{low:.1%}, {high:.1%}]",
            f"{r.mean_return:.2f}", f"{r.mean_turns:.1f}", f"{r.invalid_rate:.1%}",
        ] + [f"{p.value:.1%} [{p.ci95[0]:.1%}, {p.ci95[1]:.1%}]" for p in r.pass_at])
    return "\n".join(_columns(header, rows))


def cmd_eval(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from turnrl.agent_registry import agent_spec, make_agent
    from turnrl.evaluate import check_pass_at, evaluate, resolve_target, samples_differ
    from turnrl.trajectory import save_jsonl

    env_kwargs = _parse_env_args(args.env_arg)
    for option, path in (("--json", args.json), ("--save-trajectories", args.save_trajectories)):
        _check_writable(option, path)  # before the evaluation, not after it
    check_pass_at(args.samples_per_seed, args.pass_at)
    pairs = resolve_target(args.target, episodes=args.episodes, seed=args.seed, env_kwargs=env_kwargs)
    agent_kwargs: dict[str, Any] = {"seed": args.seed} if agent_spec(args.agent).takes_seed() else {}
    if args.agent.startswith("openai:"):
        agent_kwargs.update(base_url=args.base_url, api_key_env=args.api_key_env,
                            concurrency=args.concurrency, max_tokens=args.max_tokens)
    elif args.base_url:
        raise ConfigError(f"--base-url goes with --agent openai:MODEL, not {args.agent!r}")
    if args.temperature is not None:
        agent_kwargs["temperature"] = args.temperature
    agent = make_agent(args.agent, **agent_kwargs)
    total = sum(len(seeds) for _, seeds in pairs) * args.samples_per_seed
    with tqdm(total=total, desc=f"eval {args.agent} on {args.target}", unit="ep",
              file=sys.stderr, disable=args.quiet) as bar:
        results = evaluate(
            args.target, agent, episodes=args.episodes, seed=args.seed, num_envs=args.num_envs,
            env_kwargs=env_kwargs or None, samples_per_seed=args.samples_per_seed,
            pass_at=args.pass_at, mode=args.mode, env_pool=args.env_pool,
            envs_per_worker=args.envs_per_worker, ray_address=args.ray_address,
            on_episode_end=lambda _t: bar.update(1),
        )
    print(_format_table(results))
    for r in results:
        if r.failed:
            print(f"note: {r.failed} of {r.episodes} episodes of {r.env} crashed and count as "
                  "failures (see the warnings above)", file=sys.stderr)
    if args.samples_per_seed > 1 and not any(samples_differ(r.trajectories) for r in results):
        print(f"note: the {args.samples_per_seed} samples of every seed played the same actions "
              f"({args.agent} did not sample: an oracle, greedy decoding or temperature 0), so "
              f"pass@k equals pass@1 here", file=sys.stderr)
    if args.json:
        _write_json(args.json, [r.to_dict() for r in results])
    if args.save_trajectories:
        save_jsonl((t for r in results for t in r.trajectories), args.save_trajectories)
        print(f"wrote {args.save_trajectories}", file=sys.stderr)
    return 0


#: An object or list holding no other: put on one line (JSON strings hold no raw newline).
_FLAT_JSON = re.compile(r"([\[{])\n\s*([^\[\]{}]*?)\n\s*([\]}])")


def _write_json(path: str, data: Any) -> None:
    """Indented JSON, with each innermost object or list (an episode, an interval) on one
    line, so per-episode results stay readable."""
    text = json.dumps(data, indent=2)
    text = _FLAT_JSON.sub(lambda m: m[1] + " ".join(x.strip() for x in m[2].split("\n")) + m[3], text)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(f"\nwrote {path}", file=sys.stderr)


def _check_writable(option: str, path: str | None) -> None:
    """Raise :class:`ConfigError` unless ``path`` can be written (its folder exists and is
    writable; the file, if there, is a writable file)."""
    import os
    from pathlib import Path

    if not path:
        return
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise ConfigError(f"{option} {path}: is a directory; give a file name")
    if not folder.is_dir():
        raise ConfigError(f"{option} {path}: folder {folder} does not exist")
    if not os.access(target if target.exists() else folder, os.W_OK):
        raise ConfigError(f"{option} {path}: not writable")


# ---------------------------------------------------------------------------- compare
def cmd_compare(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from turnrl.compare import (
        EvalTarget,
        build_agent,
        choose_target,
        compare_records,
        resolve_side,
        side_records,
    )
    from turnrl.evaluate import check_pass_at, resolve_target

    _check_writable("--json", args.json)
    check_pass_at(args.samples_per_seed, [])
    if args.resamples < 1:
        raise ConfigError(f"--resamples must be >= 1, got {args.resamples}")
    env_kwargs = _parse_env_args(args.env_arg)
    if not args.target and (args.episodes is not None or env_kwargs):
        raise ConfigError("--episodes and --env-arg go with --target")
    target = EvalTarget(args.target, args.episodes, args.seed, env_kwargs) if args.target else None
    sides = (resolve_side(args.a, "A"), resolve_side(args.b, "B"))
    where = choose_target(*sides, target)
    total = 0
    if where is not None:  # a bad target fails here, before any model loads
        pairs = resolve_target(where.target, episodes=where.episodes, seed=where.seed,
                               env_kwargs=dict(where.env_kwargs))
        total = sum(len(seeds) for _, seeds in pairs) * args.samples_per_seed
    agents = [build_agent(s, seed=args.seed) if s.plays else None for s in sides]
    records = []
    for label, side, agent in zip("AB", sides, agents, strict=True):
        with tqdm(total=total, desc=f"play {label} {side.spec} on {where.target if where else ''}",
                  unit="ep", file=sys.stderr, disable=args.quiet or not side.plays) as bar:
            records.append(side_records(side, agent, where, samples_per_seed=args.samples_per_seed,
                                        num_envs=args.num_envs, on_episode_end=lambda _t: bar.update(1)))
    result = compare_records(*records, a_label=args.a, b_label=args.b, resamples=args.resamples)
    for label, side in zip("AB", sides, strict=True):
        how = {"results": "results file", "run": "run directory, final_model played",
               "agent": "agent, played"}[side.kind]
        print(f"{label}: {side.spec} ({how})")
    if where is not None:
        print(f"played on {where.describe()}, {args.samples_per_seed} sample(s) per seed")
    print(f"B - A: B's success rate minus A's over paired episodes; 95% CI: paired bootstrap "
          f"over seeds ({args.resamples} resamples); p: exact McNemar\n")
    print(_format_comparison(result))
    for label, unpaired in (("A", result.unpaired_a), ("B", result.unpaired_b)):
        if unpaired:
            shown = ", ".join(f"{env} seed {seed} sample {n}" for env, seed, n in unpaired[:5])
            more = f" and {len(unpaired) - 5} more" if len(unpaired) > 5 else ""
            print(f"note: {len(unpaired)} episodes of {label} have no partner and are left "
                  f"out: {shown}{more}", file=sys.stderr)
    if args.json:
        _write_json(args.json, result.to_dict())
    return 0


def _format_comparison(result: Any) -> str:
    header = ["env", "pairs", "A", "B", "B - A", "95% CI", "A only", "B only", "McNemar p"]
    rows = []
    for s in [*result.envs, result.overall]:
        low, high = s.ci95
        rows.append([s.env, str(s.pairs), f"{s.success_a:.1%}", f"{s.success_b:.1%}",
                     f"{s.difference:+.1%}", f"[{low:+.1%}, {high:+.1%}]", str(s.a_only),
                     str(s.b_only), f"{s.mcnemar_p:.3g}"])
    return "\n".join(_columns(header, rows))


# ---------------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from transformers.utils import logging as hf_logging

    from turnrl.trainer import Trainer, load_config

    hf_logging.disable_progress_bar()  # weight-loading bars would bury turnrl's own progress
    if args.config and "=" in args.config and not Path(args.config).exists():
        args.overrides, args.config = [args.config, *args.overrides], None  # only overrides
    if args.resume:
        if not Path(args.resume).is_dir():
            raise ConfigError(f"--resume {args.resume}: no such run directory")
        config_path = args.config or f"{args.resume}/config.yaml"
        overrides = [*args.overrides, f"run_dir={args.resume}"]
        trainer = Trainer(load_config(config_path, overrides), resume=True)
    else:
        if not args.config:
            raise ConfigError("give a config file (e.g. configs/quickstart.yaml) or --resume RUN_DIR")
        trainer = Trainer(load_config(args.config, args.overrides))
    results = trainer.fit()
    if not trainer.dist.is_main:  # one of several training processes: rank 0 reports
        return 0
    print(_format_phases(results))
    if not args.no_plot:
        from turnrl.trainer.logging import plot_run

        written = plot_run(trainer.run_dir)
        print(f"\nplots: {', '.join(str(p) for p in written)}", file=sys.stderr)
    print(f"run directory: {trainer.run_dir}", file=sys.stderr)
    return 0


def _format_phases(results: dict[str, dict[str, float]]) -> str:
    """Held-out success per phase (before / after SFT / after RL), overall and per env."""
    keys = sorted({k for m in results.values() for k in m if k.endswith("/success")})
    header = ["phase"] + [k.removeprefix("eval/").removesuffix("/success") or "all" for k in keys]
    header = [h if h != "success" else "all" for h in header]
    rows = [header]
    for phase, metrics in results.items():
        row = [phase]
        for k in keys:
            v = metrics.get(k)
            lo = metrics.get(k.replace("/success", "/success_ci_low"))
            hi = metrics.get(k.replace("/success", "/success_ci_high"))
            row.append("-" if v is None else f"{v:.0%} [{lo:.0%}, {hi:.0%}]")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "held-out success rate (95% CI):\n" + "\n".join(lines)


def cmd_plot(args: argparse.Namespace) -> int:
    from turnrl.trainer.logging import plot_run

    written = plot_run(args.run_dir, args.out)
    if not written:
        print("no metrics to plot", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from turnrl.viewer.report import serve, write_report

    path = write_report(args.run_dir, args.out, args.step)
    print(path)
    if args.serve:
        serve(path, args.port)
    return 0


# ---------------------------------------------------------------------------- main
def _agents_help() -> str:
    """``--agent``'s help: every registered agent (plugins included) with its description."""
    from turnrl.agent_registry import list_agents

    agents = " | ".join(f"{a.usage} ({a.description})" for a in list_agents())
    return f"agent (default: random; --seed seeds those that draw random numbers): {agents}".replace(
        "%", "%%")


def _add_eval_parser(sub: Any) -> None:
    """The ``eval`` subcommand's arguments."""
    p = sub.add_parser("eval", help="evaluate an agent's success rate on an env or suite")
    p.add_argument("target", help="environment id or suite name (see `turnrl envs`)")
    p.add_argument("--agent", default="random", help=_agents_help())
    p.add_argument("--base-url", help="openai agent: API root, e.g. http://127.0.0.1:8000/v1 "
                   "(default: $OPENAI_BASE_URL, else api.openai.com)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="openai agent: environment variable holding the API key")
    p.add_argument("--concurrency", type=int, default=8, help="openai agent: requests in flight")
    p.add_argument("--max-tokens", type=int, default=256, help="openai agent: reply budget")
    p.add_argument("--episodes", type=int, default=None,
                   help="episodes per env (suite default: all eval seeds; env default: 10)")
    p.add_argument("--seed", type=int, default=0,
                   help="first reset seed for an env id; seeds the agent too")
    p.add_argument("--num-envs", type=int, default=8, help="environments in flight at once")
    p.add_argument("--mode", choices=("lockstep", "async"), default="lockstep",
                   help="lockstep: one batched reply per turn for all envs; async (openai "
                        "agent): each episode steps as soon as its own reply arrives")
    p.add_argument("--env-pool", choices=("local", "subprocess", "ray"), default="local",
                   help="where the envs run: this process, worker processes, or Ray actors")
    p.add_argument("--envs-per-worker", type=int, default=1,
                   help="envs per worker process / Ray actor (subprocess and ray pools)")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster to join for --env-pool ray (default: a local Ray)")
    p.add_argument("--env-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword for the env, or for every env of a suite (e.g. max_turns=30; "
                   "repeatable; values read as YAML)")
    p.add_argument("--samples-per-seed", type=int, default=1, metavar="N",
                   help="play every seed (game) N times; token policies then sample (at "
                        "their temperature) instead of decoding greedily")
    p.add_argument("--pass-at", type=int, action="append", default=[], metavar="K",
                   help="report pass@K (repeatable; needs K <= --samples-per-seed): the "
                        "unbiased estimator, averaged over seeds, 95%% bootstrap CI over seeds")
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature for agents that take one (hf, openai)")
    p.add_argument("--json", metavar="FILE", help="write results as JSON (with every "
                   "episode's seed and outcome, for `turnrl compare`)")
    p.add_argument("--save-trajectories", metavar="FILE", help="write episodes as JSONL")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)


def _add_compare_parser(sub: Any) -> None:
    """The ``compare`` subcommand's arguments."""
    p = sub.add_parser(
        "compare", help="paired comparison of two agents, runs or results files on the same seeds",
        description="Pairs A's and B's episodes by (env, seed, sample) and prints, per env and "
        "overall, both success rates, the difference B - A with a paired bootstrap 95% CI "
        "(seeds resampled) and the exact McNemar p-value.")
    p.add_argument("a", metavar="A", help="a results file (`turnrl eval --json` or "
                   "--save-trajectories output), a run directory (its final_model is played "
                   "with the run's eval settings) or an agent spec (random, expert, hf:MODEL, ...)")
    p.add_argument("b", metavar="B", help="the same kinds as A; differences are B - A")
    p.add_argument("--target", help="env id or suite the agents and runs play (default for "
                   "run directories: the run's own eval envs and seeds)")
    p.add_argument("--episodes", type=int, default=None, help="seeds per env, as for eval")
    p.add_argument("--seed", type=int, default=0,
                   help="first reset seed for an env id; seeds the agents too")
    p.add_argument("--env-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword for the env(s) of --target (repeatable)")
    p.add_argument("--samples-per-seed", type=int, default=1, metavar="N",
                   help="episodes per seed for the sides that play (pairs by sample index)")
    p.add_argument("--num-envs", type=int, default=8, help="environments in flight at once")
    p.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples")
    p.add_argument("--json", metavar="FILE", help="write the comparison as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_compare)


def build_parser() -> argparse.ArgumentParser:
    from turnrl import __version__

    parser = argparse.ArgumentParser(
        prog="turnrl",
        description="Train and evaluate LLM agents on multi-turn text and code environments.",
    )
    parser.add_argument("--version", action="version", version=f"turnrl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("envs", help="list registered environments and suites")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_envs)

    p = sub.add_parser("play", help="play an environment in the terminal")
    p.add_argument("env_id", help="environment id, e.g. turnrl/TextWorld-v0")
    p.add_argument("--seed", type=int, default=0, help="reset seed (picks the game)")
    p.add_argument("--env-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword for the env (repeatable; values read as YAML)")
    p.set_defaults(func=cmd_play)

    _add_eval_parser(sub)
    _add_compare_parser(sub)

    from turnrl.trainer import algorithms

    p = sub.add_parser(
        "train", help="train a policy from a YAML config",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="algorithms (algorithm.name):\n" + "\n".join(
            "  " + line for line in algorithms.describe().splitlines()))
    p.add_argument("config", nargs="?", help="YAML config, e.g. configs/quickstart.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. optim.lr=3e-5 rollout.episodes_per_update=32")
    p.add_argument("--resume", metavar="RUN_DIR", help="resume from the run's last checkpoint")
    p.add_argument("--no-plot", action="store_true", help="skip writing PNG curves at the end")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("plot", help="write PNG curves of a run's metrics")
    p.add_argument("run_dir", help="a run directory (holds metrics.jsonl)")
    p.add_argument("--out", help="output directory (default RUN_DIR/plots)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("view", help="write a static HTML report of a run: curves, episodes, "
                       "and training samples token by token with a mask audit")
    p.add_argument("run_dir", help="a run directory (holds metrics.jsonl)")
    p.add_argument("--step", type=int, help="only the episodes and samples of this update")
    p.add_argument("--out", help="output file (default RUN_DIR/report.html)")
    p.add_argument("--serve", action="store_true", help="also serve it on localhost")
    p.add_argument("--port", type=int, default=8765, help="port for --serve")
    p.set_defaults(func=cmd_view)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except TurnRLError as exc:
        print(f"turnrl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
