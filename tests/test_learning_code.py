"""benchmarks/learning_code.py --quick runs end to end: both arms (with and without the
tool) are played before training, after SFT and after RL, RL is paired against SFT, the
CodeRepair baselines are played, and markdown() renders the results JSON (what
benchmarks/report.py puts into BENCHMARKS.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import learning_code as bench  # noqa: E402


@pytest.mark.slow
def test_quick_mode_writes_results_and_markdown(tmp_path):
    from turnrl.sandbox import SandboxUnavailable, make_sandbox

    try:
        make_sandbox("bubblewrap")
    except SandboxUnavailable as exc:
        pytest.skip(f"bubblewrap sandbox unavailable: {exc}")
    out = tmp_path / "code.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "learning_code.py"), "--quick",
                    "--out", str(out)], check=True, cwd=ROOT, timeout=300)
    report = json.loads(out.read_text())
    assert report["quick"] and report["eval_seeds"] == [100000, 100004]
    assert list(report["runs"]) == list(bench.ARMS)
    for arm, run in report["runs"].items():
        assert run["rl_episodes"] > 0 and run["sft_samples"] > 0 and len(run["curve"]) == 2
        for phase in bench.PHASES:
            p = run[phase]
            assert p["episodes"] == 4 and len(p["records"]) == 4
            assert p["ci95"][0] <= p["success"] <= p["ci95"][1]
            assert 0 <= p["answer_from_tool"] <= 1 and p["code_calls_per_episode"] >= 0
        if arm == "no_tool":
            assert run["max_code_calls"] == 0
            assert all(run[p]["code_calls_per_episode"] == 0 for p in bench.PHASES)
    paired = report["analysis"]["rl_vs_sft"]
    assert set(paired) == set(bench.ARMS) and paired["tool"]["pairs"] == 4
    assert set(report["analysis"]["goal"]) == {"text", "met", "difference", "ci95"}
    repair = report["code_repair"]
    assert repair["expert"]["success"] == 1.0 and repair["scripted_code"]["success"] == 0.0
    text = bench.markdown(report)
    assert "| tool | after rl |" in text and "no_tool" in text and "CodeRepair-v0" in text
    assert out.with_suffix(".png").stat().st_size > 0
