"""Measured performance check of the demo: is the distilled student fast enough, next to the runtime floor?

    .venv/bin/python benchmarks/demo_speedup.py            # or: make bench
    .venv/bin/python benchmarks/demo_speedup.py --rounds 600 --batch-sizes 1,8,64 --markdown

Reads the ONNX artifacts of a demo run directory (default export/demo; when they are missing
it runs `edgekd demo` first), times every candidate (the Identity floor, the teacher FP32,
every student precision, the scratch baseline) in ONE process at each batch size, and checks
the demo's goals:

  1. the fastest student at batch 1 is within 1.5x of the floor (the runtime's per-call cost);
  2. teacher FP32 / fastest student >= 4x at batch 1;
  3. teacher FP32 / fastest student >= 20x at batch 64.

How it measures (and why):
- Interleaved.  This VM switches between a fast and a ~1.3-1.9x slower state every few
  seconds, so timing A then B in long blocks would compare two machines.  Each round runs a
  short block of calls of every (candidate, batch) in a fresh random order; a block is at most
  --block calls and at most --max-block-ms long, so one round takes ~0.1 s and every
  candidate sees the same mix of machine states.
- The runner's own call.  Sessions are built by edgekd.bench.runner.OrtModel (what the
  device-side runner uses): one intra-op thread, one inter-op thread, sequential, CPU provider,
  input bound once as an OrtValue, output bound to CPU; one timed call is
  `sess.run_with_iobinding(binding)` between two time.perf_counter_ns reads, gc disabled.
- Real inputs: the test split of the run's data set (digits), rows repeated if a batch needs more.
- Statistics from edgekd.bench.stats: summarize() for p50 and its bootstrap 95% CI,
  compare() for ratios (teacher / candidate, candidate / floor) with bootstrap 95% CIs.

Writes benchmarks/results/demo_speedup.json (schema edgekd.benchmark.demo_speedup/1) atomically.
Exit status: 0, or 1 with --check when a goal fails, 2 when the run directory cannot be used.
"""

from __future__ import annotations

import argparse
import gc
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

from edgekd.bench import stats  # noqa: E402
from edgekd.bench.runner import OrtModel, system_info  # noqa: E402
from edgekd.rundir import atomic_write_json, sha256_file  # noqa: E402

SCHEMA = "edgekd.benchmark.demo_speedup/1"
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "demo_speedup.json"
ROLE_ORDER = {"floor": 0, "teacher": 1, "student": 2, "scratch": 3}
PRECISION_ORDER = {"fp32": 0, "int8_static": 1, "int8_dynamic": 2}
INT8_FLAGS = ("avx2", "avx512_vnni", "avx_vnni", "amx_int8")

# Goals of the demo (issue acceptance text).  Each is (id, text, batch, kind, threshold).
GOALS = (
    ("student_vs_floor_b1", "fastest student at batch 1 within 1.5x of the floor", 1, "x_floor_max", 1.5),
    ("teacher_vs_student_b1", "teacher FP32 / fastest student >= 4x at batch 1", 1, "speedup_min", 4.0),
    ("teacher_vs_student_b64", "teacher FP32 / fastest student >= 20x at batch 64", 64, "speedup_min", 20.0),
)


# --------------------------------------------------------------------------- inputs

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", type=Path, default=REPO / "export" / "demo",
                   help="demo run directory with artifacts/*/model.onnx (default: export/demo)")
    p.add_argument("--rounds", type=int, default=400, help="interleaved rounds (default: 400, ~40 s on the 2-vCPU EPYC VM)")
    p.add_argument("--block", type=int, default=300, help="max timed calls per candidate per round (default: 300)")
    p.add_argument("--max-block-ms", type=float, default=20.0,
                   help="cap on one block's duration, so a slow candidate cannot stretch a round (default: 20)")
    p.add_argument("--batch-sizes", default="1,64", help="comma-separated batch sizes (default: 1,64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the block order and the bootstraps")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="result JSON (default: %(default)s)")
    p.add_argument("--markdown", action="store_true", help="also print the table as Markdown (for README.md)")
    p.add_argument("--check", action="store_true", help="exit 1 when a goal fails")
    args = p.parse_args(argv)
    try:
        args.batch_sizes = sorted({int(b) for b in args.batch_sizes.split(",") if b.strip()})
    except ValueError:
        p.error(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}")
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        p.error("--batch-sizes needs at least one batch size >= 1")
    if args.rounds < 1 or args.block < 1 or args.max_block_ms <= 0:
        p.error("--rounds and --block must be >= 1, --max-block-ms > 0")
    return args


def find_artifacts(run_dir: Path) -> list[dict]:
    """artifact.json records of every ONNX artifact, floor first, then teacher, students, scratch."""
    records = []
    for record_path in sorted(run_dir.glob("artifacts/*/artifact.json")):
        record = json.loads(record_path.read_text(encoding="utf-8"))
        model = record_path.parent / record.get("file", "model.onnx")
        if record.get("format") == "onnx" and model.is_file() and record.get("role") in ROLE_ORDER:
            records.append({**record, "path": model})
    records.sort(key=lambda r: (ROLE_ORDER[r["role"]], PRECISION_ORDER.get(r["precision"], 9), r["name"]))
    return records


def fail(what: str, fix: str) -> None:
    print(f"error: {what}\nfix: {fix}", file=sys.stderr)
    sys.exit(2)


def ensure_demo(run_dir: Path) -> list[dict]:
    """The run's artifacts; when they are missing, run `edgekd demo` (only possible for a run named 'demo')."""
    records = find_artifacts(run_dir)
    roles = {r["role"] for r in records}
    if {"floor", "teacher", "student"} <= roles:
        return records
    edgekd = Path(sys.executable).parent / "edgekd"
    if run_dir.name != "demo" or not edgekd.is_file():
        fail(f"{run_dir} has no floor/teacher/student ONNX artifacts (found roles: {sorted(roles) or 'none'})",
             "run `make demo` (or `.venv/bin/edgekd run RECIPE` for another run directory) first, or pass --run-dir")
    argv = [str(edgekd), "demo", "--output-dir", str(run_dir.parent)]
    print(f"{run_dir}: artifacts missing, running the demo first (about a minute): {' '.join(argv)}", flush=True)
    done = subprocess.run(argv, check=False)
    records = find_artifacts(run_dir)
    if done.returncode != 0 or not {"floor", "teacher", "student"} <= {r["role"] for r in records}:
        fail(f"`edgekd demo` exited {done.returncode} without producing the artifacts in {run_dir}",
             "run `make demo` and read its error")
    return records


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


# --------------------------------------------------------------------------- measurement

class Slot:
    """One (artifact, batch size): its own session and binding, and the latencies collected so far."""

    def __init__(self, record: dict, batch: int, x: np.ndarray):
        import onnxruntime as ort

        self.record, self.batch = record, batch
        self.model = OrtModel(ort, str(record["path"]), 1)  # the runner's session setup, 1 thread
        name = self.model.inputs[0]["name"]
        self.model.feed({name: batch_of(x, batch)})
        self.fn, self.arg = self.model.invoker()  # sess.run_with_iobinding, binding
        self.blocks: list[list[int]] = []  # per round: latencies in ns
        self.calls = 1
        self.wall_ns = self.cpu_ns = 0  # whole blocks: wall time and this process's CPU time
        self.sha256_ok = sha256_file(record["path"]) == record.get("sha256")

    def warm(self, min_calls: int = 50, min_seconds: float = 0.1) -> None:
        """Warm up and pick the block length: --block calls, but no longer than --max-block-ms."""
        fn, arg, pc = self.fn, self.arg, time.perf_counter_ns
        times = []
        start = pc()
        while len(times) < min_calls or pc() - start < min_seconds * 1e9:
            t0 = pc()
            fn(arg)
            times.append(pc() - t0)
        self.per_call_ns = float(np.median(times))

    def plan(self, block: int, max_block_ms: float) -> None:
        self.calls = max(3, min(block, int(max_block_ms * 1e6 / self.per_call_ns)))

    def run_block(self) -> None:
        fn, arg, pc, cpu = self.fn, self.arg, time.perf_counter_ns, time.process_time_ns
        c0, w0 = cpu(), pc()
        fn(arg)  # untimed: the previous block ran another session, so caches are cold for this one
        lat = [0] * self.calls
        for i in range(self.calls):
            t0 = pc()
            fn(arg)
            lat[i] = pc() - t0
        self.wall_ns += pc() - w0
        self.cpu_ns += cpu() - c0  # < wall when the OS ran something else on our core mid-block
        self.blocks.append(lat)

    @property
    def latencies(self) -> np.ndarray:
        return np.fromiter((v for b in self.blocks for v in b), dtype=np.int64)


def measure(slots: list[Slot], rounds: int, seed: int) -> float:
    """Interleave: every round runs one block of every slot in a fresh random order.  Returns seconds."""
    rng = np.random.default_rng(seed)
    gc.collect()
    gc.disable()  # a collection inside a block would be timed as model latency
    start = time.perf_counter()
    try:
        for r in range(rounds):
            for k in rng.permutation(len(slots)):
                slots[k].run_block()
            if sys.stderr.isatty() and (r + 1) % max(1, rounds // 20) == 0:
                print(f"\r  round {r + 1}/{rounds}", end="", file=sys.stderr, flush=True)
    finally:
        gc.enable()
        if sys.stderr.isatty():
            print("\r" + " " * 30 + "\r", end="", file=sys.stderr, flush=True)
    return time.perf_counter() - start


def test_accuracy(record: dict, x: np.ndarray, y: np.ndarray) -> float | None:
    """Top-1 test accuracy of the artifact through ORT (a check that artifact.json describes this file and split)."""
    if record["role"] == "floor":
        return None
    import onnxruntime as ort

    sess = ort.InferenceSession(str(record["path"]), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return float((logits.argmax(axis=1) == y).mean())


def paired_ratio(num: Slot, den: Slot, seed: int, n_boot: int = 2000) -> dict:
    """Median over rounds of (block median of num / block median of den): both blocks ran in the same round,
    so a machine-state change between rounds cancels.  A cross-check of compare(), which pools all calls."""
    r = np.array([np.median(a) / np.median(b) for a, b in zip(num.blocks, den.blocks)])
    rng = np.random.default_rng(seed)
    boot = np.median(rng.choice(r, size=(n_boot, r.size)), axis=1)
    return {"ratio": float(np.median(r)), "ci95": [float(v) for v in np.percentile(boot, [2.5, 97.5])]}


# --------------------------------------------------------------------------- analysis

def analyse(slots: list[Slot], batch_sizes: list[int], accuracies: dict[str, float | None], seed: int) -> dict:
    results: dict[int, list[dict]] = {}
    for batch in batch_sizes:
        here = [s for s in slots if s.batch == batch]
        floor = next(s for s in here if s.record["role"] == "floor")
        teacher = next(s for s in here if s.record["role"] == "teacher")
        rows = []
        for s in here:
            rec, lat = s.record, s.latencies
            summary = stats.summarize(lat, seed=seed)
            x_floor = stats.compare(lat, floor.latencies, seed=seed)  # ratio = candidate p50 / floor p50
            vs_teacher = stats.compare(teacher.latencies, lat, seed=seed)  # ratio = teacher p50 / candidate p50
            parity = rec.get("parity") or {}
            rows.append({
                "name": rec["name"], "role": rec["role"], "precision": rec["precision"],
                "parameters": rec.get("parameters"), "size_bytes": rec.get("size_bytes"), "sha256": rec.get("sha256"),
                "accuracy": parity.get("accuracy"), "accuracy_measured": accuracies.get(rec["name"]),
                "parity_passed": parity.get("passed"),
                "calls_per_block": s.calls, "on_cpu_share": s.cpu_ns / s.wall_ns, "sha256_matches_file": s.sha256_ok,
                "p50_us": summary["p50"], "ci95_p50_us": summary["ci95_p50"],
                "p90_us": summary["p90"], "p99_us": summary["p99"], "n": summary["n"],
                "x_floor": x_floor["ratio"], "x_floor_ci95": x_floor["ratio_ci95"],
                "x_floor_paired": paired_ratio(s, floor, seed) if s is not floor else None,
                "speedup_vs_teacher": vs_teacher["ratio"], "speedup_vs_teacher_ci95": vs_teacher["ratio_ci95"],
                "speedup_vs_teacher_significant": vs_teacher["significant"],
                "speedup_vs_teacher_paired": paired_ratio(teacher, s, seed) if s is not teacher else None,
                "stats": summary,
            })
        results[batch] = rows
    return results


def fastest_student(rows: list[dict]) -> dict:
    return min((r for r in rows if r["role"] == "student"), key=lambda r: r["p50_us"])


def verdicts(results: dict[int, list[dict]]) -> list[dict]:
    out = []
    for gid, text, batch, kind, threshold in GOALS:
        if batch not in results:
            out.append({"id": gid, "goal": text, "batch": batch, "verdict": "NOT RUN",
                        "detail": f"batch {batch} not in --batch-sizes"})
            continue
        best = fastest_student(results[batch])
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
        out.append({"id": gid, "goal": text, "batch": batch, "threshold": threshold, "candidate": best["name"],
                    "value": value, "ci95": ci, "paired": paired, "verdict": "PASS" if ok else "FAIL",
                    "ci_clear_of_threshold": clear, "detail": detail})
    return out


def precision_notes(results: dict[int, list[dict]], slots: list[Slot], seed: int) -> list[str]:
    """Which student precision is fastest per batch, and plainly whether INT8 is slower than FP32."""
    notes = []
    by_name = {(s.record["name"], s.batch): s for s in slots}
    for batch, rows in results.items():
        students = sorted((r for r in rows if r["role"] == "student"), key=lambda r: r["p50_us"])
        order = " < ".join(f"{r['precision']} {r['p50_us']:.2f} us" for r in students)
        notes.append(f"batch {batch}: fastest student precision is {students[0]['precision']} ({order})")
        fp32 = next((r for r in students if r["precision"] == "fp32"), None)
        for r in students:
            if fp32 is None or not r["precision"].startswith("int8"):
                continue
            c = stats.compare(by_name[(fp32["name"], batch)].latencies, by_name[(r["name"], batch)].latencies, seed=seed)
            slower = 1.0 / c["ratio"]
            if c["ratio"] < 1.0:
                lo, hi = 1.0 / c["ratio_ci95"][1], 1.0 / c["ratio_ci95"][0]
                notes.append(f"batch {batch}: INT8 is SLOWER than FP32: {r['precision']} takes {slower:.2f}x the FP32 "
                             f"time (95% CI {lo:.2f}-{hi:.2f}{'' if c['significant'] else ', within noise'})")
            else:
                notes.append(f"batch {batch}: {r['precision']} is {c['ratio']:.2f}x faster than FP32 "
                             f"(95% CI {c['ratio_ci95'][0]:.2f}-{c['ratio_ci95'][1]:.2f})")
    return notes


def machine_noise(slots: list[Slot]) -> dict:
    """How much the machine's speed moved during the run, seen by the floor at the smallest batch."""
    floor = min((s for s in slots if s.record["role"] == "floor"), key=lambda s: s.batch)
    med = np.array([np.median(b) for b in floor.blocks]) / 1e3
    p = np.percentile(med, [0, 10, 50, 90, 100])
    return {"probe": f"{floor.record['name']} batch {floor.batch}, median of each round's block (us)",
            "min": p[0], "p10": p[1], "p50": p[2], "p90": p[3], "max": p[4], "p90_over_p10": p[3] / p[1],
            "on_cpu_share": sum(s.cpu_ns for s in slots) / sum(s.wall_ns for s in slots)}


def loadavg() -> str | None:
    """1/5/15-minute load averages: > ~1 on this 2-core VM means something else was running."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return None


def machine_info() -> dict:
    import onnxruntime as ort

    system = system_info()  # the runner's device description (CPU model, flags, governor, affinity)
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() in ("flags", "features"):
                flags.update(value.split())
    except OSError:
        pass
    return {
        "cpu_model": system["cpu_model"], "logical_cores": os.cpu_count(), "machine": system["machine"],
        "kernel": system["release"], "governor": system["governor"], "affinity": system["affinity"],
        "int8_flags": {f: f in flags for f in INT8_FLAGS}, "cpu_features": system["cpu_features"],
        "onnxruntime": ort.__version__, "numpy": np.__version__, "python": platform.python_version(),
        "threads": 1, "inter_op_threads": 1, "execution_mode": "sequential", "io_binding": True,
    }


# --------------------------------------------------------------------------- output

COLUMNS = ("candidate", "batch", "p50 us (95% CI)", "x floor", "teacher/cand (95% CI)", "params", "test acc", "size",
           "on-CPU")


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


def print_report(doc: dict, markdown: bool) -> None:
    rows = table_rows({int(b): r for b, r in doc["results"].items()})
    m = doc["machine"]
    flags = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in m["int8_flags"].items())
    title = (f"demo speed-up: {m['cpu_model']} ({m['logical_cores']} logical cores; {flags}), "
             f"onnxruntime {m['onnxruntime']}, 1 thread, IOBinding")
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, title_justify="left")
        for i, c in enumerate(COLUMNS):
            table.add_column(c, justify="left" if i == 0 else "right")
        for r in rows:
            table.add_row(*r)
        Console(width=None if sys.stdout.isatty() else 150).print(table)
    except ImportError:
        print(title)
        print(" | ".join(COLUMNS))
        for r in rows:
            print(" | ".join(r))
    n = doc["measurement"]
    noise = doc["machine_noise"]
    print(f"{n['rounds']} interleaved rounds in {n['seconds']:.1f} s; machine speed during the run "
          f"(floor block medians): {noise['p10']:.2f}-{noise['p90']:.2f} us (p10-p90), "
          f"min {noise['min']:.2f}, max {noise['max']:.2f}; on CPU {noise['on_cpu_share']:.1%} of the wall time; "
          f"load average {n['loadavg_before']} before, {n['loadavg_after']} after")
    print()
    for v in doc["goals"]:
        flag = "" if v.get("ci_clear_of_threshold", True) else "  (the 95% CI straddles the threshold: marginal)"
        print(f"  {v['verdict']:<5} {v['goal']}: {v['detail']}{flag}")
    print()
    for note in doc["notes"]:
        print(f"  - {note}")
    if markdown:
        print("\n| " + " | ".join(COLUMNS) + " |\n|" + "|".join("---" for _ in COLUMNS) + "|")
        for r in rows:
            print("| " + " | ".join(r) + " |")
        print("\n| goal | verdict | measured |\n|---|---|---|")
        for v in doc["goals"]:
            print(f"| {v['goal']} | {v['verdict']} | {v['detail']} |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run_dir = args.run_dir.resolve()
    records = ensure_demo(run_dir)
    x_test, y_test = test_split(run_dir)

    accuracies = {r["name"]: test_accuracy(r, x_test, y_test) for r in records}
    slots = [Slot(rec, batch, x_test) for batch in args.batch_sizes for rec in records]
    for s in slots:
        s.warm()
        s.plan(args.block, args.max_block_ms)
    est = args.rounds * sum(s.calls * s.per_call_ns for s in slots) / 1e9
    print(f"{len(records)} artifacts x batch {args.batch_sizes}: {args.rounds} rounds, "
          f"~{est:.0f} s of timed calls (+ loop overhead)", flush=True)
    load_before = loadavg()
    seconds = measure(slots, args.rounds, args.seed)
    load_after = loadavg()

    results = analyse(slots, args.batch_sizes, accuracies, args.seed)
    notes = precision_notes(results, slots, args.seed)
    for rec in records:
        measured, stored = accuracies[rec["name"]], (rec.get("parity") or {}).get("accuracy")
        if measured is not None and stored is not None and abs(measured - stored) > 1e-9:
            notes.append(f"{rec['name']}: test accuracy measured here ({measured:.4f}) differs from artifact.json "
                         f"({stored:.4f}): the record does not describe this file or split")
    for s in slots:
        if not s.sha256_ok and s.batch == args.batch_sizes[0]:
            notes.append(f"{s.record['name']}: the loaded model.onnx does not match the sha256 in its artifact.json "
                         "(being rewritten by another run?): its parameters/accuracy columns may not describe it")
    noise = machine_noise(slots)
    if noise["on_cpu_share"] < 0.97:
        notes.append(f"this process was on the CPU only {noise['on_cpu_share']:.1%} of the timed wall time: another "
                     "process competed for the core (see the on-CPU column; long calls such as the teacher at "
                     "batch 64 absorb the preemptions in their median, short calls only in their tail)")
    unstable = [f"{r['name']} b{b}" for b, rows in results.items() for r in rows if r["stats"]["unstable"]]
    if unstable:
        which = "all candidates" if len(unstable) == len(slots) else ", ".join(unstable)
        notes.append(f"summarize() flags {which} as unstable (reasons per row in the JSON; drift = the machine "
                     "changed speed during the run, which interleaving spreads over all candidates alike)")

    doc = {
        "schema": SCHEMA,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run_dir": str(run_dir),
        "machine": machine_info(),
        "measurement": {
            "rounds": args.rounds, "block_max_calls": args.block, "block_max_ms": args.max_block_ms,
            "batch_sizes": args.batch_sizes, "seed": args.seed, "seconds": seconds,
            "method": "one process; per round one block of every (artifact, batch) in random order; "
                      "1 untimed call then timed sess.run_with_iobinding calls (perf_counter_ns), gc disabled; "
                      "sessions from edgekd.bench.runner.OrtModel (1 intra-op thread, sequential)",
            "inputs": f"test split of the run's data set, first rows ({len(x_test)} available)",
            "loadavg_before": load_before, "loadavg_after": load_after,
        },
        "goals": verdicts(results),
        "notes": notes,
        "machine_noise": noise,
        "results": {str(b): rows for b, rows in results.items()},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output, doc)  # temp file beside it + os.replace
    os.chmod(args.output, 0o644)  # mkstemp made it owner-only
    print_report(doc, args.markdown)
    print(f"\nwrote {args.output}")
    failed = [v for v in doc["goals"] if v["verdict"] == "FAIL"]
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
