"""benchmarks/learning_stock.py --quick runs end to end: SFT, GRPO with and without the
reflection loop, the held-out test days played by every run and baseline, and markdown()
renders the results JSON (what benchmarks/report.py puts into BENCHMARKS.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import learning_stock as bench  # noqa: E402


@pytest.mark.slow
def test_quick_mode_writes_results_and_markdown(tmp_path):
    out = tmp_path / "stock.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "learning_stock.py"), "--quick",
                    "--out", str(out)], check=True, cwd=ROOT, timeout=300)
    report = json.loads(out.read_text())
    days = bench.QUICK["test_days"]
    assert report["settings"]["eval_split"] == "test" and report["settings"]["test_days"] == days
    table = report["table"]
    assert set(bench.BASELINES) | {"after SFT"} <= set(table)
    assert {f"GRPO, {k.replace('_', ' ')}" for k in bench.RUNS} <= set(table)
    for row in table.values():
        assert row["days"] == days and 0 <= row["accuracy"] <= 1 and -1 <= row["mcc"] <= 1
        assert row["ci95"][0] <= row["accuracy"] <= row["ci95"][1]
        assert row["accuracy"] <= 1 - row["invalid_rate"] + 1e-9  # an invalid reply is wrong
    # a handful of quick-mode days: the oracle at least ties the majority answer
    assert table["oracle"]["accuracy"] >= table["majority"]["accuracy"]
    for kind in bench.RUNS:
        run = report["runs"][kind]
        assert [c["update"] for c in run["curve"]] == list(range(bench.QUICK["updates"] + 1))
        assert run["episodes"] == bench.QUICK["updates"] * report["episodes_per_update"]
    assert report["runs"]["sft"]["episodes"] == bench.QUICK["sft_episodes"]
    assert {(c["a"], c["b"]) for c in report["comparisons"]} >= {("lexicon", "GRPO, reflection"),
                                                                 ("GRPO, no reflection", "GRPO, reflection")}
    text = bench.markdown(report)
    assert "| lexicon |" in text and "GRPO, reflection - lexicon" in text
    assert out.with_suffix(".png").stat().st_size > 0


def test_eval_days_are_the_baselines_test_days_and_validation_is_held_out():
    import yaml

    cfg = yaml.safe_load(bench.CONFIG.read_text())
    assert cfg["env"]["kwargs"]["split"] == "by_seed"
    assert bench.eval_seeds("test", 3) == [100000, 100001, 100002]
    start, stop = bench.VALIDATION_SEEDS
    assert cfg["env"]["train_seeds"][1] <= start  # validation days are not trained on
    assert bench.eval_seeds("validation", 5000) == list(range(start, stop))
