"""The SQLite bench history: recording sessions and comparing them against the noise."""

from __future__ import annotations

import numpy as np
import pytest

from edgekd.bench import history, stats
from edgekd.bench.result import BenchResult
from edgekd.errors import BenchError


def _result(name: str, center_us: float, seed: int, rounds: list[float]) -> BenchResult:
    rng = np.random.default_rng(seed)
    ns = (rng.normal(center_us, center_us * 0.02, 3000) * 1000).astype(np.int64).tolist()
    return BenchResult(artifact={"name": name, "sha256": name * 4, "format": "onnx", "precision": "fp32"},
                       device={"name": "host"}, settings={}, latency_us=stats.summarize(ns),
                       round_p50_us=rounds, latencies_ns=ns)


def test_compare_flags_a_real_slowdown_and_not_noise(tmp_path):
    db = tmp_path / "h.sqlite"
    a = history.record([_result("m", 10.0, 0, [10.0, 10.1]), _result("n", 5.0, 1, [5.0, 5.05])], db)
    b = history.record([_result("m", 20.0, 2, [20.0, 20.2]), _result("n", 5.01, 3, [5.0, 5.05])], db)
    assert [s["session"] for s in history.sessions(db)] == [b, a]
    rows = {r["artifact"]: r for r in history.compare(path=db)}  # newest vs the one before on the same device
    assert rows["m"]["significant"] and 95 < rows["m"]["p50_change_pct"] < 105
    assert not rows["n"]["significant"]


def test_a_change_smaller_than_the_round_spread_is_within_noise(tmp_path):
    db = tmp_path / "h.sqlite"
    before, after = _result("m", 10.0, 0, [10.0, 13.0]), _result("m", 11.0, 1, [11.0, 11.2])
    a, b = history.record([before], db), history.record([after], db)
    (row,) = history.compare(a, b, path=db)
    assert stats.compare(before.latencies_ns, after.latencies_ns)["significant"]  # calls as samples: a "change"…
    low, high = row["p50_change_pct_ci95"]
    assert low < 0 < high and not row["significant"]  # …the rounds, fresh processes, say noise
    assert row["round_spread_pct"] == pytest.approx(30.0) and row["rounds"] == [2, 2]


def test_one_round_gives_no_verdict(tmp_path):
    db = tmp_path / "h.sqlite"
    a = history.record([_result("m", 10.0, 0, [10.0])], db)
    b = history.record([_result("m", 20.0, 1, [20.0, 20.1])], db)
    (row,) = history.compare(a, b, path=db)
    assert row["p50_change_pct_ci95"] is None and not row["significant"]


def test_missing_history_and_unknown_session_are_clear_errors(tmp_path):
    with pytest.raises(BenchError, match="no bench history"):
        history.sessions(tmp_path / "none.sqlite")
    db = tmp_path / "h.sqlite"
    history.record([_result("m", 10.0, 0, [10.0])], db)
    with pytest.raises(BenchError, match="no earlier session"):
        history.compare(path=db)
    with pytest.raises(BenchError, match="no bench session 'nope'"):
        history.compare("nope", None, path=db)
    assert not (tmp_path / "none.sqlite").exists()


def test_over_time_splits_calls_into_equal_wall_time_windows():
    from edgekd.bench.harness import over_time

    calls = [1000] * 5000 + [2000] * 2500  # the device slows to half speed halfway through
    trend = over_time(calls, windows=2)
    assert [w["p50_us"] for w in trend["windows"]] == [1.0, 2.0] and trend["last_over_first"] == 2.0
    assert over_time([1000] * 5)["windows"] == []
