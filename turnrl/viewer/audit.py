"""Where each token of a training sample came from, and a check of its loss mask.

:func:`token_sources` walks the trajectory on its own (prompt, then each turn's sampled
action and the observation that followed) instead of trusting the sample builder, so a
wrong mask shows up as a disagreement. Only tokens the policy sampled for a trained turn
may carry loss.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from turnrl.trajectory import ContextMode, Sample, Trajectory, parse_context

__all__ = ["token_sources", "mask_audit", "TRAINED"]

#: The only source whose tokens belong in the loss.
TRAINED = "action"


def token_sources(traj: Trajectory, sample: Sample, context: str | ContextMode = "full") -> list[str]:
    """One label per token of ``sample``: ``prompt`` (system and task), ``history`` (the
    conversation as the template re-rendered it, ``reasoning_history: strip``), ``action``
    (sampled for a turn this sample trains), ``context-action`` (an earlier action shown as
    context), ``observation`` or ``tool`` (what the env said back, with the chat
    template's turn markers)."""
    mode = parse_context(context)
    trained = sample.value_turns[:-1]  # the last value read is the state after them
    start = trained[0] if trained else sample.value_turns[0]
    first = 0 if mode.kind == "full" else max(0, start - mode.k)
    sources = ["prompt"] * len(traj.prompt_token_ids or [])
    own = traj.turns[start].context_ids if start < traj.num_turns else None
    if own is not None:  # history as the template rewrote it (reasoning_history=strip)
        sources, first = ["history"] * len(own), start
    for t in range(first, start + len(trained)):
        turn = traj.turns[t]
        sources += [TRAINED if t >= start else "context-action"] * len(turn.token_ids or [])
        role = "tool" if turn.info.get("obs_role") == "tool" else "observation"
        sources += [role] * len(turn.obs_token_ids or [])
    return sources


def mask_audit(sources: list[str], loss_mask: list[int]) -> dict[str, Any]:
    """Masked / unmasked token counts per source, and warnings for any non-action token
    in the loss or any sampled action token left out of it."""
    warnings = []
    if len(sources) != len(loss_mask):
        warnings.append(f"the sample has {len(loss_mask)} mask entries for {len(sources)} tokens")
    counts: dict[str, dict[str, int]] = {}
    for source, m in zip(sources, loss_mask, strict=False):
        c = counts.setdefault(source, {"in_loss": 0, "masked": 0})
        c["in_loss" if m else "masked"] += 1
    leaked = Counter(s for s, m in zip(sources, loss_mask, strict=False) if m and s != TRAINED)
    dropped = sum(1 for s, m in zip(sources, loss_mask, strict=False) if not m and s == TRAINED)
    for source, n in sorted(leaked.items()):
        warnings.append(f"{n} {source} token(s) are in the loss: only sampled action tokens may be")
    if dropped:
        warnings.append(f"{dropped} sampled action token(s) are masked out of the loss")
    return {"counts": counts, "warnings": warnings, "ok": not warnings}
