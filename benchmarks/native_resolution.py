"""Sub-µs calls and benchmark_model's whole-µs timer: is the mean of its readings the calls' mean?

    .venv/bin/python benchmarks/native_resolution.py
    .venv/bin/python benchmarks/native_resolution.py --calls 20000 --rounds 20 --markdown

LiteRT's benchmark_model times each call as the difference of two readings of a whole-µs clock
(NowMicros() before and after Invoke()). On a phone fast enough for a tiny model to take under a microsecond,
most readings are 0 and the median it prints is 0 µs. edgekd then takes the mean of the readings as the p50
(edgekd.bench.native.below_resolution): a call of d < 1 µs reads 1 when a microsecond boundary falls inside it,
with chance d, so the readings average to d. This script checks that claim with real LiteRT calls.

Models: the floor (an Identity graph) and MLPs 64-W-10 for several widths W, exported to TFLite by edgekd's
own exporter, one thread. Every call is timed once with time.perf_counter_ns() before and after invoke(),
and those two ns readings give three estimates of the same calls:
  - exact: t1 - t0 in ns (what edgekd's runner records);
  - the tool's readings: t1 // 1000 - t0 // 1000 (two whole-µs clock readings, as benchmark_model takes them),
    whose median is what the tool prints as its p50 and whose mean edgekd uses below 1 µs;
  - floored difference: (t1 - t0) // 1000, the wrong way to imitate the tool (edgekd's test stand-in did it
    until this was measured): it loses the fraction of every call, ~0.5 µs on average.
Rounds interleave the models in a fresh random order (this VM changes speed within seconds), and the
error of each estimate against the exact mean comes with a 95% interval over the rounds.

Writes benchmarks/results/native_resolution.json (schema edgekd.benchmark.native_resolution/1) atomically.
Takes ~30 s with the defaults.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import interleave  # noqa: E402
from interleave import loadavg, print_markdown, print_table  # noqa: E402

from edgekd.rundir import atomic_write_json  # noqa: E402

RESULT = REPO / "benchmarks" / "results" / "native_resolution.json"
WIDTHS = (8, 64, 256, 1024)
COLUMNS = ("model", "exact mean µs", "exact p50 µs", "tool's p50 µs", "tool's mean µs",
           "tool's mean − exact [95% CI]", "floored mean − exact [95% CI]")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calls", type=int, default=5000, help="calls per model per round")
    p.add_argument("--rounds", type=int, default=10, help="rounds, each timing every model once, interleaved")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--result", type=Path, default=RESULT)
    p.add_argument("--markdown", action="store_true", help="also print the table as Markdown (for the README)")
    return p.parse_args(argv)


def export_models(folder: Path) -> dict[str, Path]:
    """The floor and the MLPs, as edgekd exports them (litert-torch), in `folder`."""
    from edgekd.export.formats import FORMATS, ExportOptions
    from edgekd.export.tflite import export_tflite
    from edgekd.models import create_model

    paths = {"floor (Identity)": folder / "floor.tflite"}
    FORMATS["tflite"]().write_floor(paths["floor (Identity)"], (64,), ExportOptions())
    for width in WIDTHS:
        model = create_model("mlp", in_shape=(64,), num_classes=10, width=width).eval()
        paths[f"MLP 64-{width}-10"] = export_tflite(model, (64,), folder / f"mlp{width}.tflite")
    return paths


def interpreter(path: Path):
    """A one-thread LiteRT interpreter with its input set once (outside every timed call)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    detail = interp.get_input_details()[0]
    interp.set_tensor(detail["index"], np.random.default_rng(0).uniform(-0.5, 0.5, detail["shape"]).astype(np.float32))
    for _ in range(200):  # warm-up
        interp.invoke()
    return interp


def timed_block(interp, calls: int) -> tuple[np.ndarray, np.ndarray]:
    """(t0, t1) in ns of `calls` invokes, each between two perf_counter_ns() readings."""
    invoke, clock = interp.invoke, time.perf_counter_ns
    t0, t1 = np.empty(calls, np.int64), np.empty(calls, np.int64)
    for i in range(calls):
        t0[i] = clock()
        invoke()
        t1[i] = clock()
    return t0, t1


def measure(paths: dict[str, Path], calls: int, rounds: int, seed: int) -> dict[str, list[tuple]]:
    """Per model, per round: (exact ns, tool's readings µs, floored µs) of its block."""
    interps = {name: interpreter(path) for name, path in paths.items()}
    blocks: dict[str, list[tuple]] = {name: [] for name in paths}
    rng = np.random.default_rng(seed)
    gc.collect()
    gc.disable()
    try:
        for _ in range(rounds):
            for name in rng.permutation(list(paths)):
                t0, t1 = timed_block(interps[name], calls)
                blocks[name].append((t1 - t0, t1 // 1000 - t0 // 1000, (t1 - t0) // 1000))
    finally:
        gc.enable()
    return blocks


def summarize(rounds: list[tuple]) -> dict:
    """The exact and the two whole-µs estimates over all calls, and each estimate's error against the exact mean
    round by round (mean over the rounds, 95% t interval)."""
    from edgekd.bench.stats import t975

    exact = np.concatenate([r[0] for r in rounds]) / 1000.0
    readings = np.concatenate([r[1] for r in rounds])
    floored = np.concatenate([r[2] for r in rounds])

    def error(k: int) -> dict:
        diffs = np.array([r[k].mean() - r[0].mean() / 1000.0 for r in rounds])
        half = t975(len(diffs) - 1) * diffs.std(ddof=1) / np.sqrt(len(diffs))
        return {"mean": float(diffs.mean()), "ci95": [float(diffs.mean() - half), float(diffs.mean() + half)]}

    return {"calls": int(exact.size), "exact_mean_us": float(exact.mean()), "exact_p50_us": float(np.median(exact)),
            "tool_p50_us": float(np.median(readings)), "tool_mean_us": float(readings.mean()),
            "tool_mean_error_us": error(1), "floored_mean_us": float(floored.mean()),
            "floored_mean_error_us": error(2)}


def table_rows(models: dict[str, dict]) -> list[tuple[str, ...]]:
    def err(e: dict) -> str:
        return f"{e['mean']:+.3f} [{e['ci95'][0]:+.3f}, {e['ci95'][1]:+.3f}]"

    return [(name, f"{m['exact_mean_us']:.3f}", f"{m['exact_p50_us']:.3f}", f"{m['tool_p50_us']:.0f}",
             f"{m['tool_mean_us']:.3f}", err(m["tool_mean_error_us"]), err(m["floored_mean_error_us"]))
            for name, m in models.items()]


def main(argv: list[str] | None = None) -> int:
    from edgekd.bench.runner import system_info

    args = parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        paths = export_models(Path(tmp))
        blocks = measure(paths, args.calls, args.rounds, args.seed)
    models = {name: summarize(rounds) for name, rounds in blocks.items()}
    doc = {"schema": "edgekd.benchmark.native_resolution/1", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "git": interleave.git_state(REPO, ("edgekd/bench", "benchmarks")),
           "machine": {**interleave.host_fields(system_info()), "threads": 1, "loadavg": loadavg()},
           "calls_per_round": args.calls, "rounds": args.rounds, "seed": args.seed, "models": models,
           "seconds": time.perf_counter() - started}
    atomic_write_json(args.result, doc)
    machine = doc["machine"]
    print_table(f"LiteRT calls timed three ways ({machine['cpu_model']}, 1 thread, {args.rounds} interleaved rounds "
                f"of {args.calls} calls)", COLUMNS, table_rows(models))
    if args.markdown:
        print_markdown(COLUMNS, table_rows(models))
    print(f"wrote {args.result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
