"""The report's unstable-timing findings: one per kind of instability, each row's measured value listed once.

On a busy machine every row had the same two or three reasons, written out in full for each row: twelve
artifacts made one finding of some 2,000 characters that said the same thing twelve times.
"""

from __future__ import annotations

import numpy as np

from edgekd.bench import stats
from edgekd.bench.report import _unstable_findings, build_summary

from test_report_edges import _parity, make_run


def _preempted(p50_us: float, seed: int) -> dict:
    """Runner fields of calls on a core shared with a busy process: rare ~4 ms calls that hold much of the time."""
    rng = np.random.default_rng(seed)
    ns = (p50_us * 1000 * (1 + 0.01 * rng.standard_normal(20000))).astype(np.int64)
    ns[::250 + seed] = 4_000_000
    return {"latency_us": stats.summarize(ns), "round_p50_us": [p50_us] * 3, "latencies_ns": ns.tolist()}


def test_rows_preempted_alike_share_one_finding_with_each_rows_share(tmp_path):
    fields = {"teacher-onnx-fp32": _preempted(40.0, 0), "student-onnx-fp32": _preempted(4.0, 7)}
    shares = {name: f["latency_us"]["tail_time_share"] for name, f in fields.items()}
    assert all(share > stats.MAX_TAIL_TIME_SHARE for share in shares.values())
    run = make_run(tmp_path / "run", [(name, f, _parity(0.9)) for name, f in fields.items()])
    findings = build_summary(run, recipe={"name": "busy"}, model_metrics={}, class_names=["a", "b"])["findings"]
    preempted = [f for f in findings if "preempted" in f]
    assert len(preempted) == 1, findings
    assert preempted[0].startswith("Unstable timings of 2 artifacts: N of the time was spent in calls > 5x p50")
    assert preempted[0].count("another process shares the core?") == 1
    for name, share in shares.items():
        assert f"{name} {share:.0%}" in preempted[0]


def test_reasons_that_differ_in_more_than_one_number_are_listed_row_by_row():
    cut = "{} timed calls of the 300 asked for: max_seconds ({} s over 3 rounds) came first"
    rows = [{"name": "a", "unstable": True, "unstable_reasons": [cut.format(90, 0.1)]},
            {"name": "b", "unstable": True, "unstable_reasons": [cut.format(80, 0.2)]}]
    assert _unstable_findings(rows) == [f"Unstable timings: a ({cut.format(90, 0.1)}); b ({cut.format(80, 0.2)})."]


def test_the_same_reason_word_for_word_names_its_rows_once_and_a_stable_row_is_left_out():
    tail = "p99/p50 = 2.10 (> 2): heavy tail"
    rows = [{"name": "a", "unstable": True, "unstable_reasons": [tail]},
            {"name": "b", "unstable": True, "unstable_reasons": [tail]},
            {"name": "c", "unstable": False, "unstable_reasons": []},
            {"name": "d", "unstable": True}]
    assert _unstable_findings(rows) == ["Unstable timings: d.", f"Unstable timings: a, b ({tail})."]


def test_a_limit_in_the_wording_is_kept_and_only_the_measured_number_becomes_n():
    noisy = "CV of the 10%-trimmed sample = {} (> 15%): noisy"
    rows = [{"name": "a", "unstable": True, "unstable_reasons": [noisy.format("15.6%")]},
            {"name": "b", "unstable": True, "unstable_reasons": [noisy.format("21.2%")]}]
    assert _unstable_findings(rows) == [
        f"Unstable timings of 2 artifacts: {noisy.format('N')}; N: a 15.6%, b 21.2%."]
