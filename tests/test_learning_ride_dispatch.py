"""benchmarks/learning_ride_dispatch.py --quick runs end to end: every run trains, plays the
held-out days of both cities, the baselines play the same days, and markdown() renders
the results JSON (what benchmarks/report.py puts into BENCHMARKS.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import learning_ride_dispatch as bench  # noqa: E402

pytest.importorskip("scipy")


@pytest.mark.slow
def test_quick_mode_writes_results_and_markdown(tmp_path):
    out = tmp_path / "ride.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "learning_ride_dispatch.py"),
                    "--quick", "--out", str(out)], check=True, cwd=ROOT, timeout=300)
    report = json.loads(out.read_text())
    assert report["quick"] and report["eval_seeds"] == {"mdpod": [100000, 100001], "city": [100000, 100001]}
    assert [r["name"] for r in report["runs"]] == list(bench.RUNS)
    for run in report["runs"]:
        assert run["curve"] and run["rl_episodes"] > 0
        assert set(run["after_sft"]) == {"mdpod"} and set(run["after_rl"]) == set(bench.CITIES)
        for phase in ("after_sft", "after_rl"):
            assert all(len(days) == 2 and "gmv" in days[0] for days in run[phase].values())
    table = report["analysis"]["table"]
    assert set(table) == {"driver", "dispatcher"}
    for view in table.values():
        for city in bench.CITIES:
            rows = view[city]
            assert {f"dispatch_{p}" for p in bench.BASELINES} <= set(rows)
            for row in rows.values():
                assert row["gmv_ci95"][0] <= row["gmv"] <= row["gmv_ci95"][1]
                assert 0 <= row["answer_rate"] <= 1
    trained = table["dispatcher"]["mdpod"]["dispatcher_grpo (after rl)"]
    assert set(trained["vs_greedy"]) == {"difference", "ci95", "b_won", "a_won", "ties"}
    assert set(report["analysis"]["fairness"]) == set(bench.CITIES)
    assert len(report["goals"]) == 2
    text = bench.markdown(report)
    assert "dispatch_greedy" in text and "driver_ospo_fair" in text and "Fairness term" in text
    assert out.with_suffix(".png").stat().st_size > 0
