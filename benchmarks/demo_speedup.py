"""Measured performance check of the demo: is the distilled student fast enough, next to the runtime floor?

    .venv/bin/python benchmarks/demo_speedup.py            # or: make bench
    .venv/bin/python benchmarks/demo_speedup.py --rounds 600 --batch-sizes 1,8,64 --markdown

Reads the ONNX and TFLite artifacts of a demo run directory (default export/demo; when they are
missing it runs `edgekd demo` first, which resumes the run and adds what is missing) and times every
candidate in ONE process, interleaved: per runtime the floor (ONNX: an Identity graph; TFLite: a
graph with no operator, i.e. the runtime's per-call cost), the teacher FP32, every student
precision and the scratch baseline, through onnxruntime (ONNX) and LiteRT + XNNPACK (TFLite).
TFLite models have a fixed batch of 1, so batch sizes other than 1 are timed for ONNX only.
Goals of the demo:

  1. ONNX: the fastest ONNX student at batch 1 is within 1.5x of the ONNX floor;
  2. ONNX: teacher FP32 / fastest ONNX student >= 4x at batch 1;
  3. ONNX: teacher FP32 / fastest ONNX student >= 20x at batch 64;
  4. LiteRT: teacher FP32 / fastest LiteRT student >= 15x at batch 1.

It also compares each artifact across runtimes (same role and precision, onnxruntime vs LiteRT).

How it measures (and why):
- Interleaved.  This VM switches between a fast and a ~1.3-1.9x slower state every few
  seconds, so timing A then B in long blocks would compare two machines.  Each round runs a
  short block of calls of every (artifact, batch) of both runtimes in a fresh random order; a
  block is at most --block calls and at most --max-block-ms long, so one round takes ~0.1 s and
  every candidate sees the same mix of machine states.
- The runner's own call.  Models are loaded by edgekd.bench.runner's adapters, what the
  device-side runner uses.  onnxruntime (OrtModel): one intra-op thread, one inter-op thread,
  sequential, CPU provider, input bound once as an OrtValue, output bound to CPU; one timed call
  is `sess.run_with_iobinding(binding)`.  LiteRT (LiteRTModel): ai_edge_litert Interpreter with
  its default XNNPACK delegate, 1 thread; the input is set once (an int8 input quantized with the
  tensor's scale/zero point) and one timed call is `Interpreter.invoke(interpreter)` alone.
  Each call sits between two time.perf_counter_ns reads, gc disabled.
- Real inputs: the test split of the run's data set (digits), rows repeated if a batch needs more.
- Statistics from edgekd.bench.stats: summarize() for p50 and its bootstrap 95% CI,
  compare() for ratios (teacher / candidate, candidate / floor, onnxruntime / LiteRT) with
  bootstrap 95% CIs, each with a per-round paired cross-check.

Writes benchmarks/results/demo_speedup.json (schema edgekd.benchmark.demo_speedup/2) atomically.
Exit status: 0, or 1 with --check when a goal fails, 2 when the run directory cannot be used.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing
sys.path.insert(0, str(REPO / "benchmarks"))  # interleave.py: the timing shared by the benchmark scripts

from edgekd.bench import stats  # noqa: E402
from edgekd.bench.runner import RUNTIMES, RunnerError, load_model, system_info  # noqa: E402
from edgekd.rundir import atomic_write_json, sha256_file  # noqa: E402

import interleave  # noqa: E402
from interleave import loadavg, measure, paired_ratio, print_markdown, print_table  # noqa: E402

SCHEMA = "edgekd.benchmark.demo_speedup/2"
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "demo_speedup.json"
RUNTIME_OF_FORMAT = {"onnx": "onnxruntime", "tflite": "litert"}  # artifact format -> edgekd.bench.runner runtime
RUNTIME_ORDER = {"onnxruntime": 0, "litert": 1}
RUNTIME_LABEL = {"onnxruntime": "ONNX", "litert": "LiteRT"}
ROLE_ORDER = {"floor": 0, "teacher": 1, "student": 2, "scratch": 3}
PRECISION_ORDER = {"fp32": 0, "int8_static": 1, "int8_dynamic": 2, "int4": 3}
NEEDED_ROLES = {"floor", "teacher", "student"}

# Goals of the demo (issue acceptance text).  Each is (id, runtime, text, batch, kind, threshold); the
# floor, the teacher and the students of a goal are all of that goal's runtime.
GOALS = (
    ("student_vs_floor_b1", "onnxruntime", "ONNX: fastest student at batch 1 within 1.5x of the ONNX floor",
     1, "x_floor_max", 1.5),
    ("teacher_vs_student_b1", "onnxruntime", "ONNX: teacher FP32 / fastest student >= 4x at batch 1",
     1, "speedup_min", 4.0),
    ("teacher_vs_student_b64", "onnxruntime", "ONNX: teacher FP32 / fastest student >= 20x at batch 64",
     64, "speedup_min", 20.0),
    ("litert_teacher_vs_student_b1", "litert", "LiteRT: teacher FP32 / fastest student >= 15x at batch 1",
     1, "speedup_min", 15.0),
)


# --------------------------------------------------------------------------- inputs

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", type=Path, default=REPO / "export" / "demo",
                   help="demo run directory with artifacts/*/model.{onnx,tflite} (default: export/demo)")
    p.add_argument("--runtimes", default="onnxruntime,litert",
                   help="comma-separated runtimes to time: onnxruntime (ONNX artifacts), litert (TFLite artifacts) "
                        "(default: both)")
    p.add_argument("--rounds", type=int, default=300,
                   help="interleaved rounds (default: 300: ~35 s of rounds, ~45 s in all with both runtimes "
                        "on the 2-vCPU EPYC VM)")
    p.add_argument("--block", type=int, default=300, help="max timed calls per candidate per round (default: 300)")
    p.add_argument("--max-block-ms", type=float, default=20.0,
                   help="cap on one block's duration, so a slow candidate cannot stretch a round (default: 20)")
    p.add_argument("--batch-sizes", default="1,64",
                   help="comma-separated batch sizes (default: 1,64; TFLite artifacts run only at their fixed batch, 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the block order and the bootstraps")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="result JSON (default: %(default)s)")
    p.add_argument("--markdown", action="store_true", help="also print the tables as Markdown (for README.md)")
    p.add_argument("--check", action="store_true", help="exit 1 when a goal fails")
    args = p.parse_args(argv)
    try:
        args.batch_sizes = sorted({int(b) for b in args.batch_sizes.split(",") if b.strip()})
    except ValueError:
        p.error(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}")
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        p.error("--batch-sizes needs at least one batch size >= 1")
    args.runtimes = sorted({r.strip() for r in args.runtimes.split(",") if r.strip()}, key=lambda r: RUNTIME_ORDER.get(r, 9))
    unknown = [r for r in args.runtimes if r not in RUNTIME_ORDER]
    if unknown or not args.runtimes:
        p.error(f"--runtimes takes onnxruntime and/or litert, got {unknown or 'nothing'}")
    if args.rounds < 1 or args.block < 1 or args.max_block_ms <= 0:
        p.error("--rounds and --block must be >= 1, --max-block-ms > 0")
    return args


def find_artifacts(run_dir: Path, runtimes: list[str]) -> list[dict]:
    """artifact.json records of every ONNX/TFLite artifact of `runtimes`: per runtime floor, teacher, students, scratch."""
    records = []
    for record_path in sorted(run_dir.glob("artifacts/*/artifact.json")):
        record = json.loads(record_path.read_text(encoding="utf-8"))
        runtime = RUNTIME_OF_FORMAT.get(record.get("format"))
        model = record_path.parent / record.get("file", "model.onnx")
        if runtime in runtimes and model.is_file() and record.get("role") in ROLE_ORDER:
            records.append({**record, "path": model, "runtime": runtime})
    records.sort(key=lambda r: (RUNTIME_ORDER[r["runtime"]], ROLE_ORDER[r["role"]],
                                PRECISION_ORDER.get(r["precision"], 9), r["name"]))
    return records


def missing_roles(records: list[dict], runtimes: list[str]) -> dict[str, list[str]]:
    """Per runtime, the floor/teacher/student roles that have no artifact (empty dict: nothing missing)."""
    out = {}
    for runtime in runtimes:
        have = {r["role"] for r in records if r["runtime"] == runtime}
        if NEEDED_ROLES - have:
            out[runtime] = sorted(NEEDED_ROLES - have)
    return out


def fail(what: str, fix: str) -> None:
    print(f"error: {what}\nfix: {fix}", file=sys.stderr)
    sys.exit(2)


def ensure_demo(run_dir: Path, runtimes: list[str]) -> tuple[list[dict], list[str], list[str]]:
    """(records, runtimes that can be timed, notes).  When floor/teacher/student artifacts of a runtime are missing,
    run `edgekd demo` (only for a run named 'demo'; it resumes the run and exports what is missing).  ONNX artifacts
    are required; a runtime still lacking them afterwards is left out with a note (its goals become NOT RUN)."""
    notes: list[str] = []
    records = find_artifacts(run_dir, runtimes)
    missing = missing_roles(records, runtimes)
    edgekd = Path(sys.executable).parent / "edgekd"
    if missing and run_dir.name == "demo" and edgekd.is_file():
        argv = [str(edgekd), "demo", "--output-dir", str(run_dir.parent)]
        what = "; ".join(f"{RUNTIME_LABEL[k]} {', '.join(v)}" for k, v in missing.items())
        print(f"{run_dir}: artifacts missing ({what}), running the demo first (it resumes the run; "
              f"up to about a minute): {' '.join(argv)}", flush=True)
        done = subprocess.run(argv, check=False)
        records = find_artifacts(run_dir, runtimes)
        missing = missing_roles(records, runtimes)
        if done.returncode != 0 and missing:
            fail(f"`edgekd demo` exited {done.returncode} and {run_dir} still lacks artifacts ({missing})",
                 "run `make demo` and read its error")
    if "onnxruntime" in missing:
        fail(f"{run_dir} has no {'/'.join(missing['onnxruntime'])} ONNX artifacts",
             "run `make demo` (or `.venv/bin/edgekd run RECIPE` for another run directory) first, or pass --run-dir")
    for runtime, roles in missing.items():
        notes.append(f"{RUNTIME_LABEL[runtime]} not timed: {run_dir} has no {'/'.join(roles)} "
                     f"{'TFLite' if runtime == 'litert' else 'ONNX'} artifact (export them with the recipe's tflite "
                     "format, or pass --runtimes onnxruntime)")
        print(f"warning: {notes[-1]}", file=sys.stderr)
    usable = [r for r in runtimes if r not in missing]
    return [r for r in records if r["runtime"] in usable], usable, notes


def import_runtimes(runtimes: list[str]) -> tuple[dict, list[str]]:
    """{runtime: module} of the runtimes that import; notes for those that do not (their goals become NOT RUN)."""
    modules, notes = {}, []
    for runtime in runtimes:
        try:
            modules[runtime] = importlib.import_module(RUNTIMES[runtime].module)
        except ImportError as e:
            if runtime == "onnxruntime":
                fail(f"cannot import onnxruntime: {e}", "run `make install` (the venv needs onnxruntime)")
            notes.append(f"{RUNTIME_LABEL[runtime]} not timed: import {RUNTIMES[runtime].module} failed ({e}); "
                         f"{RUNTIMES[runtime].pip_hint} (make installs the [tflite] extra)")
            print(f"warning: {notes[-1]}", file=sys.stderr)
    return modules, notes


def test_split(run_dir: Path):
    """(x_test, y_test) of the run's data set, split exactly as the run did (recipe.yaml's data section)."""
    import yaml

    from edgekd.data import load_data

    data = {"name": "digits"}
    recipe = run_dir / "recipe.yaml"
    if recipe.is_file():
        data.update((yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}).get("data") or {})
    name = data.pop("name")
    keep = {k: data[k] for k in ("seed", "val_fraction", "test_fraction") if k in data}
    splits = load_data(name, **keep)
    return np.ascontiguousarray(splits.x_test, dtype=np.float32), splits.y_test


def batch_of(x: np.ndarray, batch: int) -> np.ndarray:
    """The first `batch` test rows, repeated when the split has fewer."""
    reps = -(-batch // len(x))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:batch])


def load(record: dict, modules: dict):
    """The artifact through the runner's adapter for its runtime (OrtModel / LiteRTModel), 1 thread."""
    try:
        return load_model(record["runtime"], modules[record["runtime"]], str(record["path"]), 1)
    except RunnerError as e:
        fail(f"{e.what}: {e.why}", e.fix or "re-run `make demo`")


def fixed_batch(model) -> int | None:
    """The model's fixed batch dimension (TFLite: 1), or None when the batch is symbolic (ONNX 'batch')."""
    first = model.inputs[0]["shape"][0] if model.inputs[0]["shape"] else None
    return first if isinstance(first, int) else None


# --------------------------------------------------------------------------- measurement

class Slot(interleave.Slot):
    """One (artifact, batch size): its own session/interpreter with the input set once, and its latencies."""

    def __init__(self, record: dict, batch: int, x: np.ndarray, model):
        self.record, self.batch, self.runtime = record, batch, record["runtime"]
        name = model.inputs[0]["name"]
        model.feed({name: batch_of(x, batch)})  # LiteRT: quantizes an int8 input here, outside the timed call
        super().__init__(model)
        self.sha256_ok = sha256_file(record["path"]) == record.get("sha256")


def test_accuracy(record: dict, model, x: np.ndarray, y: np.ndarray) -> float | None:
    """Top-1 test accuracy of the artifact through its runtime (a check that artifact.json describes this file and
    split).  A fixed-batch model (TFLite) is fed row by row through a fresh adapter, as the runner's predict pass."""
    if record["role"] == "floor":
        return None
    if fixed_batch(model) is None:
        model.feed({model.inputs[0]["name"]: x})
        fn, arg = model.invoker()
        fn(arg)
        logits = model.fetch()[0]
    else:
        step = fixed_batch(model)
        fn, arg = model.invoker()
        chunks = []
        for start in range(0, len(x), step):
            rows = x[start:start + step]
            model.feed({model.inputs[0]["name"]: batch_of(rows, step)})  # pads the last chunk by repeating rows
            fn(arg)
            chunks.append(model.fetch()[0][:len(rows)])
        logits = np.concatenate(chunks)
    return float((np.asarray(logits).argmax(axis=1) == y).mean())


# --------------------------------------------------------------------------- analysis

def groups(slots: list[Slot]) -> list[tuple[str, int, list[Slot]]]:
    """(runtime, batch, slots) for every runtime and batch that was timed: batch-major, ONNX before LiteRT."""
    keys = sorted({(s.batch, s.runtime) for s in slots}, key=lambda k: (k[0], RUNTIME_ORDER[k[1]]))
    return [(rt, b, [s for s in slots if s.batch == b and s.runtime == rt]) for b, rt in keys]


def analyse(slots: list[Slot], accuracies: dict[str, float | None], seed: int) -> dict[int, list[dict]]:
    """Per batch, one row per artifact; x floor and teacher/candidate are within the artifact's own runtime."""
    results: dict[int, list[dict]] = {}
    for runtime, batch, here in groups(slots):
        floor = next(s for s in here if s.record["role"] == "floor")
        teacher = next(s for s in here if s.record["role"] == "teacher")
        for s in here:
            rec, lat = s.record, s.latencies
            summary = stats.summarize(lat, seed=seed)
            x_floor = stats.compare(lat, floor.latencies, seed=seed)  # ratio = candidate p50 / floor p50
            vs_teacher = stats.compare(teacher.latencies, lat, seed=seed)  # ratio = teacher p50 / candidate p50
            parity = rec.get("parity") or {}
            info = s.model.runtime_info()
            results.setdefault(batch, []).append({
                "name": rec["name"], "runtime": runtime, "format": rec["format"], "role": rec["role"],
                "precision": rec["precision"], "runtime_version": info.get("version"),
                "delegate": info.get("delegate"), "undelegated_ops": info.get("undelegated_ops"),
                "quantized_io": info.get("quantized_io") or None,
                "parameters": rec.get("parameters"), "size_bytes": rec.get("size_bytes"), "sha256": rec.get("sha256"),
                "accuracy": parity.get("accuracy"), "accuracy_measured": accuracies.get(rec["name"]),
                "parity_passed": parity.get("passed"),
                "calls_per_block": s.calls, "on_cpu_share": s.cpu_ns / s.wall_ns, "sha256_matches_file": s.sha256_ok,
                "p50_us": summary["p50"], "ci95_p50_us": summary["ci95_p50"],
                "p90_us": summary["p90"], "p99_us": summary["p99"], "n": summary["n"],
                "floor": floor.record["name"],
                "x_floor": x_floor["ratio"], "x_floor_ci95": x_floor["ratio_ci95"],
                "x_floor_paired": paired_ratio(s, floor, seed) if s is not floor else None,
                "teacher": teacher.record["name"],
                "speedup_vs_teacher": vs_teacher["ratio"], "speedup_vs_teacher_ci95": vs_teacher["ratio_ci95"],
                "speedup_vs_teacher_significant": vs_teacher["significant"],
                "speedup_vs_teacher_paired": paired_ratio(teacher, s, seed) if s is not teacher else None,
                "stats": summary,
            })
    return results


def runtime_comparison(results: dict[int, list[dict]], slots: list[Slot], seed: int) -> list[dict]:
    """Every role+precision timed in both runtimes at the same batch: onnxruntime p50 / LiteRT p50 (> 1: LiteRT faster),
    pooled and paired, and the same for the time above each runtime's own floor (the model's work, without the
    per-call cost)."""
    by_name = {(s.record["name"], s.batch): s for s in slots}
    out = []
    for batch, rows in results.items():
        ort = {(r["role"], r["precision"]): r for r in rows if r["runtime"] == "onnxruntime"}
        lrt = {(r["role"], r["precision"]): r for r in rows if r["runtime"] == "litert"}
        floors = {r["runtime"]: r for r in rows if r["role"] == "floor"}
        for key in sorted(set(ort) & set(lrt), key=lambda k: (ROLE_ORDER[k[0]], PRECISION_ORDER.get(k[1], 9))):
            a, b = ort[key], lrt[key]
            c = stats.compare(by_name[(a["name"], batch)].latencies, by_name[(b["name"], batch)].latencies, seed=seed)
            above = None
            if key[0] != "floor":
                oa, la = a["p50_us"] - floors["onnxruntime"]["p50_us"], b["p50_us"] - floors["litert"]["p50_us"]
                above = {"onnxruntime_us": oa, "litert_us": la, "ratio": oa / la if la > 0 else None}
            out.append({
                "batch": batch, "role": key[0], "precision": key[1],
                "onnxruntime": a["name"], "litert": b["name"],
                "onnxruntime_p50_us": a["p50_us"], "onnxruntime_ci95_p50_us": a["ci95_p50_us"],
                "litert_p50_us": b["p50_us"], "litert_ci95_p50_us": b["ci95_p50_us"],
                "ratio": c["ratio"], "ratio_ci95": c["ratio_ci95"], "significant": c["significant"],
                "ratio_paired": paired_ratio(by_name[(a["name"], batch)], by_name[(b["name"], batch)], seed),
                "faster": ("litert" if c["ratio"] > 1 else "onnxruntime") if c["significant"] else "neither (within noise)",
                "above_floor": above,
                "accuracy": {"onnxruntime": a["accuracy"], "litert": b["accuracy"]},
                "size_bytes": {"onnxruntime": a["size_bytes"], "litert": b["size_bytes"]},
            })
    return out


def fastest_student(rows: list[dict], runtime: str) -> dict | None:
    students = [r for r in rows if r["role"] == "student" and r["runtime"] == runtime]
    return min(students, key=lambda r: r["p50_us"]) if students else None


def verdicts(results: dict[int, list[dict]], batch_sizes: list[int], runtimes: list[str]) -> list[dict]:
    out = []
    for gid, runtime, text, batch, kind, threshold in GOALS:
        best = fastest_student(results.get(batch, []), runtime)
        if best is None:
            why = (f"batch {batch} not in --batch-sizes" if batch not in batch_sizes
                   else f"{RUNTIME_LABEL[runtime]} not in --runtimes" if runtime not in runtimes
                   else f"{RUNTIME_LABEL[runtime]} not timed at batch {batch} (see the notes)")
            out.append({"id": gid, "runtime": runtime, "goal": text, "batch": batch, "threshold": threshold,
                        "verdict": "NOT RUN", "detail": why})
            continue
        if kind == "x_floor_max":
            value, ci, paired = best["x_floor"], best["x_floor_ci95"], best["x_floor_paired"]
            ok = value <= threshold
            detail = f"{best['name']}: {value:.3f}x floor (95% CI {ci[0]:.3f}-{ci[1]:.3f}), need <= {threshold:g}x"
        else:
            value, ci, paired = best["speedup_vs_teacher"], best["speedup_vs_teacher_ci95"], best["speedup_vs_teacher_paired"]
            ok = value >= threshold
            detail = f"{best['name']}: {value:.2f}x faster than teacher (95% CI {ci[0]:.2f}-{ci[1]:.2f}), need >= {threshold:g}x"
        # Clear = both the pooled CI and the (wider) per-round paired CI lie on the same side of the threshold.
        lo, hi = min(ci[0], paired["ci95"][0]), max(ci[1], paired["ci95"][1])
        clear = (hi <= threshold or lo > threshold) if kind == "x_floor_max" else (lo >= threshold or hi < threshold)
        detail += f"; paired per round {paired['ratio']:.3f} (95% CI {paired['ci95'][0]:.3f}-{paired['ci95'][1]:.3f})"
        out.append({"id": gid, "runtime": runtime, "goal": text, "batch": batch, "threshold": threshold,
                    "candidate": best["name"], "value": value, "ci95": ci, "paired": paired,
                    "verdict": "PASS" if ok else "FAIL", "ci_clear_of_threshold": clear, "detail": detail})
    return out


def precision_notes(slots: list[Slot], results: dict[int, list[dict]], seed: int) -> list[str]:
    """Per runtime and batch: which student precision is fastest, and plainly whether a quantized one is slower than FP32."""
    notes = []
    by_name = {(s.record["name"], s.batch): s for s in slots}
    for runtime, batch, _ in groups(slots):
        label = f"{RUNTIME_LABEL[runtime]} batch {batch}"
        students = sorted((r for r in results[batch] if r["role"] == "student" and r["runtime"] == runtime),
                          key=lambda r: r["p50_us"])
        if not students:
            continue
        order = " < ".join(f"{r['precision']} {r['p50_us']:.2f} us" for r in students)
        notes.append(f"{label}: fastest student precision is {students[0]['precision']} ({order})")
        fp32 = next((r for r in students if r["precision"] == "fp32"), None)
        for r in students:
            if fp32 is None or r is fp32:
                continue
            c = stats.compare(by_name[(fp32["name"], batch)].latencies, by_name[(r["name"], batch)].latencies, seed=seed)
            if c["ratio"] < 1.0:
                lo, hi = 1.0 / c["ratio_ci95"][1], 1.0 / c["ratio_ci95"][0]
                notes.append(f"{label}: {r['precision'].upper().split('_')[0]} is SLOWER than FP32: {r['precision']} "
                             f"takes {1.0 / c['ratio']:.2f}x the FP32 time "
                             f"(95% CI {lo:.2f}-{hi:.2f}{'' if c['significant'] else ', within noise'})")
            else:
                notes.append(f"{label}: {r['precision']} is {c['ratio']:.2f}x faster than FP32 "
                             f"(95% CI {c['ratio_ci95'][0]:.2f}-{c['ratio_ci95'][1]:.2f}"
                             f"{'' if c['significant'] else ', within noise'})")
    return notes


def machine_noise(slots: list[Slot]) -> dict:
    """How much the machine's speed moved during the run, seen by the first runtime's floor at the smallest batch."""
    floor = min((s for s in slots if s.record["role"] == "floor"), key=lambda s: (s.batch, RUNTIME_ORDER[s.runtime]))
    return interleave.machine_noise(floor, f"{floor.record['name']} batch {floor.batch}", slots)


def machine_info(modules: dict, slots: list[Slot]) -> dict:
    system = system_info()  # the runner's device description (CPU model, flags, governor, affinity)
    litert = next((s.model.runtime_info() for s in slots if s.runtime == "litert"), None)
    return {
        **interleave.host_fields(system), "int8_flags": interleave.int8_flags(), "cpu_features": system["cpu_features"],
        "onnxruntime": modules["onnxruntime"].__version__ if "onnxruntime" in modules else None,
        "litert": litert["version"] if litert else None, "litert_delegate": litert["delegate"] if litert else None,
        "numpy": np.__version__, "python": platform.python_version(),
        "threads": 1, "inter_op_threads": 1, "execution_mode": "sequential", "io_binding": True,
    }


# --------------------------------------------------------------------------- output

COLUMNS = ("candidate", "batch", "p50 us (95% CI)", "x floor", "teacher/cand (95% CI)", "params", "test acc", "size",
           "on-CPU")
COMPARE_COLUMNS = ("role precision", "batch", "onnxruntime p50 us (95% CI)", "LiteRT p50 us (95% CI)",
                   "ORT / LiteRT (95% CI)", "paired", "above own floor, ORT / LiteRT us", "test acc ORT / LiteRT")


def table_rows(results: dict[int, list[dict]]) -> list[tuple[str, ...]]:
    out = []
    for batch, rows in results.items():
        for r in rows:
            lo, hi = r["ci95_p50_us"]
            sp = r["speedup_vs_teacher"]
            slo, shi = r["speedup_vs_teacher_ci95"]
            out.append((
                r["name"], str(batch), f"{r['p50_us']:.2f} ({lo:.2f}-{hi:.2f})", f"{r['x_floor']:.2f}",
                "1 (reference)" if r["role"] == "teacher" else ("-" if r["role"] == "floor" else f"{sp:.1f} ({slo:.1f}-{shi:.1f})"),
                f"{r['parameters']:,}" if r["parameters"] is not None else "-",
                f"{r['accuracy']:.1%}" if r["accuracy"] is not None else "-",
                f"{r['size_bytes'] / 1024:.1f} KiB" if r["size_bytes"] is not None else "-",
                f"{r['on_cpu_share']:.0%}",
            ))
    return out


def compare_rows(comparison: list[dict]) -> list[tuple[str, ...]]:
    def acc(v):
        return f"{v:.1%}" if v is not None else "-"

    out = []
    for c in comparison:
        (olo, ohi), (llo, lhi), (rlo, rhi) = c["onnxruntime_ci95_p50_us"], c["litert_ci95_p50_us"], c["ratio_ci95"]
        above = c["above_floor"]
        out.append((
            f"{c['role']} {c['precision']}", str(c["batch"]),
            f"{c['onnxruntime_p50_us']:.2f} ({olo:.2f}-{ohi:.2f})", f"{c['litert_p50_us']:.2f} ({llo:.2f}-{lhi:.2f})",
            f"{c['ratio']:.2f} ({rlo:.2f}-{rhi:.2f})", f"{c['ratio_paired']['ratio']:.2f}",
            "-" if above is None else f"{above['onnxruntime_us']:.2f} / {above['litert_us']:.2f}"
            + (f" = {above['ratio']:.2f}" if above["ratio"] is not None else ""),
            f"{acc(c['accuracy']['onnxruntime'])} / {acc(c['accuracy']['litert'])}",
        ))
    return out


def print_report(doc: dict, markdown: bool) -> None:
    rows = table_rows({int(b): r for b, r in doc["results"].items()})
    m = doc["machine"]
    flags = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in m["int8_flags"].items())
    litert = f"; LiteRT {m['litert']} (XNNPACK, 1 thread, invoke())" if m.get("litert") else ""
    ort = f"onnxruntime {m['onnxruntime']} (1 thread, IOBinding)" if m.get("onnxruntime") else "no onnxruntime"
    title = (f"demo speed-up: {m['cpu_model']} ({m['logical_cores']} logical cores; {flags}), {ort}{litert}. "
             "x floor and teacher/cand are within each runtime; TFLite models have a fixed batch of 1, so rows at "
             "other batch sizes are ONNX only")
    print_table(title, COLUMNS, rows)
    if doc["runtime_comparison"]:
        print_table("same artifact, onnxruntime vs LiteRT (ratio > 1: LiteRT faster)", COMPARE_COLUMNS,
                    compare_rows(doc["runtime_comparison"]))
    n = doc["measurement"]
    noise = doc["machine_noise"]
    print(f"{n['rounds']} interleaved rounds in {n['seconds']:.1f} s ({n['total_seconds']:.1f} s in all); "
          f"machine speed during the run ({noise['probe']}): {noise['p10']:.2f}-{noise['p90']:.2f} us (p10-p90), "
          f"min {noise['min']:.2f}, max {noise['max']:.2f}; on CPU {noise['on_cpu_share']:.1%} of the wall time; "
          f"load average {n['loadavg_before']} before, {n['loadavg_after']} after")
    print()
    for v in doc["goals"]:
        flag = "" if v.get("ci_clear_of_threshold", True) else "  (the 95% CI straddles the threshold: marginal)"
        print(f"  {v['verdict']:<7} {v['goal']}: {v['detail']}{flag}")
    print()
    for note in doc["notes"]:
        print(f"  - {note}")
    if markdown:
        print_markdown(COLUMNS, rows)
        print_markdown(("goal", "verdict", "measured"), [(v["goal"], v["verdict"], v["detail"]) for v in doc["goals"]])
        if doc["runtime_comparison"]:
            print_markdown(COMPARE_COLUMNS, compare_rows(doc["runtime_comparison"]))


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    run_dir = args.run_dir.resolve()
    records, runtimes, notes = ensure_demo(run_dir, args.runtimes)
    modules, import_notes = import_runtimes(runtimes)
    notes += import_notes
    records = [r for r in records if r["runtime"] in modules]
    x_test, y_test = test_split(run_dir)

    accuracies = {r["name"]: test_accuracy(r, load(r, modules), x_test, y_test) for r in records}
    slots, skipped = [], []
    for batch in args.batch_sizes:
        for rec in records:
            model = load(rec, modules)
            fixed = fixed_batch(model)
            if fixed is not None and fixed != batch:
                skipped.append((rec, batch, fixed))
                continue
            slots.append(Slot(rec, batch, x_test, model))
    for runtime in sorted({r["runtime"] for r, _, _ in skipped}, key=RUNTIME_ORDER.get):
        gone = sorted({b for r, b, _ in skipped if r["runtime"] == runtime})
        fixed = sorted({f for r, _, f in skipped if r["runtime"] == runtime})
        notes.append(f"{RUNTIME_LABEL[runtime]} not timed at batch {', '.join(map(str, gone))}: its artifacts have a "
                     f"fixed batch of {', '.join(map(str, fixed))}, so rows at that batch are for the other runtime only")
    for s in slots:
        s.warm()
        s.plan(args.block, args.max_block_ms)
    est = args.rounds * sum(s.calls * s.per_call_ns for s in slots) / 1e9
    print(f"{len(slots)} (artifact, batch) slots of {len(records)} artifacts ({', '.join(modules)}) x batch "
          f"{args.batch_sizes}: {args.rounds} rounds, ~{est:.0f} s of timed calls (+ loop overhead)", flush=True)
    load_before = loadavg()
    seconds = measure(slots, args.rounds, args.seed)
    load_after = loadavg()

    results = analyse(slots, accuracies, args.seed)
    comparison = runtime_comparison(results, slots, args.seed)
    notes += precision_notes(slots, results, args.seed)
    for rec in records:
        measured, stored = accuracies[rec["name"]], (rec.get("parity") or {}).get("accuracy")
        if measured is not None and stored is not None and abs(measured - stored) > 1e-9:
            notes.append(f"{rec['name']}: test accuracy measured here ({measured:.4f}) differs from artifact.json "
                         f"({stored:.4f}): the record does not describe this file or split")
    first = {}
    for s in slots:
        first.setdefault(s.record["name"], s)
    for s in first.values():
        if not s.sha256_ok:
            notes.append(f"{s.record['name']}: the loaded {s.record['path'].name} does not match the sha256 in its "
                         "artifact.json (being rewritten by another run?): its parameters/accuracy columns may not "
                         "describe it")
    goals = verdicts(results, args.batch_sizes, args.runtimes)
    for v in goals:
        best = next((r for r in results.get(v["batch"], []) if r["name"] == v.get("candidate")), None)
        if best and best["quantized_io"]:
            notes.append(f"{best['name']} (the fastest {RUNTIME_LABEL[best['runtime']]} student) has integer I/O "
                         f"{best['quantized_io']}: its timed invoke() excludes quantizing the float input and "
                         "dequantizing the output, which LiteRTModel.feed()/fetch() do in numpy outside the call")
            break
    for batch, rows in results.items():
        for r in rows:
            if r["undelegated_ops"]:
                notes.append(f"{r['name']}: operators outside XNNPACK (LiteRT's built-in kernels): {r['undelegated_ops']}")
    noise = machine_noise(slots)
    if noise["on_cpu_share"] < 0.97:
        notes.append(f"this process was on the CPU only {noise['on_cpu_share']:.1%} of the timed wall time: another "
                     "process competed for the core (see the on-CPU column; long calls such as the teachers "
                     "absorb the preemptions in their median, short calls only in their tail)")
    unstable = [f"{r['name']} b{b}" for b, rows in results.items() for r in rows if r["stats"]["unstable"]]
    if unstable:
        which = "all candidates" if len(unstable) == len(slots) else ", ".join(unstable)
        notes.append(f"summarize() flags {which} as unstable (reasons per row in the JSON; drift = the machine "
                     "changed speed during the run, which interleaving spreads over all candidates alike)")

    doc = {
        "schema": SCHEMA,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run_dir": str(run_dir),
        "machine": machine_info(modules, slots),
        "measurement": {
            "rounds": args.rounds, "block_max_calls": args.block, "block_max_ms": args.max_block_ms,
            "batch_sizes": args.batch_sizes, "runtimes": list(modules), "seed": args.seed, "seconds": seconds,
            "method": "one process; per round one block of every (artifact, batch) of every runtime in random order; "
                      "1 untimed call then timed calls (perf_counter_ns), gc disabled; models loaded by "
                      "edgekd.bench.runner: OrtModel (1 intra-op thread, sequential; timed call "
                      "sess.run_with_iobinding(binding)) and LiteRTModel (XNNPACK, 1 thread; input set once, an "
                      "int8 input quantized with its scale/zero point; timed call Interpreter.invoke(interpreter))",
            "inputs": f"test split of the run's data set, first rows ({len(x_test)} available)",
            "loadavg_before": load_before, "loadavg_after": load_after,
        },
        "goals": goals,
        "notes": notes,
        "machine_noise": noise,
        "results": {str(b): rows for b, rows in results.items()},
        "runtime_comparison": comparison,
    }
    doc["measurement"]["total_seconds"] = time.perf_counter() - started  # the whole script up to here
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output, doc)  # temp file beside it + os.replace
    os.chmod(args.output, 0o644)  # mkstemp made it owner-only
    print_report(doc, args.markdown)
    print(f"\nwrote {args.output}")
    failed = [v for v in doc["goals"] if v["verdict"] == "FAIL"]
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
