"""``benchmarks/gpu.py --dry-run`` runs the GPU benchmark's code on CPU at toy size (the
ALFWorld recipe, vLLM rollouts, three updates), so the script cannot rot between the
sessions that have a GPU. It runs in its own process: vLLM's CPU backend pins the threads
of the process it runs in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("vllm")


@pytest.mark.slow
def test_gpu_benchmark_dry_run(tmp_path):
    out = tmp_path / "gpu-dryrun.json"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--dry-run",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and len(report["updates"]) == 3
    assert report["rollout_tokens_per_s"] > 0 and report["update_tokens_per_s"] > 0
    for update in report["updates"]:
        assert update["rollout/turns"] == 2.0  # the dry run's env.kwargs reach the suite
        assert update["perf/action_tokens"] > 0
        # The vLLM sampler and the trainer agree on the sampled tokens' logprobs up to
        # bfloat16 rounding (the recipe's compute dtype: vLLM runs all of the model in
        # bfloat16, the trainer its backbone; 1.1e-3 measured). Stale or wrong synced
        # weights would differ by far more.
        assert update["logprob/rollout_vs_train_max_abs"] < 5e-2
    assert "| Qwen2 toy" in proc.stdout
