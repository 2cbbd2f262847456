"""Harness overhead: does `edgekd bench` time a model as fast as a bare onnxruntime loop would?

    .venv/bin/python benchmarks/harness_overhead.py
    .venv/bin/python benchmarks/harness_overhead.py --repetitions 20 --markdown --check
    .venv/bin/python benchmarks/harness_overhead.py --no-ssh          # host only (no loopback sshd)

The same two artifacts of the demo run (export/demo: `student-onnx-fp32` and `teacher-onnx-fp32`, batch 1,
the run's bench input data/bench_x_b1.npy) are timed three ways, each in fresh processes:

  (a) bare: a minimal onnxruntime loop written in this file (BARE_LOOP), run with this Python in a
      subprocess per artifact.  It imports only numpy and onnxruntime: 1 intra-op and 1 inter-op thread,
      sequential, CPU provider, input bound once as an OrtValue and output bound to CPU (IOBinding), the same
      warm-up rule as the harness (>= warmup_runs calls and >= warmup_min_seconds), gc disabled, then a fixed
      number of calls, each `sess.run_with_iobinding(binding)` between two time.perf_counter_ns() reads, in a
      function (locals: the same loop at module level measured 2-3% slower, from the dict lookups and stores
      of global names inside the timed window);
  (b) host: `edgekd.bench([artifact], device="host", settings=BenchSettings(rounds=1, ...), inputs=x)`: the
      harness pushes the runner, the model and the input to its work folder and runs edgekd/bench/runner.py in
      one fresh process;
  (c) ssh: the same edgekd.bench call through a real OpenSSH server on 127.0.0.1 (tests/sshd.py's
      LoopbackSSHD, a profile YAML in a temp folder, python = this interpreter): push with scp, run over ssh.

Every method times the same number of seconds per process (--seconds, default 0.2 s, >= 300 calls).

How it measures (and why):
- Interleaved repetitions.  This VM switches between a fast and a ~1.3-2x slower state, sometimes within a
  second, sometimes after several.  In each repetition, for each artifact, (a), (b) and (c) run back to back
  in a fresh random order (seeded), so no method always runs first or after the same neighbour.  One
  repetition takes ~7 s (an ssh bench call costs ~1.4 s more wall time than a host one).  A short priming
  pass (discarded) comes first: it pushes the files, warms the page cache and the ssh path.
- Per-repetition ratios.  For each repetition and artifact: the p50 of each method, and host/bare and
  ssh/bare = p50 of (b) or (c) / p50 of (a), with the 95% CI of stats.compare() (bootstrap of the two medians
  of that repetition).  Summary: the MEDIAN over repetitions of the per-repetition ratio, with a
  bootstrap-over-repetitions 95% CI, and the pooled ratio (all calls, stats.compare) as a cross-check.
- Fast-state estimate.  The VM's state changes within a process too (every ~0.1-1 s under load), so the
  three processes of a repetition often do not share it: that repetition's ratio is then ~0.5 or ~2 and
  says nothing about the harness.  So each process's calls are cut into 20 blocks (~10 ms each); a block is
  in the fast state when its median is within 15% of the artifact's lowest block median (over all
  processes), and a process with >= 10% fast blocks gets a fast-state p50 (the median of its calls in fast
  blocks).  Fast-state pairs: host/bare (ssh/bare) of the fast-state p50s of one repetition, median over the
  repetitions where both have one, bootstrap CI over repetitions.  Fast-state unpaired: median of all
  fast-state p50s of a method / that of the bare loop.  Both compare the methods on the same (fast) machine,
  which is what "overhead" means.
- In-process cross-check (no verdict).  In one process, ~10 ms blocks of the bare loop (the same BARE_TIMED
  function on its own session) alternate with blocks of the runner's loop (edgekd.bench.runner.OrtModel +
  timed_loop, as the runner calls them); runner/bare per block pair.  Neither process start nor VM state
  enters, so it isolates what the timing loop itself adds.

Checks (PASS/FAIL):
  1. harness overhead on host <= 2% of p50, for each artifact: host/bare <= 1.02 by the fast-state pairs
     (>= 3 repetitions needed; else the fast-state unpaired estimate; else the median of per-repetition
     ratios); marked marginal when its 95% CI includes 1.02;
  2. three consecutive `edgekd bench` runs of one artifact on host (the CLI, default settings: 3 rounds,
     1 s; `--stability-artifact`, default the student) agree within 5%: max/min of their p50s <= 1.05.
The ssh/bare ratios are reported without a threshold.

Writes benchmarks/results/harness_overhead.json (schema edgekd.benchmark.harness_overhead/1) atomically.
Takes ~1.7 min with the defaults.  Exit status: 0, or 1 with --check when a check fails, 2 when the demo's
artifacts are missing (run `make demo`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing
sys.path.insert(0, str(REPO / "tests"))  # tests/sshd.py: LoopbackSSHD
sys.path.insert(0, str(REPO / "benchmarks"))  # interleave.py: the timing shared by the benchmark scripts

import edgekd  # noqa: E402
from edgekd.bench import stats  # noqa: E402
from edgekd.bench.harness import BenchSettings  # noqa: E402
from edgekd.bench.runner import system_info  # noqa: E402
from edgekd.rundir import atomic_write_json  # noqa: E402

import interleave  # noqa: E402
from interleave import loadavg, print_markdown  # noqa: E402

SCHEMA = "edgekd.benchmark.harness_overhead/1"
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "harness_overhead.json"
ARTIFACTS = ("student-onnx-fp32", "teacher-onnx-fp32")
METHODS = ("bare", "host", "ssh")
METHOD_LABEL = {"bare": "(a) bare ORT loop", "host": "(b) edgekd.bench host", "ssh": "(c) edgekd.bench ssh"}
HOST_OVERHEAD_MAX = 0.02  # check 1: host p50 <= 1.02 x bare p50
STABILITY_MAX = 1.05  # check 2: max/min of three consecutive `edgekd bench` p50s
STATE_BLOCKS = 20  # blocks per process in which the VM state is judged (~10 ms each at --seconds 0.2)
FAST_BAND = 1.15  # a block median within 15% of the artifact's lowest block median is the VM's fast state
MIN_FAST_SHARE = 0.10  # a process needs this share of fast blocks (2 of 20) for a fast-state p50
MIN_FAST = 3  # repetitions (or processes) needed for a fast-state estimate

# The timed loop of (a), also used by the in-process cross-check.
BARE_TIMED = r"""
def timed(run, binding, n):
    # locals only: at module level every name in the timed window is a dict lookup or store (measured: +2-3%)
    pc = time.perf_counter_ns
    latencies = [0] * n
    for i in range(n):
        t0 = pc()
        run(binding)
        latencies[i] = pc() - t0
    return latencies
"""

# (a): a bare onnxruntime loop, independent of edgekd.  argv[1] is a JSON object with model, input, threads,
# warmup_runs, warmup_min_seconds, min_runs, min_seconds, max_runs; prints one JSON object.
BARE_LOOP = r"""
import gc, json, math, sys, time
import numpy as np
import onnxruntime as ort

spec = json.loads(sys.argv[1])
opts = ort.SessionOptions()
opts.intra_op_num_threads = spec["threads"]
opts.inter_op_num_threads = 1
opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
sess = ort.InferenceSession(spec["model"], opts, providers=["CPUExecutionProvider"])
x = np.ascontiguousarray(np.load(spec["input"]))
binding = sess.io_binding()
binding.bind_ortvalue_input(sess.get_inputs()[0].name, ort.OrtValue.ortvalue_from_numpy(x))
for out in sess.get_outputs():
    binding.bind_output(out.name, "cpu")
run = sess.run_with_iobinding
""" + BARE_TIMED + r"""
pc = time.perf_counter_ns
run(binding)
gc.collect()
gc.disable()
warm, start = 0, pc()
while warm < spec["warmup_runs"] or pc() - start < spec["warmup_min_seconds"] * 1e9:
    run(binding)
    warm += 1
per_call = (pc() - start) / warm
n = min(spec["max_runs"], max(spec["min_runs"], math.ceil(spec["min_seconds"] * 1e9 / per_call)))
cpu0, wall0 = time.process_time_ns(), pc()
latencies = timed(run, binding, n)
cpu, wall = time.process_time_ns() - cpu0, pc() - wall0
gc.enable()
print(json.dumps({"ok": True, "onnxruntime": ort.__version__, "warmup_runs": warm, "runs": n,
                  "seconds": wall / 1e9, "on_cpu_share": cpu / wall, "latencies_ns": latencies}))
"""


# --------------------------------------------------------------------------- inputs

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", type=Path, default=REPO / "export" / "demo",
                   help="demo run directory with artifacts/{student,teacher}-onnx-fp32 (default: export/demo)")
    p.add_argument("--repetitions", type=int, default=12,
                   help="interleaved repetitions of (a), (b), (c) (default: 12, ~7 s each)")
    p.add_argument("--seconds", type=float, default=0.2,
                   help="timed seconds per process, every method (default: 0.2; at least 300 calls)")
    p.add_argument("--stability-runs", type=int, default=3,
                   help="consecutive `edgekd bench` runs for check 2 (default: 3; 0 skips it)")
    p.add_argument("--stability-artifact", default=ARTIFACTS[0], choices=ARTIFACTS,
                   help="artifact of check 2 (default: %(default)s)")
    p.add_argument("--no-ssh", action="store_true", help="skip (c), the loopback sshd")
    p.add_argument("--inproc-blocks", type=int, default=120,
                   help="block pairs of the in-process cross-check (default: 120, ~2.5 s per artifact; 0 skips it)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstraps")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="result JSON (default: %(default)s)")
    p.add_argument("--markdown", action="store_true", help="also print the tables as Markdown (for README.md)")
    p.add_argument("--check", action="store_true", help="exit 1 when a check fails")
    args = p.parse_args(argv)
    if args.repetitions < 1 or args.seconds <= 0 or args.stability_runs < 0 or args.inproc_blocks < 0:
        p.error("--repetitions must be >= 1, --seconds > 0, --stability-runs and --inproc-blocks >= 0")
    return args


def find_artifacts(run_dir: Path) -> dict[str, dict]:
    """name -> {dir, model, record} for the student and teacher ONNX FP32; exits 2 when one is missing."""
    found, missing = {}, []
    for name in ARTIFACTS:
        folder = run_dir / "artifacts" / name
        model, record = folder / "model.onnx", folder / "artifact.json"
        if model.is_file() and record.is_file():
            found[name] = {"dir": folder, "model": model, "record": json.loads(record.read_text(encoding="utf-8"))}
        else:
            missing.append(str(model))
    if missing:
        print(f"missing artifact(s): {', '.join(missing)}\n"
              "run `make demo` first (it trains the demo's teacher and student and exports them), "
              "or pass --run-dir", file=sys.stderr)
        raise SystemExit(2)
    return found


def bench_input(run_dir: Path, record: dict, folder: Path) -> tuple[Path, str]:
    """The run's batch-1 bench input when present, else uniform [0, 1) data of the model's input shape."""
    shape = [1 if not isinstance(d, int) or d < 1 else d for d in record["inputs"][0]["shape"]]
    path = folder / "x_b1.npy"
    given = run_dir / "data" / "bench_x_b1.npy"
    if given.is_file():
        x = np.load(given, allow_pickle=False)
        if list(x.shape) == shape and x.dtype == np.float32:
            np.save(path, x)
            return path, str(given)
    np.save(path, np.random.default_rng(0).random(shape, dtype=np.float32))
    return path, f"uniform [0, 1) {shape} (seed 0)"


# --------------------------------------------------------------------------- the three methods

def settings_for(seconds: float) -> BenchSettings:
    """One fresh runner process per artifact per edgekd.bench call (rounds=1), timed `seconds`."""
    return BenchSettings(threads=1, batch_size=1, warmup_runs=50, warmup_min_seconds=0.2, min_runs=300,
                         min_seconds=seconds, max_seconds=max(10.0, 4 * seconds), memory_runs=10, rounds=1)


def run_bare(artifact: dict, x: Path, settings: BenchSettings) -> dict:
    """(a): the bare loop in a fresh subprocess of this Python, for one artifact."""
    spec = {"model": str(artifact["model"]), "input": str(x), "threads": settings.threads,
            "warmup_runs": settings.warmup_runs, "warmup_min_seconds": settings.warmup_min_seconds,
            "min_runs": settings.min_runs, "min_seconds": settings.min_seconds, "max_runs": 200_000}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", BARE_LOOP, json.dumps(spec)], capture_output=True, text=True,
                          timeout=120, check=False)
    wall = time.perf_counter() - t0
    try:
        raw = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"the bare loop failed on {artifact['model']}: {proc.stderr.strip()[-2000:]}") from None
    return {"latencies_ns": raw["latencies_ns"], "wall_s": wall, "on_cpu_share": raw["on_cpu_share"],
            "onnxruntime": raw["onnxruntime"]}


def run_harness(artifact: dict, x: Path, settings: BenchSettings, device: str) -> dict:
    """(b) and (c): one edgekd.bench call (rounds=1: one fresh runner process) for one artifact."""
    t0 = time.perf_counter()
    [result] = edgekd.bench([artifact["dir"]], device=device, settings=settings, inputs=x)
    wall = time.perf_counter() - t0
    return {"latencies_ns": result.latencies_ns, "wall_s": wall, "on_cpu_share": None,
            "onnxruntime": result.runtime.get("version")}


def ssh_profile(server, folder: Path) -> Path:
    """A profile YAML that reaches the loopback sshd and nothing else (as tests/test_bench_devices.py)."""
    path = folder / "loopback.yaml"
    path.write_text(yaml.safe_dump({"name": "loopback", "kind": "ssh", "python": sys.executable,
                                    "workdir": str(folder / "remote"), **server.profile_options()}))
    return path


def stability_runs(artifact_dir: Path, runs: int, folder: Path) -> list[dict]:
    """`edgekd bench ARTIFACT --device host` (CLI defaults) `runs` times in a row; results in a temp folder."""
    out = []
    for k in range(runs):
        results_dir = folder / f"stability-{k}"
        argv = [sys.executable, "-m", "edgekd.cli", "bench", str(artifact_dir), "--device", "host",
                "--results-dir", str(results_dir), "--history", str(folder / "stability.sqlite")]
        t0 = time.perf_counter()
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
        wall = time.perf_counter() - t0
        files = sorted(results_dir.glob("bench-*.json"))
        if proc.returncode != 0 or not files:
            raise RuntimeError(f"`edgekd bench` failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
        r = json.loads(files[0].read_text(encoding="utf-8"))
        out.append({"run": k + 1, "p50_us": r["latency_us"]["p50"], "ci95_p50_us": r["latency_us"]["ci95_p50"],
                    "n": r["latency_us"]["n"], "round_p50_us": r["round_p50_us"], "settings": r["settings"],
                    "unstable_reasons": r["latency_us"]["unstable_reasons"], "wall_s": wall,
                    "latencies_ns": r["latencies_ns"]})
    return out


def in_process_check(artifacts: dict[str, dict], x_path: Path, blocks: int, block_ms: float, seed: int) -> dict:
    """Cross-check without processes or VM states: in ONE process, alternate blocks of the bare loop (BARE_TIMED on a
    bare session) and of the runner's own loop (edgekd.bench.runner.OrtModel + timed_loop), ~block_ms each, in
    alternating order; per block pair runner median / bare median.  Measures the timing loop's own cost only."""
    import gc

    import onnxruntime as ort

    from edgekd.bench.runner import OrtModel, chunk_size, timed_loop

    namespace: dict = {"time": time}
    exec(BARE_TIMED, namespace)  # the very loop of (a)
    bare_timed = namespace["timed"]
    x = np.ascontiguousarray(np.load(x_path, allow_pickle=False))
    out = {}
    for name, a in artifacts.items():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sess = ort.InferenceSession(str(a["model"]), opts, providers=["CPUExecutionProvider"])
        binding = sess.io_binding()
        binding.bind_ortvalue_input(sess.get_inputs()[0].name, ort.OrtValue.ortvalue_from_numpy(x))
        for o in sess.get_outputs():
            binding.bind_output(o.name, "cpu")
        run = sess.run_with_iobinding
        model = OrtModel(ort, str(a["model"]), 1)
        model.feed({model.inputs[0]["name"]: x})
        fn, arg = model.invoker()
        t0 = time.perf_counter_ns()
        warm = 0
        while time.perf_counter_ns() - t0 < 0.1e9 or warm < 50:
            run(binding)
            fn(arg)
            warm += 1
        per_call = (time.perf_counter_ns() - t0) / (2 * warm)
        n = max(20, int(block_ms * 1e6 / per_call))
        chunk = chunk_size(per_call / 1e9)
        bare_all, runner_all, ratios = [], [], []
        gc.collect()
        gc.disable()
        try:
            for k in range(blocks):
                pair = {}
                for side in (("bare", "runner") if k % 2 == 0 else ("runner", "bare")):
                    if side == "bare":
                        run(binding)  # one untimed call: the block before ran the other session
                        pair[side] = bare_timed(run, binding, n)
                    else:
                        fn(arg)
                        pair[side], _ = timed_loop(fn, arg, min_runs=n, min_seconds=0.0, max_seconds=60.0, max_runs=n,
                                                   chunk=chunk)
                bare_all += pair["bare"]
                runner_all += pair["runner"]
                ratios.append(float(np.median(pair["runner"]) / np.median(pair["bare"])))
        finally:
            gc.enable()
        c = stats.compare(runner_all, bare_all, seed=seed)
        out[name] = {"blocks": blocks, "calls_per_block": n, "bare_p50_us": c["candidate_p50"],
                     "runner_p50_us": c["baseline_p50"], "pooled": {"ratio": c["ratio"], "ci95": c["ratio_ci95"]},
                     "paired": median_over_reps(ratios, seed)}
    return out


# --------------------------------------------------------------------------- analysis

def p50_us(latencies_ns) -> float:
    return float(np.median(np.asarray(latencies_ns, dtype=np.float64))) / 1e3


def ratio_over(candidate_ns, bare_ns, seed: int) -> dict:
    """candidate p50 / bare p50 with stats.compare's 95% CI (> 1: the candidate method measured slower)."""
    c = stats.compare(candidate_ns, bare_ns, seed=seed)  # ratio = p50(baseline=candidate) / p50(bare)
    return {"ratio": c["ratio"], "ci95": c["ratio_ci95"], "significant": c["significant"]}


def median_over_reps(values: list[float], seed: int, n_boot: int = 4000) -> dict:
    """Median of per-repetition values with a bootstrap-over-repetitions 95% CI (the between-process spread)."""
    v = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    boots = np.median(v[rng.integers(0, v.size, size=(n_boot, v.size))], axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"median": float(np.median(v)), "ci95": [float(lo), float(hi)], "min": float(v.min()),
            "max": float(v.max()), "n": int(v.size)}


def block_medians(latencies_ns) -> np.ndarray:
    """Medians (us) of STATE_BLOCKS consecutive blocks of a process's calls (~10 ms each at 0.2 s)."""
    x = np.asarray(latencies_ns, dtype=np.float64) / 1e3
    return np.array([np.median(b) for b in np.array_split(x, min(STATE_BLOCKS, x.size))])


def fast_state(reps: list[dict], methods: list[str]) -> dict[str, dict]:
    """The VM's fast state, found in each process's own calls.

    The fast level of an artifact is the lowest block median over every process of every method; a block is
    fast when its median is within FAST_BAND of it (the slow state is 1.3-2x slower, so the band separates the
    two cleanly).  A process's fast-state p50 is the median of its calls in fast blocks, when at least
    MIN_FAST_SHARE of its blocks are fast; else None (it ran in the slow state).
    """
    out = {}
    for name in ARTIFACTS:
        medians = {(i, m): block_medians(r["raw"][m][name]["latencies_ns"]) for i, r in enumerate(reps) for m in methods}
        level = min(float(b.min()) for b in medians.values())
        per_rep = []
        for i, r in enumerate(reps):
            row = {}
            for m in methods:
                fast = medians[(i, m)] <= level * FAST_BAND
                share = float(fast.mean())
                p50 = None
                if share >= MIN_FAST_SHARE:
                    blocks = np.array_split(np.asarray(r["raw"][m][name]["latencies_ns"], dtype=np.float64),
                                            fast.size)
                    p50 = float(np.median(np.concatenate([b for b, f in zip(blocks, fast) if f]))) / 1e3
                row[m] = {"fast_share": share, "fast_p50_us": p50}
            per_rep.append(row)
        out[name] = {"fast_level_us": level, "band": FAST_BAND, "blocks": STATE_BLOCKS,
                     "min_fast_share": MIN_FAST_SHARE, "per_rep": per_rep}
    return out


def unpaired_ratio(candidate: list[float], bare: list[float], seed: int, n_boot: int = 4000) -> dict:
    """median of the candidate's values / median of the bare loop's, bootstrap 95% CI resampling each group."""
    if len(candidate) < MIN_FAST or len(bare) < MIN_FAST:
        return {"n": len(candidate), "n_bare": len(bare)}
    c, b = np.asarray(candidate), np.asarray(bare)
    rng = np.random.default_rng(seed)
    boots = (np.median(c[rng.integers(0, c.size, (n_boot, c.size))], axis=1)
             / np.median(b[rng.integers(0, b.size, (n_boot, b.size))], axis=1))
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"ratio": float(np.median(c) / np.median(b)), "ci95": [float(lo), float(hi)], "n": int(c.size),
            "n_bare": int(b.size)}


def analyse(reps: list[dict], methods: list[str], seed: int) -> tuple[dict, dict]:
    states = fast_state(reps, methods)
    summary = {}
    for name in ARTIFACTS:
        pooled = {m: np.concatenate([np.asarray(r["raw"][m][name]["latencies_ns"]) for r in reps]) for m in methods}
        st = states[name]["per_rep"]
        p50 = {m: [r["results"][name][m]["p50_us"] for r in reps] for m in methods}
        fast_p50 = {m: [row[m]["fast_p50_us"] for row in st] for m in methods}
        rows = {}
        for m in methods:
            s = stats.summarize(pooled[m], seed=seed)
            have = [v for v in fast_p50[m] if v is not None]
            rows[m] = {"pooled_p50_us": s["p50"], "pooled_ci95_p50_us": s["ci95_p50"], "calls": s["n"],
                       "rep_p50_us": median_over_reps(p50[m], seed),
                       "fast_state_processes": len(have), "fast_share": float(np.mean([row[m]["fast_share"] for row in st])),
                       "fast_state_p50_us": median_over_reps(have, seed) if have else None,
                       "wall_s_per_call": float(np.median([r["results"][name][m]["wall_s"] for r in reps]))}
            if m != "bare":
                per_rep = [r["results"][name][m]["over_bare"]["ratio"] for r in reps]
                paired = [a / b for a, b in zip(fast_p50[m], fast_p50["bare"]) if a is not None and b is not None]
                rows[m]["over_bare"] = {
                    "per_rep": median_over_reps(per_rep, seed),
                    "fast_paired": median_over_reps(paired, seed) if len(paired) >= MIN_FAST else {"n": len(paired)},
                    "fast_unpaired": unpaired_ratio(have, [v for v in fast_p50["bare"] if v is not None], seed),
                    "pooled": ratio_over(pooled[m], pooled["bare"], seed),
                    "abs_us_median": float(np.median([a - b for a, b in zip(p50[m], p50["bare"])])),
                }
        summary[name] = rows
    return summary, states


def _ci(d: dict, key: str = "median") -> str:
    return f"{d[key]:.4f} (95% CI {d['ci95'][0]:.4f}-{d['ci95'][1]:.4f})"


def overhead_estimate(o: dict) -> tuple[str, dict]:
    """Which estimate decides check 1: fast-state pairs, else fast-state processes unpaired, else raw repetitions."""
    if "median" in o["fast_paired"]:
        return "fast_state_paired", {"value": o["fast_paired"]["median"], "ci95": o["fast_paired"]["ci95"]}
    if "ratio" in o["fast_unpaired"]:
        return "fast_state_unpaired", {"value": o["fast_unpaired"]["ratio"], "ci95": o["fast_unpaired"]["ci95"]}
    return "median_of_repetitions", {"value": o["per_rep"]["median"], "ci95": o["per_rep"]["ci95"]}


def verdicts(summary: dict, stability: list[dict] | None, seed: int) -> list[dict]:
    """Check 1 per artifact from the fast-state estimate (see overhead_estimate); marginal when its 95% CI
    includes 1.02.  Check 2 from three consecutive CLI runs."""
    goals = []
    limit = 1 + HOST_OVERHEAD_MAX
    for name in ARTIFACTS:
        o = summary[name]["host"]["over_bare"]
        kind, est = overhead_estimate(o)
        rep, fp, fu = o["per_rep"], o["fast_paired"], o["fast_unpaired"]
        paired_text = (f"fast-state pairs {_ci(fp)} over {fp['n']} repetitions" if "median" in fp
                       else f"fast-state pairs: only {fp['n']} repetitions with both processes fast")
        unpaired_text = (f"fast-state processes unpaired {_ci(fu, 'ratio')}" if "ratio" in fu
                         else "fast-state processes unpaired: too few")
        goals.append({
            "id": f"host_overhead_{name}", "goal": f"harness overhead on host <= 2% of p50 ({name})",
            "verdict": "PASS" if est["value"] <= limit else "FAIL", "value": est["value"], "threshold": limit,
            "estimate": kind, "ci95": est["ci95"],
            "ci_clear_of_threshold": not (est["ci95"][0] <= limit <= est["ci95"][1]),
            "detail": f"host/bare p50: {paired_text}; {unpaired_text}; median of {rep['n']} per-repetition ratios "
                      f"(all states) {_ci(rep)}, range {rep['min']:.3f}-{rep['max']:.3f}; pooled "
                      f"{o['pooled']['ratio']:.4f}. Overhead {100 * (est['value'] - 1):+.2f}% "
                      f"({kind.replace('_', ' ')}), need <= +2%",
        })
    if stability:
        p50s = [s["p50_us"] for s in stability]
        spread = max(p50s) / min(p50s)
        hi_run, lo_run = stability[int(np.argmax(p50s))], stability[int(np.argmin(p50s))]
        c = stats.compare(hi_run["latencies_ns"], lo_run["latencies_ns"], seed=seed)
        goals.append({
            "id": "bench_repeatability",
            "goal": f"{len(p50s)} consecutive `edgekd bench` runs on host agree within 5% p50",
            "verdict": "PASS" if spread <= STABILITY_MAX else "FAIL", "value": spread, "threshold": STABILITY_MAX,
            "ci_clear_of_threshold": not (c["ratio_ci95"][0] <= STABILITY_MAX <= c["ratio_ci95"][1]),
            "detail": f"p50s {', '.join(f'{v:.3f}' for v in p50s)} us: max/min = {spread:.4f} "
                      f"(95% CI {c['ratio_ci95'][0]:.4f}-{c['ratio_ci95'][1]:.4f}), need <= {STABILITY_MAX}",
        })
    return goals


def git_state() -> dict:
    """The commit measured, and uncommitted changes to the code under test (harness, runner, devices)."""
    def git(*argv: str) -> str | None:
        proc = subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else None

    dirty = git("status", "--porcelain", "--", "edgekd/bench", "edgekd/devices")
    return {"commit": git("rev-parse", "HEAD"), "uncommitted_under_test": dirty.splitlines() if dirty else []}


def machine_info(ort_version: str | None) -> dict:
    system = system_info()
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True, check=False) if shutil.which("ssh") else None
    try:
        clock = Path("/sys/devices/system/clocksource/clocksource0/current_clocksource").read_text().strip()
    except OSError:
        clock = None
    return {
        **interleave.host_fields(system),
        "clocksource": clock, "cpu_features": system["cpu_features"], "onnxruntime": ort_version,
        "numpy": np.__version__, "python": platform.python_version(), "edgekd": edgekd.__version__,
        "openssh": (ssh.stderr or ssh.stdout).strip() if ssh else None, "threads": 1,
    }


# --------------------------------------------------------------------------- output

REP_COLUMNS = ("rep", "order", "artifact", "bare p50 us [fast p50, share]", "host p50 us [fast p50, share]",
               "ssh p50 us [fast p50, share]", "host/bare (95% CI)", "ssh/bare (95% CI)", "fast-state host/bare",
               "fast-state ssh/bare")
SUMMARY_COLUMNS = ("artifact", "method", "p50 us: median of reps (range)", "pooled p50 us (95% CI)", "calls",
                   "fast-state p50 us (processes, blocks)", "x bare: median of reps (95% CI)",
                   "x bare: fast-state pairs (95% CI)", "x bare: fast-state unpaired (95% CI)", "x bare: pooled (95% CI)",
                   "wall s per call")
INPROC_COLUMNS = ("artifact", "blocks x calls", "bare loop p50 us", "runner loop p50 us",
                  "runner/bare: median of block pairs (95% CI)", "runner/bare: pooled (95% CI)")
STABILITY_COLUMNS = ("run", "p50 us (95% CI)", "round p50s us", "calls", "wall s")


def _ratio_cell(r: dict | None) -> str:
    return "-" if r is None else f"{r['ratio']:.4f} ({r['ci95'][0]:.4f}-{r['ci95'][1]:.4f})"


def _order(order: list[str]) -> str:
    return "".join("abc"[METHODS.index(m)] for m in order)


def _p50_cell(r: dict, st: dict) -> str:
    fast = st["fast_p50_us"]
    return f"{r['p50_us']:.3f} [{'-' if fast is None else f'{fast:.3f}'}, {st['fast_share']:.0%}]"


def _fast_ratio(st: dict, m: str) -> str:
    a, b = st[m]["fast_p50_us"], st["bare"]["fast_p50_us"]
    return "-" if a is None or b is None else f"{a / b:.4f}"


def rep_rows(doc: dict) -> list[tuple[str, ...]]:
    rows = []
    for rep in doc["repetitions"]:
        for name in ARTIFACTS:
            r, st = rep["results"][name], doc["fast_state"][name]["per_rep"][rep["index"] - 1]
            rows.append((str(rep["index"]), _order(rep["order"][name]), name,
                         *(_p50_cell(r[m], st[m]) if m in r else "-" for m in METHODS),
                         *(_ratio_cell(r[m]["over_bare"]) if m in r else "-" for m in ("host", "ssh")),
                         *(_fast_ratio(st, m) if m in r else "-" for m in ("host", "ssh"))))
    return rows


def summary_rows(doc: dict) -> list[tuple[str, ...]]:
    def ci(v: float, c: list) -> str:
        return f"{v:.4f} ({c[0]:.4f}-{c[1]:.4f})"

    def paired(d: dict) -> str:
        return f"{ci(d['median'], d['ci95'])}, n = {d['n']}" if "median" in d else f"- (n = {d['n']}: too few)"

    def unpaired(d: dict) -> str:
        n = f"n = {d['n']}/{d['n_bare']}"
        return f"{ci(d['ratio'], d['ci95'])}, {n}" if "ratio" in d else f"- ({n}: too few)"

    rows = []
    for name, methods in doc["summary"].items():
        for m, s in methods.items():
            rep, ob, fp = s["rep_p50_us"], s.get("over_bare"), s["fast_state_p50_us"]
            rows.append((
                name, METHOD_LABEL[m], f"{rep['median']:.3f} ({rep['min']:.3f}-{rep['max']:.3f})",
                f"{s['pooled_p50_us']:.3f} ({s['pooled_ci95_p50_us'][0]:.3f}-{s['pooled_ci95_p50_us'][1]:.3f})",
                f"{s['calls']:,}",
                ("-" if fp is None else f"{fp['median']:.3f}") + f" ({s['fast_state_processes']} of {rep['n']}, "
                f"{s['fast_share']:.0%})",
                "1 (reference)" if ob is None else ci(ob["per_rep"]["median"], ob["per_rep"]["ci95"]),
                "-" if ob is None else paired(ob["fast_paired"]),
                "-" if ob is None else unpaired(ob["fast_unpaired"]),
                "-" if ob is None else _ratio_cell(ob["pooled"]),
                f"{s['wall_s_per_call']:.2f}",
            ))
    return rows


def inproc_rows(doc: dict) -> list[tuple[str, ...]]:
    return [(name, f"{r['blocks']} x {r['calls_per_block']}", f"{r['bare_p50_us']:.3f}", f"{r['runner_p50_us']:.3f}",
             f"{r['paired']['median']:.4f} ({r['paired']['ci95'][0]:.4f}-{r['paired']['ci95'][1]:.4f})",
             _ratio_cell(r["pooled"])) for name, r in doc["in_process"].items()]


def stability_rows(doc: dict) -> list[tuple[str, ...]]:
    return [(str(s["run"]), f"{s['p50_us']:.3f} ({s['ci95_p50_us'][0]:.3f}-{s['ci95_p50_us'][1]:.3f})",
             ", ".join(f"{v:.3f}" for v in s["round_p50_us"]), f"{s['n']:,}", f"{s['wall_s']:.1f}")
            for s in doc["stability"]["runs"]]


def print_table(title: str | None, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    interleave.print_table(title, columns, rows, left=3, width=180)


def print_report(doc: dict, markdown: bool) -> None:
    m, meas = doc["machine"], doc["measurement"]
    print_table("per repetition (order run: a = bare, b = host, c = ssh; ratios = method p50 / bare p50 of the same "
                f"repetition, 95% CI from stats.compare; [fast p50, share] = p50 of the process's calls in the VM's "
                f"fast state and the share of its {STATE_BLOCKS} blocks in that state)", REP_COLUMNS, rep_rows(doc))
    print_table(f"harness overhead: {m['cpu_model']} ({m['logical_cores']} logical cores), onnxruntime "
                f"{m['onnxruntime']}, 1 thread, IOBinding, batch 1; {meas['repetitions']} repetitions x "
                f"{meas['seconds_per_process']} s per process", SUMMARY_COLUMNS, summary_rows(doc))
    if doc["in_process"]:
        print_table("in-process cross-check: the bare loop vs the runner's OrtModel + timed_loop, alternating ~10 ms "
                    "blocks in one process (no process start, no VM-state mismatch)", INPROC_COLUMNS, inproc_rows(doc))
    if doc["stability"]["runs"]:
        print_table(f"{len(doc['stability']['runs'])} consecutive `edgekd bench {doc['stability']['artifact']} "
                    "--device host` (CLI defaults)", STABILITY_COLUMNS, stability_rows(doc))
    print(f"{meas['seconds']:.1f} s of repetitions, {meas['total_seconds']:.1f} s in all; load average "
          f"{meas['loadavg_before']} before, {meas['loadavg_after']} after")
    print()
    for v in doc["goals"]:
        flag = "" if v["ci_clear_of_threshold"] else "  (the 95% CI straddles the threshold: marginal)"
        print(f"  {v['verdict']:<7} {v['goal']}: {v['detail']}{flag}")
    print()
    for note in doc["notes"]:
        print(f"  - {note}")
    if markdown:
        print_markdown(SUMMARY_COLUMNS, summary_rows(doc))
        print_markdown(REP_COLUMNS, rep_rows(doc))
        if doc["in_process"]:
            print_markdown(INPROC_COLUMNS, inproc_rows(doc))
        if doc["stability"]["runs"]:
            print_markdown(STABILITY_COLUMNS, stability_rows(doc))
        print_markdown(("check", "verdict", "measured"), [
            (v["goal"], v["verdict"] + ("" if v["ci_clear_of_threshold"] else " (marginal: the 95% CI includes the "
                                        "threshold)"), v["detail"]) for v in doc["goals"]])


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    run_dir = args.run_dir.resolve()
    artifacts = find_artifacts(run_dir)
    settings = settings_for(args.seconds)
    notes: list[str] = []
    methods = ["bare", "host"] if args.no_ssh else list(METHODS)
    server = None
    with tempfile.TemporaryDirectory(prefix="edgekd-harness-overhead-") as tmp_name:
        tmp = Path(tmp_name)
        x, x_source = bench_input(run_dir, artifacts[ARTIFACTS[0]]["record"], tmp)
        runners = {"bare": lambda a, s: run_bare(a, x, s), "host": lambda a, s: run_harness(a, x, s, "host")}
        try:
            if not args.no_ssh:
                from sshd import LoopbackSSHD

                try:
                    server = LoopbackSSHD(tmp / "sshd").start()
                except RuntimeError as exc:
                    notes.append(f"(c) ssh NOT RUN: {str(exc).splitlines()[0]}")
                    methods.remove("ssh")
                else:
                    profile = str(ssh_profile(server, tmp))
                    runners["ssh"] = lambda a, s: run_harness(a, x, s, profile)
            print(f"{args.repetitions} repetitions of {', '.join(methods)} x {len(artifacts)} artifacts, "
                  f"{args.seconds} s per process, then {args.stability_runs} consecutive `edgekd bench` runs",
                  flush=True)
            for m in methods:  # priming: pushes, page cache, the ssh connection; discarded
                for a in artifacts.values():
                    runners[m](a, settings_for(0.05))
            load_before = loadavg()
            t_reps = time.perf_counter()
            reps = []
            rng = np.random.default_rng(args.seed)
            for i in range(args.repetitions):
                order = {name: [methods[j] for j in rng.permutation(len(methods))] for name in artifacts}
                raw = {m: {} for m in methods}
                for name, a in artifacts.items():  # one artifact's methods back to back, in a random order
                    for m in order[name]:
                        raw[m][name] = runners[m](a, settings)
                results = {}
                for name in ARTIFACTS:
                    bare = raw["bare"][name]["latencies_ns"]
                    results[name] = {m: {"p50_us": p50_us(raw[m][name]["latencies_ns"]),
                                         "calls": len(raw[m][name]["latencies_ns"]), "wall_s": raw[m][name]["wall_s"],
                                         "on_cpu_share": raw[m][name]["on_cpu_share"],
                                         "over_bare": None if m == "bare" else
                                         ratio_over(raw[m][name]["latencies_ns"], bare, args.seed)}
                                     for m in methods}
                reps.append({"index": i + 1, "order": order, "results": results, "raw": raw})
                print(f"  rep {i + 1}/{args.repetitions}: " + "; ".join(
                    f"{name.split('-')[0]} ({_order(order[name])}) " + ", ".join(
                        f"{m} {results[name][m]['p50_us']:.3f}" for m in methods) for name in ARTIFACTS) + " us",
                      flush=True)
            seconds = time.perf_counter() - t_reps
            load_after = loadavg()
        finally:
            if server is not None:
                server.stop()
        stab = stability_runs(artifacts[args.stability_artifact]["dir"], args.stability_runs, tmp) \
            if args.stability_runs else []
        inproc = in_process_check(artifacts, x, args.inproc_blocks, 10.0, args.seed) if args.inproc_blocks else {}

    summary, states = analyse(reps, methods, args.seed)
    goals = verdicts(summary, stab, args.seed)
    ort_version = reps[0]["raw"]["bare"][ARTIFACTS[0]]["onnxruntime"]
    harness_ort = reps[0]["raw"]["host"][ARTIFACTS[0]]["onnxruntime"]
    if harness_ort != ort_version:
        notes.append(f"the runner's onnxruntime ({harness_ort}) differs from the bare loop's ({ort_version})")
    cpu = [r["results"][n]["bare"]["on_cpu_share"] for r in reps for n in ARTIFACTS]
    notes.append(f"bare loop on CPU {min(cpu):.1%}-{max(cpu):.1%} of its timed wall time (per process; < ~97% means "
                 "another process took the core)")
    for name in ARTIFACTS:
        for m in methods:
            if m == "bare":
                continue
            o = summary[name][m]["over_bare"]
            slower = sum(r["results"][name][m]["over_bare"]["ratio"] > 1 for r in reps)
            sig = sum(r["results"][name][m]["over_bare"]["significant"] for r in reps)
            notes.append(f"{name} {m}/bare: slower than bare in {slower} of {len(reps)} repetitions; the within-"
                         f"repetition 95% CI excludes 1 in {sig} of {len(reps)} (the between-process spread, "
                         f"{o['per_rep']['min']:.3f}-{o['per_rep']['max']:.3f}, is wider than those CIs)")
    if "ssh" in methods:
        w = {m: float(np.median([r["results"][n][m]["wall_s"] for r in reps for n in ARTIFACTS])) for m in methods}
        notes.append(f"wall time per artifact and process: bare {w['bare']:.2f} s, edgekd.bench host {w['host']:.2f} s, "
                     f"ssh {w['ssh']:.2f} s (ssh: a new multiplexed connection per bench call, sha256 checks of the "
                     "pushed files, the run and the thermal read over ssh); none of it is inside the timed calls")
    shares = {m: np.mean([row[m]["fast_share"] for n in ARTIFACTS for row in states[n]["per_rep"]]) for m in methods}
    notes.append("share of blocks in the VM's fast state: " + ", ".join(f"{m} {v:.0%}" for m, v in shares.items()))
    if stab:
        rounds = [v for s in stab for v in s["round_p50_us"]]
        notes.append(f"`edgekd bench` round p50s (fresh processes) over the {len(stab)} runs: "
                     f"{min(rounds):.3f}-{max(rounds):.3f} us (max/min {max(rounds) / min(rounds):.3f})")

    doc = {
        "schema": SCHEMA,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run_dir": str(run_dir),
        "git": git_state(),
        "machine": machine_info(ort_version),
        "artifacts": {n: {"path": str(a["model"]), "sha256": a["record"].get("sha256"),
                          "parameters": a["record"].get("parameters")} for n, a in artifacts.items()},
        "measurement": {
            "methods": {m: METHOD_LABEL[m] for m in methods}, "repetitions": args.repetitions,
            "seconds_per_process": args.seconds, "settings": {k: getattr(settings, k) for k in (
                "threads", "batch_size", "warmup_runs", "warmup_min_seconds", "min_runs", "min_seconds",
                "max_seconds", "memory_runs", "rounds")},
            "input": x_source, "seed": args.seed, "seconds": seconds,
            "method": "per repetition (a) bare loop subprocess per artifact, (b) edgekd.bench(device='host', "
                      "rounds=1), (c) edgekd.bench through a loopback sshd, per artifact back to back in a random "
                      "order; ratios = method p50 / bare p50 of the same repetition, summarized as the median "
                      "over repetitions and as fast-state estimates (calls in the VM's fast state only, see fast_state)",
            "loadavg_before": load_before, "loadavg_after": load_after,
        },
        "goals": goals,
        "notes": notes,
        "summary": summary,
        "fast_state": states,
        "repetitions": [{k: v for k, v in r.items() if k != "raw"} for r in reps],
        "in_process": inproc,
        "stability": {"artifact": args.stability_artifact, "command": "edgekd bench ARTIFACT --device host "
                      "(defaults: 3 rounds, 1 s)", "runs": [{k: v for k, v in s.items() if k != "latencies_ns"}
                                                           for s in stab]},
    }
    doc["measurement"]["total_seconds"] = time.perf_counter() - started
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output, doc)  # temp file beside it + os.replace
    os.chmod(args.output, 0o644)  # mkstemp made it owner-only
    print_report(doc, args.markdown)
    print(f"\nwrote {args.output}")
    return 1 if args.check and any(v["verdict"] == "FAIL" for v in goals) else 0


if __name__ == "__main__":
    sys.exit(main())
