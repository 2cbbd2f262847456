"""edgekd.bench.stats on synthetic latencies: exact numpy agreement, bootstrap behaviour, stability verdicts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgekd.bench import stats


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def quiet_sample(n: int = 5000, p50_us: float = 50.0, seed: int = 0) -> np.ndarray:
    """Like a quiet runner run: tight lognormal around p50 (trimmed CV ~3%), in ns."""
    return np.round(_rng(seed).lognormal(np.log(p50_us * 1e3), 0.03, n)).astype(np.int64)


def test_percentiles_and_moments_match_numpy():
    ns = _rng(1).integers(1_000, 90_000, size=1001)
    s = stats.summarize(ns)
    us = ns / 1e3
    for key, q in (("p50", 50), ("p90", 90), ("p99", 99)):
        assert s[key] == pytest.approx(np.percentile(us, q), rel=1e-12)
    assert s["n"] == 1001
    assert s["mean"] == pytest.approx(us.mean())
    assert s["std"] == pytest.approx(us.std())  # population std, as benchmark_model reports it
    assert s["cv"] == pytest.approx(us.std() / us.mean())
    assert s["min"] == us.min() and s["max"] == us.max()
    assert s["p99_p50"] == pytest.approx(s["p99"] / s["p50"])
    k = int(1001 * 0.1)
    assert s["trimmed_mean"] == pytest.approx(np.sort(us)[k:1001 - k].mean())


def test_ci_contains_p50_and_narrows_with_more_data():
    small = stats.summarize(quiet_sample(200))
    large = stats.summarize(quiet_sample(20000))
    for s in (small, large):
        lo, hi = s["ci95_p50"]
        assert lo <= s["p50"] <= hi
    assert (large["ci95_p50"][1] - large["ci95_p50"][0]) < (small["ci95_p50"][1] - small["ci95_p50"][0])


def test_deterministic_for_a_fixed_seed():
    ns = quiet_sample(777)
    assert stats.summarize(ns, seed=3) == stats.summarize(ns, seed=3)
    assert stats.compare(ns, ns * 2, seed=3) == stats.compare(ns, ns * 2, seed=3)
    assert stats.summarize(ns, seed=3)["ci95_p50"] != stats.summarize(ns, seed=4)["ci95_p50"]


@pytest.mark.parametrize("n", [7, 8, 51, 200])
def test_bootstrap_shortcut_matches_resampling(n):
    """The Beta order-statistic draw is the resampling bootstrap of the median, not an approximation."""
    x = _rng(n).lognormal(0.0, 0.5, n)
    fast = stats.bootstrap_medians(x, _rng(1), 100_000)
    idx = _rng(2).integers(0, n, size=(100_000, n))
    slow = np.median(x[idx], axis=1)
    # Both are discrete distributions over the same few values: compare CDFs (Kolmogorov-Smirnov
    # distance); for 2 x 100k draws the 99.9% noise level is ~0.009.
    grid = np.union1d(fast, slow)
    cdf_fast = np.searchsorted(np.sort(fast), grid, side="right") / fast.size
    cdf_slow = np.searchsorted(np.sort(slow), grid, side="right") / slow.size
    assert np.abs(cdf_fast - cdf_slow).max() < 0.012


def test_constant_sample_is_stable_with_zero_cv():
    s = stats.summarize([3_500] * 1000)
    assert s["cv"] == 0.0 and s["std"] == 0.0 and s["trimmed_cv"] == 0.0
    assert s["ci95_p50"] == [3.5, 3.5]
    assert s["drift"] == 1.0 and s["tail_time_share"] == 0.0
    assert not s["unstable"] and s["unstable_reasons"] == []


def test_quiet_sample_is_stable():
    s = stats.summarize(quiet_sample())
    assert not s["unstable"], s["unstable_reasons"]


def test_heavy_tailed_sample_is_unstable():
    ns = (_rng(5).pareto(1.5, 5000) + 1) * 50_000  # Pareto: p99/p50 ~ 14
    s = stats.summarize(ns)
    assert s["unstable"]
    assert any("p99/p50" in r for r in s["unstable_reasons"])


def test_preempted_run_is_flagged_by_tail_time_share():
    """A core shared with a busy process: rare ~4 ms calls that hold much of the time, p99 untouched."""
    ns = quiet_sample(20000, p50_us=3.5)
    ns[::250] = 4_000_000  # 0.4% of calls
    s = stats.summarize(ns)
    assert s["p99_p50"] < stats.MAX_P99_P50
    assert s["tail_time_share"] > stats.MAX_TAIL_TIME_SHARE
    assert any("preempted" in r for r in s["unstable_reasons"])


def test_level_shift_mid_run_is_flagged_by_drift():
    ns = np.concatenate([quiet_sample(3000, 50.0, seed=1), quiet_sample(3000, 80.0, seed=2)])
    s = stats.summarize(ns)
    assert s["drift"] == pytest.approx(80 / 50, rel=0.05)
    assert any("changed speed" in r for r in s["unstable_reasons"])


def test_a_wide_interval_of_the_median_is_named_as_the_bootstrap_one_of_the_calls():
    """The reason said "95% CI of p50 ±x%", read beside a table whose interval is the rounds' (wider): it is the
    bootstrap interval of the timed calls' median, and says so."""
    s = stats.summarize(_rng(3).uniform(50_000, 150_000, 60))
    reason = next(r for r in s["unstable_reasons"] if "interval" in r)
    assert reason.startswith("the bootstrap 95% interval of the timed calls' median is +-")
    assert "CI of p50" not in reason and s["rel_ci95_half_width"] > stats.MAX_REL_CI_HALF_WIDTH


def test_too_few_samples_is_flagged_and_drift_not_computed():
    s = stats.summarize(quiet_sample(10))
    assert s["drift"] is None
    assert any("samples" in r for r in s["unstable_reasons"])


def test_bad_input_is_rejected():
    with pytest.raises(ValueError):
        stats.summarize([])
    with pytest.raises(ValueError):
        stats.summarize([5, -1])


def test_compare_identical_distributions_is_not_significant():
    a, b = quiet_sample(3000, seed=1), quiet_sample(3000, seed=2)
    c = stats.compare(a, b)
    assert not c["significant"]
    assert c["ratio_ci95"][0] <= 1.0 <= c["ratio_ci95"][1]
    assert c["ratio"] == pytest.approx(1.0, abs=0.01)


def test_compare_detects_a_2x_speedup():
    teacher = quiet_sample(3000, p50_us=100.0, seed=1)
    student = quiet_sample(3000, p50_us=50.0, seed=2)
    c = stats.compare(teacher, student)
    assert c["significant"]
    assert c["ratio"] == pytest.approx(2.0, rel=0.01)
    lo, hi = c["ratio_ci95"]
    assert 1.0 < lo <= c["ratio"] <= hi
    assert c["p50_change_pct"] == pytest.approx(-50.0, abs=0.5)
    assert c["p50_change_pct_ci95"][1] < 0
    back = stats.compare(student, teacher)
    assert back["significant"] and back["ratio"] == pytest.approx(0.5, rel=0.01)
    assert back["p50_change_pct"] == pytest.approx(100.0, abs=1.0)


latency_lists = st.lists(st.integers(min_value=1, max_value=10**9), min_size=2, max_size=300)


@settings(max_examples=150, deadline=None)
@given(latency_lists, st.integers(min_value=0, max_value=2**32 - 1))
def test_ci_brackets_p50(ns, seed):
    s = stats.summarize(ns, seed=seed)
    lo, hi = s["ci95_p50"]
    assert s["min"] <= lo <= s["p50"] <= hi <= s["max"]


@settings(max_examples=100, deadline=None)
@given(latency_lists, st.integers(min_value=2, max_value=1000))
def test_scaling_latencies_scales_location_not_shape(ns, k):
    a = stats.summarize(ns)
    b = stats.summarize([v * k for v in ns])
    for key in ("p50", "p90", "p99", "mean", "min", "max"):
        assert b[key] == pytest.approx(a[key] * k, rel=1e-9)
    np.testing.assert_allclose(b["ci95_p50"], np.multiply(a["ci95_p50"], k), rtol=1e-9)
    for key in ("cv", "trimmed_cv", "p99_p50"):
        assert b[key] == pytest.approx(a[key], rel=1e-9, abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(latency_lists)
def test_a_sample_is_never_significantly_different_from_itself(ns):
    c = stats.compare(ns, ns)
    assert c["ratio"] == 1.0
    assert not c["significant"]


def _rounds_of_a_drifting_machine(rng, n_rounds: int, drift: float = 0.02, noise: float = 0.005):
    """Two identical models timed side by side in n rounds: each round's machine state moves both."""
    state = rng.normal(0.0, drift, n_rounds)
    return (np.exp(state + rng.normal(0.0, noise, n_rounds)) * 100,
            np.exp(state + rng.normal(0.0, noise, n_rounds)) * 100)


@pytest.mark.parametrize("paired", [True, False])
def test_identical_models_are_called_different_about_5_percent_of_the_time(paired):
    rng = np.random.default_rng(7)
    trials = 2000

    def rounds():  # side by side in one bench call (paired), or two sessions at different times
        if paired:
            return _rounds_of_a_drifting_machine(rng, 5)
        return _rounds_of_a_drifting_machine(rng, 5)[0], _rounds_of_a_drifting_machine(rng, 5)[0]

    hits = sum(stats.compare_rounds(*rounds(), paired=paired)["significant"] for _ in range(trials))
    assert 0.02 < hits / trials < 0.08  # a 95% interval; pooled calls gave 79-95% on such rounds


def test_a_paired_2x_speedup_is_found_despite_a_drifting_machine():
    rng = np.random.default_rng(3)
    teacher, same = _rounds_of_a_drifting_machine(rng, 5, drift=0.2)
    c = stats.compare_rounds(teacher, same / 2, paired=True)
    assert c["significant"] and c["ratio"] == pytest.approx(2.0, rel=0.02)
    assert c["ratio_ci95"][0] > 1.9 and c["rounds"] == 5
    unpaired = stats.compare_rounds(teacher, same / 2, paired=False)
    assert unpaired["ratio_ci95"][1] - unpaired["ratio_ci95"][0] > c["ratio_ci95"][1] - c["ratio_ci95"][0]


def test_one_round_has_no_interval_and_no_verdict():
    c = stats.compare_rounds([100.0], [50.0], paired=True)
    assert c["ratio"] == pytest.approx(2.0) and c["ratio_ci95"] is None and not c["significant"]
    assert stats.rounds_interval([100.0]) is None
    lo, hi = stats.rounds_interval([100.0, 104.0, 98.0])
    assert lo < 100.6 < hi


def test_t_quantiles_match_the_tables():
    assert stats.t975(1) == pytest.approx(12.706, abs=1e-3) and stats.t975(4) == pytest.approx(2.776, abs=1e-3)
    assert stats.t975(60) == pytest.approx(2.000, abs=0.005) and stats.t975(1000) == pytest.approx(1.962, abs=0.002)
    # Welch's degrees of freedom are fractional: read from a table at int(df), 1.42 gave 12.706
    assert stats.t975(1.42) == pytest.approx(6.51, abs=0.01) and 3.18 < stats.t975(2.5) < 4.30


@pytest.mark.parametrize("q, n", [(0.99, stats.MIN_P99_SAMPLES), (0.999, stats.MIN_P999_SAMPLES)])
def test_tail_percentiles_need_the_calls_for_an_upper_bound(q, n):
    """The fewest calls whose largest value bounds the q-quantile from above with 97.5% confidence."""
    assert 1 - q ** n >= 0.975 > 1 - q ** (n - 1)


def test_mcnemar_exact_matches_the_binomial_test_on_the_discordant_samples():
    """13 samples right only for one model, 3 only for the other: two-sided binomial(16, 1/2) p = 0.0213."""
    assert stats.mcnemar_exact(13, 3) == pytest.approx(0.021270751953125)
    assert stats.mcnemar_exact(3, 13) == stats.mcnemar_exact(13, 3)
    assert stats.mcnemar_exact(4, 4) == 1.0 and stats.mcnemar_exact(0, 0) == 1.0
    assert stats.mcnemar_exact(6, 0) == pytest.approx(2 / 64)


def test_one_call_has_no_interval_and_compares_to_nothing():
    """One call's bootstrap "interval" was the call itself ([5.0, 5.0] µs), and one call against one other was a
    significant 2× with the interval [2.0, 2.0]."""
    s = stats.summarize([5000])
    assert s["p50"] == 5.0 and s["ci95_p50"] is None and s["rel_ci95_half_width"] == 0.0
    assert any("samples" in r for r in s["unstable_reasons"])
    with pytest.raises(ValueError, match="at least 2 calls"):
        stats.compare([5000], [2500])


@pytest.mark.parametrize("paired", [True, False])
def test_rounds_without_spread_have_no_interval_and_no_verdict(paired):
    """A native tool prints whole-µs p50s: rounds of 3, 3, 3 against 4, 4, 4 (or a hair apart) gave a
    zero-width interval, so any difference was "significant"."""
    for baseline, candidate in (([4.0] * 3, [3.0] * 3), ([2.0, 2.0], [2.0000001, 2.0000001]),
                                ([6.0, 4.0, 8.0], [3.0, 2.0, 4.0]) if paired else ([2.0] * 3, [1.0] * 3)):
        c = stats.compare_rounds(baseline, candidate, paired=paired)
        assert c["ratio_ci95"] is None and c["p50_change_pct_ci95"] is None and not c["significant"]
        assert c["no_interval"] == "no spread"
    assert stats.compare_rounds([4.0], [3.0], paired=paired)["no_interval"] == "one round"
    varying = stats.compare_rounds([4.0, 4.1, 3.9], [3.0, 3.0, 3.0], paired=paired)
    assert varying["ratio_ci95"] is not None and varying["no_interval"] is None
