"""Latency statistics for runner results (host side, numpy only).

``summarize`` turns the runner's per-call ``latencies_ns`` into the numbers a
latency report shows (in microseconds) plus a verdict on whether the run was
stable enough to trust; ``compare`` says whether a speed-up between two runs
(teacher vs student, before vs after) is larger than the noise.

Bootstrap intervals of the median are computed without materialising
resamples.  The median of a resample of n values is the m-th smallest
resampled value; since resampled indices are floor(n * U) for iid uniforms U
and floor is monotone, the m-th smallest resampled index is
floor(n * U_(m)) with U_(m) ~ Beta(m, n + 1 - m) (the m-th order statistic of
n uniforms).  For even n the next order statistic is
U_(m+1) = U_(m) + (1 - U_(m)) * Beta(1, n - m).  Drawing these is exactly the
ordinary resampling bootstrap of the median in distribution, but costs
O(n_boot) after one sort instead of O(n_boot * n) time and memory: a 200 000-call
run with 2000 resamples would otherwise need 400 M indices.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Sequence

import numpy as np

# --- "unstable" thresholds ------------------------------------------------------------------
# Measured with the real runner (ORT 1.32, 1 thread, defaults: min_seconds 1, max_runs 200 000)
# on the 2-vCPU AMD EPYC VM this was written on, for an Identity graph (x: 1x1x8x8) and a
# 2-layer 320x320 MatMul+Add+Relu MLP (batch 8), 3-6 runs per condition:
#
#   condition                     model  p50 µs    trimmed CV   p99/p50    tail share  drift
#   quiet (one host "mode")       Id     3.4-3.6   0.007-0.011  2.0        0.02-0.03   1.01
#                                 MLP    49-51     0.012-0.07   1.5-1.7    <=0.0004    1.02-1.05
#   quiet, host in slow state     Id     6.2-7.5   0.06-0.105   1.5-1.9    0.03        1.07-1.27
#                                 MLP    61-65     0.02-0.06    1.5-2.0    <=0.0004    1.02-1.09
#   quiet, host mode switch       Id     3.5-6.3   0.19-0.22    1.5-2.3    0.03        1.67-1.93
#     mid-run                     MLP    51        0.10         1.7        0           1.24
#   busy loop on the other core   Id     3.5-6.3   0.008-0.22   1.7-2.0    0.02        1.01-2.08
#                                 MLP    51-66     0.04-0.13    1.5-1.9    <=0.0065    1.05-1.42
#   busy loop on the same core    Id     3.5-3.7   0.007-0.28   1.2-2.4    0.51-0.52   1.00-2.14
#                                 MLP    49-63     0.04-0.14    66-83      0.52-0.53   1.02-1.41
#   two busy loops, unpinned      Id     3.4-6.4   0.008-0.09   2.0-2.4    0.30-0.36   1.00-1.13
#                                 MLP    49-65     0.03-0.14    1.7-68     0.28-0.47   1.03-1.48
#
# ("tail share" = fraction of the measured time spent in calls slower than 5x p50;
#  "drift" = max/min of the medians of 10 consecutive blocks of calls.)
# What these show:
# - This VM switches between a fast and a ~1.3-1.9x slower state every few seconds with or
#   without our load (host contention; /proc/stat shows no steal).  A run that straddles a
#   switch has a p50 that mixes two machines; drift flags it, the other metrics mostly don't.
# - Sharing the core with another busy process costs ~half the wall time in preemptions
#   (tail share ~0.5 vs <=0.03 quiet); it reaches p99 only when calls are long enough for a
#   preemption to hit >1% of them (MLP yes, Identity no), so tail share is the robust test.
# - A busy loop on the *other* core had no effect beyond the host's own noise.
# - Plain CV is useless as a verdict: one 4 ms preemption among 200 000 3.5 µs calls already
#   gives CV ~1 (quiet runs: 0.4-1.1; disturbed: 3-17), hence the trimmed CV.
# - The CI of the median is tight (<= +-0.4%) at these n in every condition; it matters for
#   slow models with few runs, where it is the sign that more runs are needed.
MIN_SAMPLES = 30             # below this, percentiles and the bootstrap are not meaningful
MAX_REL_CI_HALF_WIDTH = 0.02  # 95% CI of p50 wider than +-2% of p50: too few runs for the noise
MAX_P99_P50 = 3.0            # quiet max 2.4; same-core preemption of the 50 µs model: 66-83
TAIL_FACTOR = 5.0            # a call slower than 5x p50 counts as disturbed (preempted/interrupted)
MAX_TAIL_TIME_SHARE = 0.10   # quiet <= 0.033; shared core 0.28-0.53
MAX_DRIFT = 1.25             # quiet one-state <= 1.09 (slow-state Identity up to 1.27); state switches 1.24-2.1
MAX_TRIMMED_CV = 0.15        # quiet <= 0.105; mixed-state runs 0.19-0.28
DRIFT_BLOCKS = 10
MIN_BLOCK_SIZE = 20          # drift is only computed when every block has this many calls

# Below this many calls a distribution-free 95% interval of p99 has no upper bound (1 - 0.99^n < 0.975):
# the p99 of fewer calls is one of the largest few values, not an estimate, and tables show "–".
MIN_P99_SAMPLES = 368
MIN_P999_SAMPLES = 3688  # the same bound for p99.9 (1 - 0.999^n >= 0.975); native tools print p99.9

# Below this many times the runtime's per-call floor (an Identity graph's p50), the floor is over half of a model's
# p50: the call overhead, not the model, sets its latency (and a speed-up against a larger model is capped by it).
OVERHEAD_BOUND = 2.0

TRIM_FRACTION = 0.10
CI_LEVEL = 0.95


def _as_us(latencies_ns: Sequence[int] | np.ndarray) -> np.ndarray:
    x = np.asarray(latencies_ns, dtype=np.float64).ravel() / 1e3
    if x.size == 0:
        raise ValueError("no latencies to summarize")
    if not np.all(np.isfinite(x)) or x.min() < 0:
        raise ValueError("latencies must be finite and >= 0")
    return x


def _median_of_sorted(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Average of the two middle values exactly as numpy's linear percentile rounds it.

    Using numpy's own expression (hi - (hi - lo) * 0.5) keeps bootstrap medians
    bit-identical to np.percentile(x, 50) when they pick the same pair, so the
    interval contains the point estimate even in floating point.
    """
    return hi - (hi - lo) * 0.5


def bootstrap_medians(x: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """n_boot bootstrap replicates of the median of x (see the module docstring for why this is exact)."""
    s = np.sort(x)
    n = s.size
    m = (n + 1) // 2  # 1-based rank of the (lower) middle value
    u = rng.beta(m, n + 1 - m, size=n_boot)
    i = np.minimum((u * n).astype(np.int64), n - 1)
    if n % 2:
        return s[i]
    u2 = u + (1.0 - u) * rng.beta(1, n - m, size=n_boot)
    j = np.minimum((u2 * n).astype(np.int64), n - 1)
    return _median_of_sorted(s[i], s[j])


def _interval(values: np.ndarray) -> list:
    tail = (1.0 - CI_LEVEL) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return [float(lo), float(hi)]


def trimmed(x: np.ndarray, fraction: float = TRIM_FRACTION) -> np.ndarray:
    """x sorted with `fraction` of the values cut from each side (none cut when that would empty it)."""
    s = np.sort(x)
    k = int(s.size * fraction)
    return s[k:s.size - k] if s.size - 2 * k > 0 else s


def summarize(latencies_ns: Sequence[int] | np.ndarray, *, seed: int = 0, n_boot: int = 2000) -> Dict[str, Any]:
    """Latency summary in microseconds, with a bootstrap 95% interval of the median and a stability verdict.

    latencies_ns is in call order (as the runner writes it): drift compares
    consecutive blocks of calls.
    """
    x = _as_us(latencies_ns)
    rng = np.random.Generator(np.random.PCG64(seed))
    p50, p90, p99 = (float(v) for v in np.percentile(x, [50, 90, 99]))
    mean = float(x.mean())
    std = float(x.std())
    core = trimmed(x)
    core_mean = float(core.mean())
    # one call has no spread to resample: its "interval" would be the call itself
    ci = _interval(bootstrap_medians(x, rng, n_boot)) if x.size >= 2 else None
    metrics = {
        "trimmed_cv": _ratio(float(core.std()), core_mean, 0.0),
        "rel_ci95_half_width": _ratio((ci[1] - ci[0]) / 2, p50, 0.0) if ci else 0.0,
        "p99_p50": _ratio(p99, p50, 1.0),
        "tail_time_share": _ratio(float(x[x > TAIL_FACTOR * p50].sum()), float(x.sum()), 0.0),
        "drift": drift(x),
    }
    reasons = _instability(n=x.size, **metrics)
    return {
        "n": int(x.size),
        "p50": p50,
        "p90": p90,
        "p99": p99,
        "mean": mean,
        "trimmed_mean": core_mean,
        "std": std,
        "cv": _ratio(std, mean, 0.0),
        "ci95_p50": ci,
        "min": float(x.min()),
        "max": float(x.max()),
        **metrics,
        "unstable": bool(reasons),
        "unstable_reasons": reasons,
    }


def shown_p99(latency_us: Dict[str, Any]) -> float | None:
    """A summary's p99 when it has calls enough to estimate one (MIN_P99_SAMPLES), else None (a table's "–")."""
    return latency_us.get("p99") if (latency_us.get("n") or 0) >= MIN_P99_SAMPLES else None


def shown_p50_interval(latency_us: Dict[str, Any]) -> Any:
    """The p50 interval a table shows: across the rounds (fresh processes) when there are several, else the
    interval within the one process."""
    return latency_us.get("ci95_p50_rounds") or latency_us.get("ci95_p50")


# Beside a p50 that is the mean of a native tool's whole-µs readings (native.below_resolution), in every table.
BELOW_RESOLUTION_MARK = " (mean: calls under the tool's 1 µs)"


def shown_p50(latency_us: Dict[str, Any], round_p50s: Sequence[float]) -> float | None:
    """The p50 a table shows beside `shown_p50_interval`: when that is the rounds' interval, its centre
    (`rounds_center`), which speed-ups and comparisons use too; else the p50 of the calls. The median of all
    calls leans to the fast rounds (they time more calls in the same seconds) and can lie outside the rounds'
    interval."""
    if latency_us.get("ci95_p50_rounds") and len(round_p50s) and min(round_p50s) > 0:
        return rounds_center(round_p50s)
    return latency_us.get("p50")


def _ratio(num: float, den: float, if_zero: float) -> float:
    return num / den if den > 0 else if_zero


def drift(x: np.ndarray) -> float | None:
    """Max/min of the medians of DRIFT_BLOCKS consecutive blocks: did the machine change state mid-run?

    None when the run is too short for block medians to mean anything.
    """
    if x.size < DRIFT_BLOCKS * MIN_BLOCK_SIZE:
        return None
    medians = np.array([np.median(b) for b in np.array_split(x, DRIFT_BLOCKS)])
    return _ratio(float(medians.max()), float(medians.min()), 1.0)


def _instability(
    *, n: int, trimmed_cv: float, rel_ci95_half_width: float, p99_p50: float, tail_time_share: float,
    drift: float | None,
) -> list:
    """Human-readable reasons the run should not be trusted; empty when it looks stable."""
    reasons = []
    if n < MIN_SAMPLES:
        reasons.append(f"only {n} samples (< {MIN_SAMPLES}): run more iterations")
    if rel_ci95_half_width > MAX_REL_CI_HALF_WIDTH:
        # the bootstrap interval of the timed calls' median (calls pooled over the rounds), not the interval
        # across the rounds (fresh processes) that a table shows beside a p50 when there are several
        reasons.append(f"the bootstrap 95% interval of the timed calls' median is +-{rel_ci95_half_width:.1%} of it "
                       f"(> +-{MAX_REL_CI_HALF_WIDTH:.0%}): too few calls for their spread; run longer")
    if p99_p50 > MAX_P99_P50:
        reasons.append(f"p99/p50 = {p99_p50:.2f} (> {MAX_P99_P50:g}): heavy tail")
    if tail_time_share > MAX_TAIL_TIME_SHARE:
        reasons.append(f"{tail_time_share:.0%} of the time was spent in calls > {TAIL_FACTOR:g}x p50 "
                       f"(> {MAX_TAIL_TIME_SHARE:.0%}): the process was preempted; another process shares the core?")
    if drift is not None and drift > MAX_DRIFT:
        reasons.append(f"block medians differ by {drift:.2f}x (> {MAX_DRIFT:g}x): the machine changed speed during the run")
    if trimmed_cv > MAX_TRIMMED_CV:
        reasons.append(f"CV of the 10%-trimmed sample = {trimmed_cv:.1%} (> {MAX_TRIMMED_CV:.0%}): noisy")
    return reasons


def compare(
    baseline_ns: Sequence[int] | np.ndarray,
    candidate_ns: Sequence[int] | np.ndarray,
    *,
    seed: int = 0,
    n_boot: int = 2000,
) -> Dict[str, Any]:
    """Speed-up of candidate over baseline (median ratio) and whether it exceeds the noise.

    Both samples are resampled independently; ratio > 1 means the candidate is
    faster.  `significant` is True when the 95% interval of the ratio excludes 1.
    """
    b, c = _as_us(baseline_ns), _as_us(candidate_ns)
    if min(b.size, c.size) < 2:
        raise ValueError("a bootstrap interval needs at least 2 calls on each side")
    rng = np.random.Generator(np.random.PCG64(seed))
    boot_b = bootstrap_medians(b, rng, n_boot)
    boot_c = bootstrap_medians(c, rng, n_boot)
    if min(boot_b.min(), boot_c.min()) <= 0:
        raise ValueError("a median latency is 0: the clock is too coarse for this model; time batches of calls")
    p50_b, p50_c = float(np.median(b)), float(np.median(c))
    ratio_ci = _interval(boot_b / boot_c)
    change_ci = _interval((boot_c / boot_b - 1.0) * 100.0)
    return {
        "baseline_p50": p50_b,
        "candidate_p50": p50_c,
        "ratio": p50_b / p50_c,
        "ratio_ci95": ratio_ci,
        "p50_change_pct": (p50_c / p50_b - 1.0) * 100.0,
        "p50_change_pct_ci95": change_ci,
        "significant": bool(ratio_ci[0] > 1.0 or ratio_ci[1] < 1.0),
    }


# --- comparisons between processes ----------------------------------------------------------
# The calls of one process move together (the machine's state, the process's memory layout), so the
# interval of a pooled median only knows the noise within a process: on this project's own results it was
# 17-90x narrower than the spread of the rounds, and two identical models came out "significantly"
# different 79-95% of the time. Verdicts therefore use the rounds (one fresh process each) as the unit.


def t975(df: float) -> float:
    """The 97.5% quantile of Student's t, for any degrees of freedom ≥ 1: Welch's are fractional, and a table
    read at int(df) gave 12.7 for 1.42 (exact: 6.5), intervals twice as wide as they are."""
    from scipy.stats import t as student_t  # scipy comes with scikit-learn, a dependency

    if not df >= 1:
        raise ValueError("a t interval needs at least one degree of freedom")
    return float(student_t.ppf(0.975, df))


def why_no_interval(reason: str | None) -> str:
    """Why a comparison of rounds has no interval (`compare_rounds`'s `no_interval`), in the words the report,
    `edgekd compare` and `--check-threads` use (the narrow console table shows the reason itself)."""
    return {"one round": "one round", "no spread": "rounds without spread, under the clock's resolution"}.get(
        reason or "", "no interval")


# Log p50s closer than this are equal (float rounding of equal ratios such as 6/3 and 4/2): no spread.
_NO_SPREAD = 1e-12


def compare_rounds(baseline_p50s: Sequence[float], candidate_p50s: Sequence[float], *,
                   paired: bool) -> Dict[str, Any]:
    """Speed-up of candidate over baseline from the p50 of each round (ratio > 1: the candidate is faster).

    paired: round r of both ran side by side (interleaved in one bench call), so the log of each round's ratio
    is one observation and a state of the machine common to both cancels; a t interval of their mean.
    Otherwise (two sessions) Welch's interval of the difference of the mean log p50s. With fewer than two
    rounds on a side there is no estimate of the noise between processes: no interval, never significant
    (`no_interval` "one round"). Nor when the rounds do not vary at all (`no_interval` "no spread"): a native
    tool's whole-µs p50s read 3, 3, 3 against 4, 4, 4, and a zero-width interval would call any difference
    real; their noise is there, under the clock's resolution.
    """
    b = np.log(np.asarray(baseline_p50s, dtype=np.float64))
    c = np.log(np.asarray(candidate_p50s, dtype=np.float64))
    if b.size == 0 or c.size == 0 or not (np.all(np.isfinite(b)) and np.all(np.isfinite(c))):
        raise ValueError("every round needs a positive p50")
    if paired and b.size != c.size:
        raise ValueError(f"paired rounds differ in number ({b.size} vs {c.size})")
    if paired:
        d = b - c
        center, n = float(d.mean()), d.size
        spread = np.ptp(d) > _NO_SPREAD
        half = t975(n - 1) * float(d.std(ddof=1)) / np.sqrt(n) if n > 1 and spread else None
    else:
        center, n = float(b.mean() - c.mean()), min(b.size, c.size)
        spread = max(np.ptp(b), np.ptp(c)) > _NO_SPREAD
        half = None
        if n > 1 and spread:
            vb, vc = float(b.var(ddof=1)) / b.size, float(c.var(ddof=1)) / c.size
            df = (vb + vc) ** 2 / (vb ** 2 / (b.size - 1) + vc ** 2 / (c.size - 1))
            half = t975(df) * float(np.sqrt(vb + vc))
    ratio = float(np.exp(center))
    ci = None if half is None else (float(np.exp(center - half)), float(np.exp(center + half)))
    return {
        "no_interval": None if ci is not None else "one round" if n < 2 else "no spread",
        "ratio": ratio,
        "ratio_ci95": ci,
        "p50_change_pct": (1.0 / ratio - 1.0) * 100.0,
        "p50_change_pct_ci95": None if ci is None else ((1.0 / ci[1] - 1.0) * 100.0, (1.0 / ci[0] - 1.0) * 100.0),
        "significant": bool(ci is not None and (ci[0] > 1.0 or ci[1] < 1.0)),
        "rounds": int(n),
        "method": "paired rounds (t)" if paired else "rounds of two sessions (Welch)",
    }


def rounds_center(round_p50s: Sequence[float]) -> float:
    """The typical p50 across fresh processes: the geometric mean of the rounds' p50s, the centre of
    `rounds_interval` (and what `compare_rounds` compares: their ratio of centres is its ratio)."""
    return float(np.exp(np.mean(np.log(np.asarray(round_p50s, dtype=np.float64)))))


def rounds_interval(round_p50s: Sequence[float]) -> tuple[float, float] | None:
    """95% interval of the typical p50 across fresh processes (t interval of the mean log round p50)."""
    x = np.log(np.asarray(round_p50s, dtype=np.float64))
    if x.size < 2 or not np.all(np.isfinite(x)):
        return None
    half = t975(x.size - 1) * float(x.std(ddof=1)) / np.sqrt(x.size)
    return float(np.exp(x.mean() - half)), float(np.exp(x.mean() + half))


def round_spread_pct(round_p50s: Sequence[float]) -> float | None:
    """How far the p50 moved between fresh processes, the one definition every table shows (as ±): half the range
    of the round p50s, in % of the smallest (10 and 13 µs: ±15%). None from fewer than two rounds (or a zero p50)."""
    if len(round_p50s) < 2 or min(round_p50s) <= 0:
        return None
    return (max(round_p50s) / min(round_p50s) - 1.0) * 50.0


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value for two classifiers scored on the same samples: only_a samples are right only
    for the first, only_b only for the second (the samples both get right or both wrong say nothing about which is
    better). Under no difference each discordant sample is a fair coin."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2 ** n
    return min(1.0, 2 * tail)
