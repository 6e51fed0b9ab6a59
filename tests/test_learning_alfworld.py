"""``benchmarks/learning_alfworld.py --quick`` runs the long-horizon study's whole pipeline
(tiny model from env text, SFT, RL from the SFT model, held-out evaluation, paired
comparisons, table and curves) with tiny budgets, so the script cannot rot between the
sessions that run it for real."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "learning_alfworld.py"

pytest.importorskip("alfworld")


def _module():
    spec = importlib.util.spec_from_file_location("learning_alfworld", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_study_runs_end_to_end(tmp_path):
    out = tmp_path / "study.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--algos", "gigpo", "grpo",
                           "--out", str(out), "--work", str(tmp_path / "work")],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["studies"]) == {"alfworld", "textworld"} and report["quick"] is True
    alf = report["studies"]["alfworld"]
    assert set(alf["table"]) == {"sft", "gigpo", "grpo"}
    # held-out: every ALFWorld task type of the unseen suite, the same games for every method
    assert len(alf["table"]["gigpo"]["per_env"]) == 6
    games = {a: sorted((r["env"], r["seed"]) for r in run["heldout"]["records"])
             for a in ("sft", "gigpo", "grpo") for run in alf["runs"] if run["algo"] == a}
    assert games["sft"] == games["gigpo"] == games["grpo"] and len(games["sft"]) == 6
    assert all(r["curve"] and r["rl_episodes"] == 16 for r in alf["runs"] if r["algo"] != "sft")
    comparison = alf["comparisons"]["gigpo vs grpo"]
    assert comparison["overall"]["pairs"] == 6 and comparison["a"] == "grpo"
    tw = report["studies"]["textworld"]
    assert tw["table"]["grpo"]["per_env"].keys() == {"turnrl/TextWorld-v0"}
    assert (tmp_path / "study.png").stat().st_size > 0
    text = _module().markdown(report)
    assert "| gigpo |" in text and "pick heat then place in recep" in text and "McNemar" in text
    # a rerun over the same --work reuses the finished runs
    again = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--algos", "gigpo", "grpo",
                            "--out", str(tmp_path / "again.json"), "--work", str(tmp_path / "work")],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "again.json").read_text())["studies"]["alfworld"]["runs"] == alf["runs"]
