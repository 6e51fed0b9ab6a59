"""Run-directory outputs: metrics.jsonl, TensorBoard events, sample episodes, plots."""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm import tqdm

from turnrl.trainer.advantages import spread_to_tokens
from turnrl.trainer.estimators import TurnAdvantages
from turnrl.trainer.learner import Scored
from turnrl.trajectory import Sample, Trajectory
from turnrl.viewer.audit import token_sources

__all__ = ["MetricsLogger", "read_metrics", "plot_run", "PLOT_GROUPS", "token_records",
           "update_metrics", "phase", "episode_bar"]


class MetricsLogger:
    """Appends one JSON line per update to ``metrics.jsonl`` and mirrors scalars to
    TensorBoard (``tensorboard/``) when the ``tensorboard`` package is installed.

    ``enabled=False`` writes nothing (every training process but the first one).
    """

    def __init__(self, run_dir: str | Path, *, enabled: bool = True,
                 config: dict[str, Any] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self.samples_path = self.run_dir / "samples.jsonl"
        self.start = time.time()
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if config is not None:  # the run's settings, as resolved (presets filled in)
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        except ImportError:  # tensorboard is optional
            self.writer = None

    def log(self, step: int, metrics: dict[str, float], *, phase: str = "train") -> None:
        if not self.enabled:
            return
        row = {"step": step, "phase": phase, "time_s": round(time.time() - self.start, 3)}
        for key, value in metrics.items():
            value = float(value)
            row[key] = value if math.isfinite(value) else None
            if self.writer is not None and math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            self.writer.flush()

    def log_episodes(self, step: int, trajectories: Iterable[Trajectory], *, phase: str) -> None:
        if not self.enabled:
            return
        with open(self.samples_path, "a", encoding="utf-8") as f:
            for i, traj in enumerate(trajectories):
                row = {"step": step, "phase": phase, "episode": i, **traj.to_dict()}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")

    def log_tokens(self, step: int, records: Iterable[dict[str, Any]], *, phase: str = "train") -> None:
        """Append token-level sample records to ``tokens.jsonl`` (read by ``turnrl view``)."""
        if not self.enabled:
            return
        with open(self.run_dir / "tokens.jsonl", "a", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps({"step": step, "phase": phase, **record}, ensure_ascii=False) + "\n")

    def offsets(self) -> dict[str, int]:
        """Size of each log file now (saved with a checkpoint; see :meth:`truncate`)."""
        return {name: (self.run_dir / name).stat().st_size for name in _LOG_FILES
                if (self.run_dir / name).exists()}

    def truncate(self, offsets: dict[str, int] | None) -> None:
        """Cut each log file back to its size at a checkpoint: a resumed run replays what
        came after, so its rows must not be there twice."""
        if not self.enabled or offsets is None:
            return
        for name in _LOG_FILES:
            path = self.run_dir / name
            if path.exists():
                size = offsets.get(name, 0)
                if path.stat().st_size > size:
                    with open(path, "r+b") as f:
                        f.truncate(size)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


#: The files a resumed run cuts back to their size at its checkpoint.
_LOG_FILES = ("metrics.jsonl", "samples.jsonl", "tokens.jsonl")


@contextlib.contextmanager
def phase(label: str, *, enabled: bool = True) -> Iterator[None]:
    """Say on stderr that a phase which may take a while starts, and how long it took."""
    start = time.time()
    if enabled:
        print(f"{label} ...", file=sys.stderr, flush=True)
    yield
    if enabled:
        print(f"{label}: done in {time.time() - start:.1f} s", file=sys.stderr, flush=True)


def episode_bar(total: int, desc: str, *, enabled: bool = True) -> Any:
    """A progress bar counting finished episodes (pass ``bar.update`` via
    ``on_episode_end``); close it when the phase ends."""
    return tqdm(total=total, desc=desc, unit="ep", disable=not enabled, leave=False)


def token_records(trajectories: Sequence[Trajectory], samples: Sequence[Sample], *,
                  train_logprobs: Sequence[torch.Tensor], values: Sequence[torch.Tensor] | None,
                  turn_advantages: torch.Tensor, tokenizer: Any, context: str,
                  episodes: int) -> list[dict[str, Any]]:
    """Token-level view of the samples of the first ``episodes`` episodes, for
    ``tokens.jsonl`` and ``turnrl view``: ids and their text, where each token came from,
    loss mask, turn, rollout and trainer logprobs, advantages, value reads.

    Args:
        train_logprobs: ``[S_i]`` per sample, the trainer's logprobs before the update.
        values: ``[K_i]`` per sample, the critic's reads (None without a critic).
        turn_advantages: ``[N, T]`` per-turn advantages of the batch.
    """
    keep = set(range(min(episodes, len(trajectories))))
    records = []
    for i, s in enumerate(samples):
        if s.trajectory not in keep:
            continue
        traj = trajectories[s.trajectory]
        adv = spread_to_tokens(turn_advantages[s.trajectory][None], torch.tensor([s.turn_index]))[0]
        records.append({
            "env": traj.entry or traj.env_id, "seed": traj.seed, "episode": s.trajectory,
            "won": traj.won, "return": traj.total_return, "input_ids": s.input_ids,
            "tokens": [tokenizer.decode([t]) for t in s.input_ids],
            "sources": token_sources(traj, s, context),
            "loss_mask": s.loss_mask, "turn_index": s.turn_index,
            "rollout_logprobs": [round(x, 5) for x in s.rollout_logprobs],
            "train_logprobs": [round(float(x), 5) for x in train_logprobs[i]],
            "advantages": [round(float(x), 5) for x in adv],
            "value_positions": s.value_positions, "value_turns": s.value_turns,
            "values": [round(float(x), 5) for x in values[i]] if values is not None else None,
        })
    return records


def update_metrics(samples: list[Sample], scored: Scored, adv: TurnAdvantages, t_rollout: float,
                    t_update: float, *, epochs: int, with_values: bool) -> dict[str, float]:
    """Advantage, value (``with_values``), rollout-vs-trainer logprob and throughput
    metrics of one RL update; ``epochs`` passes over ``samples`` took ``t_update`` s."""
    real = adv.turn_mask > 0
    n_tokens = sum(sum(s.loss_mask) for s in samples)
    out = {
        "adv/mean": float(adv.advantages[real].mean()),
        "adv/abs_mean": float(adv.advantages[real].abs().mean()),
        "perf/rollout_s": t_rollout, "perf/update_s": t_update,
        "perf/action_tokens": float(n_tokens),
        "perf/train_tokens_per_s": sum(len(s) for s in samples) * epochs / max(t_update, 1e-9),
        "perf/rollout_tokens_per_s": n_tokens / max(t_rollout, 1e-9),
        "logprob/rollout_vs_train_mean_abs": scored.mismatch_mean,
        "logprob/rollout_vs_train_max_abs": scored.mismatch_max,
    }
    if with_values:
        out["value/mean"] = float(adv.values[:, :-1][real].mean())
    return out


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a turnrl run directory?")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


#: One PNG per group: (file stem, title, metric-name fragments to plot).
PLOT_GROUPS = [
    ("success", "success rate", ("success",)),
    ("return", "episode return", ("return",)),
    ("kl", "KL to reference / old policy", ("kl",)),
    ("entropy", "policy entropy", ("entropy",)),
    ("value_loss", "value loss", ("value_loss",)),
    ("loss", "losses", ("policy_loss", "sft_loss")),
]


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write one PNG per metric group of a run; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    out = Path(out_dir) if out_dir else Path(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, title, fragments in PLOT_GROUPS:
        keys = sorted({k for r in rows for k in r if any(f in k for f in fragments)
                       and "_ci_" not in k and isinstance(r.get(k), (int, float))})
        keys = [k for k in keys if k not in ("step", "time_s")]
        if not keys:
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        for key in keys:
            train = [(r["step"], r[key]) for r in rows
                     if not r["phase"].startswith("eval:") and isinstance(r.get(key), (int, float))]
            if train:
                xs, ys = zip(*train, strict=True)
                ax.plot(xs, ys, label=key, alpha=0.8, marker="o" if len(train) < 30 else None)
            # evaluations: one labelled point per phase (before, after_sft, after_rl, ...)
            evals = [r for r in rows if r["phase"].startswith("eval:")
                     and isinstance(r.get(key), (int, float))]
            if evals:
                ax.scatter([r["step"] for r in evals], [r[key] for r in evals], marker="D",
                           s=36, zorder=3, label=f"{key} (held-out)")
                for r in evals:
                    low = r.get(key + "_ci_low")
                    high = r.get(key + "_ci_high")
                    if low is not None and high is not None:
                        ax.vlines(r["step"], low, high, alpha=0.5)
                    ax.annotate(r["phase"].split(":", 1)[1], (r["step"], r[key]),
                                textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_title(title)
        ax.set_xlabel("update")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"{stem}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
