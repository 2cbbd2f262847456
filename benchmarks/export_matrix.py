"""Export matrix: every format x precision (and INT4 knob) of the demo's teacher and KD student, measured.

    .venv/bin/python benchmarks/export_matrix.py
    .venv/bin/python benchmarks/export_matrix.py --rounds 2000 --markdown --check

Rebuilds the demo's teacher and KD student from their checkpoints (export/demo/checkpoints/{teacher,student}.pt;
when they are missing it runs `edgekd demo` first), exports each with the FORMATS backends into a work folder:

  ONNX    fp32, int8_static, int8_dynamic, int4 x (block_size 32/64/128) x (accuracy_level 0/4)
  TFLite  fp32, int8_dynamic, int8_static, int4 per-channel, int4 block-wise 32 and 64 (the sizes ai-edge-quantizer names)

(quantized files start from the format's FP32 file, calibrated on 256 training rows where needed), and for
each artifact records: file size and % of the model's FP32 file in that format, the share of weight bytes
stored in 4 and 8 bits (backend.inspect().weight_bits), parity against PyTorch on the test split
(edgekd.export.verify.parity: top-1 agreement, accuracy, max |logit error|), conversion time, and the host p50
latency at batch 1 on one thread in its own runtime, next to that runtime's floor (an Identity graph written by
the backend's write_floor).

How it times (as benchmarks/demo_speedup.py, and why):
- Interleaved, in ONE process.  This VM switches between a fast and a ~1.3-1.9x slower state every few
  seconds; each round runs one short block of every artifact (both floors included) in a fresh random
  order, so every artifact sees the same mix of machine states.  A block is at most --block calls and at
  most --max-block-ms long, and starts with one untimed call (the block before ran another model).
- The runner's own call.  Models are loaded by edgekd.bench.runner.load_model (OrtModel: 1 intra-op and
  1 inter-op thread, sequential, input bound once with IOBinding, timed `sess.run_with_iobinding`;
  LiteRTModel: num_threads=1, default XNNPACK delegate, input set once, timed `Interpreter.invoke`).
- perf_counter_ns around each call, gc disabled.  Statistics from edgekd.bench.stats: summarize() for p50 and
  its bootstrap 95% CI, compare() for ratios; INT4-vs-INT8 also gets a paired per-round estimate.

Checks (PASS/FAIL from the measured values):
  1. every INT8 artifact: top-1 agreement with PyTorch >= 99%;
  2. every INT8 artifact: accuracy drop <= 1 point vs FP32 (PyTorch FP32 and the same format's FP32 file);
  3. every INT4 artifact: agreement >= 97%;
  4. teacher: every INT8 file <= 30% of its FP32 file (same format);
  5. teacher: every INT4 file <= 20% of its FP32 file (same format).
Findings (no threshold): the fastest INT4 setting per model and format, and whether INT4 is slower than INT8.

Writes benchmarks/results/export_matrix.json (schema edgekd.benchmark.export_matrix/1) atomically.
Exit status: 0, or 1 with --check when a check fails, 2 when the checkpoints cannot be used.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing
sys.path.insert(0, str(REPO / "benchmarks"))  # interleave.py: the timing shared by the benchmark scripts

from edgekd.bench import stats  # noqa: E402
from edgekd.bench.runner import import_runtime, load_model, system_info  # noqa: E402
from edgekd.rundir import atomic_write_json, sha256_file  # noqa: E402

import interleave  # noqa: E402
from interleave import loadavg, measure, paired_ratio, print_table  # noqa: E402

SCHEMA = "edgekd.benchmark.export_matrix/1"
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "export_matrix.json"
DEFAULT_CHECKPOINTS = REPO / "export" / "demo" / "checkpoints"
ROLES = ("teacher", "student")

# Thresholds of the checks.
MIN_AGREEMENT_INT8 = 0.99
MAX_ACC_DROP_INT8_POINTS = 1.0
MIN_AGREEMENT_INT4 = 0.97
MAX_SIZE_SHARE = {"int8": 0.30, "int4": 0.20}  # teacher: quantized file / FP32 file, same format


@dataclass(frozen=True)
class Variant:
    """One cell of the matrix: a format, a precision and the knobs that make this variant."""

    fmt: str
    precision: str  # the backend's precision: fp32 | int8_static | int8_dynamic | int4
    label: str  # name suffix, e.g. int4-b32-a4
    options: dict = field(default_factory=dict)  # ExportOptions overrides
    knobs: dict = field(default_factory=dict)  # what to report

    @property
    def family(self) -> str:
        return "int8" if self.precision.startswith("int8") else self.precision


def variants() -> list[Variant]:
    out = [Variant("onnx", "fp32", "fp32"), Variant("onnx", "int8_static", "int8_static"),
           Variant("onnx", "int8_dynamic", "int8_dynamic")]
    for block in (32, 64, 128):
        for level in (0, 4):
            out.append(Variant("onnx", "int4", f"int4-b{block}-a{level}",
                               {"int4_block_size": block, "int4_accuracy_level": level},
                               {"block_size": block, "accuracy_level": level}))
    out += [Variant("tflite", "fp32", "fp32"), Variant("tflite", "int8_dynamic", "int8_dynamic"),
            Variant("tflite", "int8_static", "int8_static")]
    for block in (None, 32, 64):
        out.append(Variant("tflite", "int4", "int4-pc" if block is None else f"int4-b{block}",
                           {"tflite_int4_block_size": block},
                           {"block_size": block, "granularity": "per-channel" if block is None else "block-wise"}))
    return out


# The settings the project uses when a recipe does not say (ExportOptions defaults), marked in the table.
DEFAULT_LABELS = {("onnx", "int4-b32-a4"), ("tflite", "int4-pc")}


# --------------------------------------------------------------------------- inputs

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", type=Path, default=DEFAULT_CHECKPOINTS,
                   help="folder with teacher.pt and student.pt (default: export/demo/checkpoints)")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="where to write the artifacts (kept); default: a temporary folder, removed at exit")
    p.add_argument("--rounds", type=int, default=1000,
                   help="interleaved rounds (default: 1000, ~75 s on the 2-vCPU EPYC VM; ~2 min in all)")
    p.add_argument("--block", type=int, default=200, help="max timed calls per artifact per round (default: 200)")
    p.add_argument("--max-block-ms", type=float, default=4.0,
                   help="cap on one block's duration, so the teacher cannot stretch a round (default: 4)")
    p.add_argument("--calibration-samples", type=int, default=256,
                   help="training rows for static INT8 calibration (default: 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration rows, block order and bootstraps")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="result JSON (default: %(default)s)")
    p.add_argument("--markdown", action="store_true", help="also print the tables as Markdown (for README.md)")
    p.add_argument("--check", action="store_true", help="exit 1 when a check fails")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.block < 1 or args.max_block_ms <= 0 or args.calibration_samples < 1:
        p.error("--rounds, --block and --calibration-samples must be >= 1, --max-block-ms > 0")
    return args


def fail(what: str, fix: str) -> None:
    print(f"error: {what}\nfix: {fix}", file=sys.stderr)
    sys.exit(2)


def ensure_checkpoints(folder: Path) -> dict[str, Path]:
    """teacher.pt and student.pt; when missing from the demo's folder, run `edgekd demo` (about a minute)."""
    paths = {role: folder / f"{role}.pt" for role in ROLES}
    if all(p.is_file() for p in paths.values()):
        return paths
    edgekd = Path(sys.executable).parent / "edgekd"
    run_dir = folder.parent
    if folder.resolve() != DEFAULT_CHECKPOINTS.resolve() or not edgekd.is_file():
        fail(f"missing {', '.join(str(p) for p in paths.values() if not p.is_file())}",
             "run make demo (or `.venv/bin/edgekd demo`) first, or pass --checkpoints FOLDER")
    argv = [str(edgekd), "demo", "--output-dir", str(run_dir.parent)]
    print(f"{folder}: checkpoints missing, running the demo first (about a minute): {' '.join(argv)}", flush=True)
    done = subprocess.run(argv, check=False)
    if done.returncode != 0 or not all(p.is_file() for p in paths.values()):
        fail(f"`edgekd demo` exited {done.returncode} without writing {folder}/teacher.pt and student.pt",
             "run make demo and read its error")
    return paths


def rebuild(path: Path, role: str):
    """(model in eval mode, checkpoint payload) from an edgekd checkpoint's recorded spec."""
    from edgekd.checkpoints import load_weights, read_checkpoint
    from edgekd.errors import EdgeKDError
    from edgekd.models import create_model

    try:
        payload = read_checkpoint(path)
        spec = payload.get("spec")
        if not spec or not (payload.get("meta") or {}).get("data"):
            fail(f"{path} records no architecture/data set (a bare state dict)", "run make demo to rewrite it")
        model = create_model(spec["family"], in_shape=tuple(spec["in_shape"]), num_classes=spec["num_classes"],
                             **spec["params"])
        load_weights(model, path, role=role)
    except EdgeKDError as exc:
        fail(f"cannot rebuild the {role} from {path}: {exc}", "run make demo to rewrite the checkpoints")
    return model.eval(), payload


# --------------------------------------------------------------------------- export

def export_all(models: dict[str, Any], splits, work: Path, calibration: np.ndarray) -> list[dict]:
    """Every (role, variant): export, inspect, parity. A failed conversion is recorded, not fatal."""
    from edgekd.distill.trainer import predict_logits
    from edgekd.errors import EdgeKDError
    from edgekd.export.formats import FORMATS, ExportOptions
    from edgekd.export.verify import onnx_predict, parity
    from edgekd.models import count_parameters

    base = ExportOptions(calibration=calibration)
    rows: list[dict] = []
    for role, model in models.items():
        reference = predict_logits(model, splits.x_test)
        for v in variants():
            backend = FORMATS[v.fmt]()
            name = f"{role}-{v.fmt}-{v.label}"
            path = work / name / f"model{backend.suffix}"
            fp32_path = work / f"{role}-{v.fmt}-fp32" / f"model{backend.suffix}"
            row: dict[str, Any] = {
                "name": name, "role": role, "format": v.fmt, "runtime": backend.runtime, "precision": v.precision,
                "family": v.family, "variant": v.label, "knobs": v.knobs, "project_default": (v.fmt, v.label) in
                DEFAULT_LABELS, "parameters": count_parameters(model), "path": path}
            print(f"  export {name} ...", end="", flush=True)
            started = time.perf_counter()
            try:
                if v.precision == "fp32":
                    backend.export_fp32(model, splits.input_shape, path, base)
                    row["quantization"] = None
                else:
                    row["quantization"] = backend.quantize(fp32_path, path, v.precision, replace(base, **v.options))
            except Exception as exc:  # noqa: BLE001 - record any converter failure and go on with the matrix
                kind = "" if isinstance(exc, EdgeKDError) else f"{type(exc).__name__}: "
                row.update(error=f"{kind}{exc}".strip(), conversion_seconds=time.perf_counter() - started)
                print(f" FAILED: {row['error'].splitlines()[0]}", flush=True)
                rows.append(row)
                continue
            row["conversion_seconds"] = time.perf_counter() - started
            info = backend.inspect(path)
            outputs = backend.predict(path, splits.x_test)
            check = parity(outputs, reference, splits.y_test, num_classes=splits.num_classes,
                           threshold=MIN_AGREEMENT_INT4 if v.precision == "int4" else MIN_AGREEMENT_INT8,
                           reference_name=f"PyTorch {role} (fp32)")
            bits = info.weight_bits
            row.update(
                size_bytes=path.stat().st_size, sha256=sha256_file(path),
                share_4bit=bits["share_4bit"], share_8bit=bits["share_8bit"],
                weight_bytes={k: bits[k] for k in ("int4_bytes", "int8_bytes", "float_bytes", "other_bytes")},
                op_histogram=info.op_histogram, inputs=info.inputs,
                parity=check.model_dump())
            # What a device runs: batch 1.  TFLite's predict already feeds one row at a time; onnx_predict feeds
            # batches of 256, and dynamic INT8 takes its activation scales from the whole batch, so for ONNX the
            # top-1 agreement is measured again one row at a time.
            one = outputs if v.fmt == "tflite" else onnx_predict(path, splits.x_test, batch_size=1)
            row["agreement_batch1"] = float((one.argmax(1) == reference.argmax(1)).mean())
            row["accuracy_batch1"] = float((one.argmax(1) == splits.y_test).mean())
            row["first_row_logits"] = one[0].astype(float).tolist()  # the timed call is checked against it
            print(f" {row['conversion_seconds']:.2f} s, {row['size_bytes'] / 1024:.1f} KiB, "
                  f"agreement {check.agreement:.1%}", flush=True)
            rows.append(row)
    by_name = {r["name"]: r for r in rows}
    for r in rows:  # size and accuracy against the same model's FP32 file in the same format
        fp32 = by_name.get(f"{r['role']}-{r['format']}-fp32")
        ok = "size_bytes" in r and fp32 is not None and "size_bytes" in fp32
        r["size_vs_fp32"] = r["size_bytes"] / fp32["size_bytes"] if ok else None
        r["acc_drop_vs_fp32_file_points"] = (fp32["parity"]["accuracy"] - r["parity"]["accuracy"]) * 100 if ok else None
        r["acc_drop_vs_pytorch_points"] = ((r["parity"]["reference_accuracy"] - r["parity"]["accuracy"]) * 100
                                           if "parity" in r else None)
    return rows


def write_floors(work: Path, in_shape: tuple[int, ...]) -> list[dict]:
    from edgekd.export.formats import FORMATS, ExportOptions

    floors = []
    for fmt in ("onnx", "tflite"):
        backend = FORMATS[fmt]()
        path = work / f"floor-{fmt}" / f"model{backend.suffix}"
        backend.write_floor(path, in_shape, ExportOptions())
        floors.append({"name": f"floor-{fmt}", "role": "floor", "format": fmt, "runtime": backend.runtime,
                       "precision": "fp32", "family": "floor", "variant": "identity", "path": path,
                       "size_bytes": path.stat().st_size, "sha256": sha256_file(path)})
    return floors


# --------------------------------------------------------------------------- measurement

class Slot(interleave.Slot):
    """One artifact loaded by the runner's adapter, its (fn, arg) call and the latencies collected so far."""

    def __init__(self, row: dict, x1: np.ndarray, modules: dict[str, Any]):
        self.row = row
        model = load_model(row["runtime"], modules[row["runtime"]], str(row["path"]), 1)
        model.feed({model.inputs[0]["name"]: x1})
        super().__init__(model)
        self.fn(self.arg)
        out = np.asarray(self.model.fetch()[0], dtype=np.float64).reshape(-1)
        ref = row.get("first_row_logits")
        # The timed call computes what parity checked (same file, same first test row): max |difference|.
        self.adapter_vs_predict = float(np.abs(out - np.asarray(ref)).max()) if ref is not None else None


# --------------------------------------------------------------------------- analysis

def analyse(slots: list[Slot], seed: int) -> None:
    """Fill each row's latency fields: p50 + CI, x its runtime's floor, FP32 (same model, format) / this."""
    by_name = {s.row["name"]: s for s in slots}
    for s in slots:
        r, lat = s.row, s.latencies
        summary = stats.summarize(lat, seed=seed)
        floor = by_name[f"floor-{r['format']}"]
        r.update(p50_us=summary["p50"], ci95_p50_us=summary["ci95_p50"], p90_us=summary["p90"],
                 p99_us=summary["p99"], n=summary["n"], calls_per_block=s.calls,
                 on_cpu_share=s.cpu_ns / s.wall_ns, adapter_vs_predict_max_abs=s.adapter_vs_predict,
                 runtime_info=s.model.runtime_info(), stats=summary)
        if s is not floor:
            c = stats.compare(lat, floor.latencies, seed=seed)  # candidate p50 / floor p50
            r.update(x_floor=c["ratio"], x_floor_ci95=c["ratio_ci95"])
        else:
            r.update(x_floor=1.0, x_floor_ci95=[1.0, 1.0])
        fp32 = by_name.get(f"{r['role']}-{r['format']}-fp32")
        if fp32 is not None and fp32 is not s:
            c = stats.compare(fp32.latencies, lat, seed=seed)  # FP32 p50 / this p50: > 1 = faster than FP32
            r.update(fp32_over_this=c["ratio"], fp32_over_this_ci95=c["ratio_ci95"],
                     fp32_over_this_significant=c["significant"])
        elif fp32 is s:
            r.update(fp32_over_this=1.0, fp32_over_this_ci95=[1.0, 1.0], fp32_over_this_significant=False)


def _check(cid: str, text: str, items: list[tuple[str, bool, str, float | None]], worse: str | None = None) -> dict:
    """A check over artifacts.  items: (name, passed, detail, value); `worse` says which way the value gets
    closer to failing ("high" or "low"), to name the closest artifact when all pass."""
    failed = [f"{n}: {d}" for n, ok, d, _ in items if not ok]
    closest = None
    if worse and items:
        pick = max if worse == "high" else min
        n, _, d, _ = pick(items, key=lambda i: i[3])
        closest = f"{n}: {d}"
    return {"id": cid, "check": text, "verdict": "PASS" if items and not failed else "FAIL",
            "artifacts": len(items), "failed": failed, "closest": closest,
            "items": [{"name": n, "passed": ok, "detail": d, "value": v} for n, ok, d, v in items]}


def checks(rows: list[dict]) -> list[dict]:
    """The brief's checks.  Each threshold check covers the artifacts that exported; a cell that did not export
    fails the first check (and is named there), not the threshold checks."""
    out = [_check("all_exported", "every format x precision cell exports with the FORMATS backends",
                  [(r["name"], "error" not in r, "exported" if "error" not in r else r["error"].splitlines()[0], None)
                   for r in rows])]
    done = [r for r in rows if "error" not in r]
    int8 = [r for r in done if r["family"] == "int8"]
    int4 = [r for r in done if r["family"] == "int4"]

    def agreement(rs, threshold):
        return [(r["name"], r["parity"]["agreement"] >= threshold, f"agreement {r['parity']['agreement']:.2%}",
                 r["parity"]["agreement"]) for r in rs]

    out.append(_check("int8_agreement", f"every INT8 artifact: top-1 agreement with PyTorch >= {MIN_AGREEMENT_INT8:.0%}",
                      agreement(int8, MIN_AGREEMENT_INT8), "low"))
    items = []
    for r in int8:
        worst = max(r["acc_drop_vs_pytorch_points"], r["acc_drop_vs_fp32_file_points"])
        items.append((r["name"], worst <= MAX_ACC_DROP_INT8_POINTS + 1e-9,
                      f"accuracy {r['parity']['accuracy']:.2%}, drop {r['acc_drop_vs_pytorch_points']:+.2f} pt vs "
                      f"PyTorch FP32, {r['acc_drop_vs_fp32_file_points']:+.2f} pt vs the {r['format']} FP32 file", worst))
    out.append(_check("int8_accuracy_drop", f"every INT8 artifact: accuracy drop <= {MAX_ACC_DROP_INT8_POINTS:g} point "
                      "vs FP32 (PyTorch and the same format's FP32 file)", items, "high"))
    out.append(_check("int4_agreement", f"every INT4 artifact: top-1 agreement with PyTorch >= {MIN_AGREEMENT_INT4:.0%}",
                      agreement(int4, MIN_AGREEMENT_INT4), "low"))
    for fam, limit in MAX_SIZE_SHARE.items():
        items = [(r["name"], r["size_vs_fp32"] <= limit,
                  f"{r['size_vs_fp32']:.1%} of FP32 ({r['size_bytes'] / 1024:.1f} KiB)", r["size_vs_fp32"])
                 for r in done if r["role"] == "teacher" and r["family"] == fam]
        out.append(_check(f"teacher_{fam}_size", f"teacher: every {fam.upper()} file <= {limit:.0%} of its FP32 file "
                          "(same format)", items, "high"))
    return out


def int4_findings(rows: list[dict], slots: list[Slot], seed: int) -> list[dict]:
    """Per (model, format): the fastest INT4 setting, and fastest INT4 vs fastest INT8 (pooled and paired)."""
    by_name = {s.row["name"]: s for s in slots}
    out = []
    for role in ROLES:
        for fmt in ("onnx", "tflite"):
            here = [r for r in rows if r["role"] == role and r["format"] == fmt and "p50_us" in r]
            i4 = sorted((r for r in here if r["family"] == "int4"), key=lambda r: r["p50_us"])
            i8 = sorted((r for r in here if r["family"] == "int8"), key=lambda r: r["p50_us"])
            fp32 = next((r for r in here if r["precision"] == "fp32"), None)
            if not i4 or not i8:
                continue
            best, best8 = i4[0], i8[0]
            runner_up = None
            if len(i4) > 1:
                c = stats.compare(by_name[i4[1]["name"]].latencies, by_name[best["name"]].latencies, seed=seed)
                runner_up = {"name": i4[1]["name"], "p50_us": i4[1]["p50_us"], "ratio": c["ratio"],
                             "ratio_ci95": c["ratio_ci95"], "significant": c["significant"]}
            c = stats.compare(by_name[best8["name"]].latencies, by_name[best["name"]].latencies, seed=seed)
            slower = 1.0 / c["ratio"]  # INT4 p50 / INT8 p50
            paired = paired_ratio(by_name[best["name"]], by_name[best8["name"]], seed)
            out.append({
                "role": role, "format": fmt, "fastest_int4": best["name"], "fastest_int4_p50_us": best["p50_us"],
                "int4_order": [(r["variant"], r["p50_us"]) for r in i4], "runner_up": runner_up,
                "fastest_int8": best8["name"], "fastest_int8_p50_us": best8["p50_us"],
                "fp32_p50_us": fp32["p50_us"] if fp32 else None,
                "int4_over_int8": slower, "int4_over_int8_ci95": [1.0 / c["ratio_ci95"][1], 1.0 / c["ratio_ci95"][0]],
                "int4_over_int8_paired": paired, "int4_slower_than_int8": slower > 1.0,
                "significant": c["significant"],
                "int4_over_fp32": best["p50_us"] / fp32["p50_us"] if fp32 else None,
            })
    return out


def finding_text(f: dict) -> str:
    order = ", ".join(f"{v} {p:.2f}" for v, p in f["int4_order"])
    lo, hi = f["int4_over_int8_ci95"]
    pr = f["int4_over_int8_paired"]
    verdict = "SLOWER" if f["int4_slower_than_int8"] else "faster"
    ru = f["runner_up"]
    tie = "" if ru is None or ru["significant"] else f" (not distinguishable from {ru['name'].split('-', 2)[2]})"
    return (f"{f['role']} {f['format']}: fastest INT4 is {f['fastest_int4'].split('-', 2)[2]} "
            f"({f['fastest_int4_p50_us']:.2f} us){tie}; INT4 is {verdict} than INT8 "
            f"({f['fastest_int8'].split('-', 2)[2]} {f['fastest_int8_p50_us']:.2f} us): INT4/INT8 = "
            f"{f['int4_over_int8']:.2f}x (95% CI {lo:.2f}-{hi:.2f}; paired per round {pr['ratio']:.2f}); "
            f"INT4/FP32 = {f['int4_over_fp32']:.2f}x. INT4 p50 us: {order}")


def notes_for(rows: list[dict], slots: list[Slot], noise: dict) -> list[str]:
    notes = []
    seen: dict[str, str] = {}
    for r in rows:
        if "sha256" not in r:
            continue
        if r["sha256"] in seen:
            notes.append(f"{r['name']} is byte-identical to {seen[r['sha256']]} (MatMulNBits blocks are capped at the "
                         "layer's input size rounded up to a power of two, so a larger block changes nothing)"
                         if r["format"] == "onnx" and r["family"] == "int4" else
                         f"{r['name']} is byte-identical to {seen[r['sha256']]}")
        else:
            seen[r["sha256"]] = r["name"]
    for r in rows:
        info = r.get("runtime_info") or {}
        off = info.get("undelegated_ops")
        if r["format"] == "tflite" and off:
            notes.append(f"{r['name']}: runs off XNNPACK on LiteRT's built-in kernels: "
                         + ", ".join(f"{op} x{n}" for op, n in off.items()))
        if r["format"] == "tflite" and r["family"] == "int4" and r.get("share_4bit", 1) < 0.5:
            notes.append(f"{r['name']}: only {r['share_4bit']:.0%} of its weight bytes are 4-bit "
                         f"({r['weight_bytes']['float_bytes'] / 1024:.1f} KiB stay float): the block-wise recipe "
                         "quantizes FULLY_CONNECTED only")
        if r["format"] == "onnx" and r["family"] == "int8" and r.get("share_8bit", 1) < 0.5:
            notes.append(f"{r['name']}: only {r['share_8bit']:.0%} of its weight bytes are 8-bit: dynamic INT8 is "
                         "restricted to MatMul/Gemm (Conv would become unfused ConvInteger), so Conv weights stay FP32")
        if "agreement_batch1" in r and abs(r["agreement_batch1"] - r["parity"]["agreement"]) > 1e-9:
            notes.append(f"{r['name']}: top-1 agreement is {r['parity']['agreement']:.2%} in batches of 256 (parity) but "
                         f"{r['agreement_batch1']:.2%} one row at a time (accuracy {r['parity']['accuracy']:.2%} vs "
                         f"{r['accuracy_batch1']:.2%})")
        if r.get("adapter_vs_predict_max_abs") is not None and r["adapter_vs_predict_max_abs"] > 1e-3:
            notes.append(f"{r['name']}: the timed call's output differs from the parity run's on the first test row by "
                         f"{r['adapter_vs_predict_max_abs']:.3g}")
        if "error" in r:
            notes.append(f"{r['name']}: conversion FAILED: {r['error']}")
    if noise["on_cpu_share"] < 0.97:
        notes.append(f"this process was on the CPU only {noise['on_cpu_share']:.1%} of the timed wall time: another "
                     "process competed for the core (see the on-CPU column)")
    unstable = [s.row["name"] for s in slots if s.row["stats"]["unstable"]]
    if unstable:
        which = "all artifacts" if len(unstable) == len(slots) else ", ".join(unstable)
        notes.append(f"summarize() flags {which} as unstable (reasons per row in the JSON; drift = the machine changed "
                     "speed during the run, which interleaving spreads over all artifacts alike)")
    return notes


def machine_noise(slots: list[Slot]) -> dict:
    return interleave.machine_noise(next(s for s in slots if s.row["name"] == "floor-onnx"), "floor-onnx", slots)


def machine_info() -> dict:
    from edgekd.exporter import runtime_versions

    system = system_info()
    versions = {**runtime_versions("onnx"), **runtime_versions("tflite")}
    return {
        **interleave.host_fields(system), "int8_flags": interleave.int8_flags(), "cpu_features": system["cpu_features"],
        "versions": versions, "python": platform.python_version(),
        "threads": 1, "ort": {"intra_op_threads": 1, "inter_op_threads": 1, "execution_mode": "sequential",
                              "io_binding": True},
        "litert": {"num_threads": 1, "delegate": "xnnpack (default)", "timed_call": "Interpreter.invoke"},
    }


# --------------------------------------------------------------------------- output

COLUMNS = ("artifact", "conv s", "size KiB", "% FP32", "4-bit", "8-bit", "agree", "test acc", "max|err|",
           "p50 us (95% CI)", "x floor", "FP32/this", "on-CPU")


def _pct(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v:.{digits}%}"


def table_rows(rows: list[dict]) -> list[tuple[str, ...]]:
    out = []
    for r in rows:
        name = r["name"] + (" *" if r.get("project_default") else "")
        if "error" in r:
            out.append((name, f"{r['conversion_seconds']:.2f}", "FAILED") + ("-",) * (len(COLUMNS) - 3))
            continue
        par = r.get("parity")
        lo, hi = r["ci95_p50_us"]
        sp = r.get("fp32_over_this")
        out.append((
            name,
            f"{r['conversion_seconds']:.2f}" if "conversion_seconds" in r else "-",
            f"{r['size_bytes'] / 1024:.1f}",
            _pct(r.get("size_vs_fp32"), 1),
            _pct(r.get("share_4bit")), _pct(r.get("share_8bit")),
            _pct(par["agreement"], 1) if par else "-",
            _pct(par["accuracy"], 1) if par else "-",
            f"{par['max_abs_error']:.3f}" if par else "-",
            f"{r['p50_us']:.2f} ({lo:.2f}-{hi:.2f})",
            f"{r['x_floor']:.2f}",
            "-" if sp is None else f"{sp:.2f}",
            f"{r['on_cpu_share']:.0%}",
        ))
    return out


def print_report(doc: dict, markdown: bool) -> None:
    rows = doc["floors"] + doc["artifacts"]
    trows = table_rows(rows)
    m = doc["machine"]
    flags = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in m["int8_flags"].items())
    v = m["versions"]
    title = (f"export matrix: {m['cpu_model']} ({m['logical_cores']} logical cores; {flags}), batch 1, 1 thread; "
             f"onnxruntime {v.get('onnxruntime')}, ai-edge-litert {v.get('ai-edge-litert')}")
    print_table(title, COLUMNS, trows, width=170)
    n, noise = doc["measurement"], doc["machine_noise"]
    print(f"* = the project's default INT4 setting. {n['rounds']} interleaved rounds in {n['seconds']:.1f} s "
          f"(whole script {doc['total_seconds']:.0f} s); ONNX floor block medians {noise['p10']:.2f}-"
          f"{noise['p90']:.2f} us (p10-p90); on CPU {noise['on_cpu_share']:.1%} of the wall time; load average "
          f"{n['loadavg_before']} before, {n['loadavg_after']} after")
    print()
    for c in doc["checks"]:
        print(f"  {c['verdict']:<5} {c['check']} ({c['artifacts']} artifacts)"
              + (f"; closest: {c['closest']}" if not c["failed"] and c["closest"] else ""))
        for f in c["failed"]:
            print(f"          {f}")
    print()
    for f in doc["int4_findings"]:
        print(f"  - {finding_text(f)}")
    for note in doc["notes"]:
        print(f"  - {note}")
    if markdown:
        header = " | ".join(c.replace("|", "\\|") for c in COLUMNS)  # a bare | would split the cell
        print(f"\n| {header} |\n|" + "|".join("---" for _ in COLUMNS) + "|")
        for r in trows:
            print("| " + " | ".join(r) + " |")
        print("\n| check | verdict | measured |\n|---|---|---|")
        for c in doc["checks"]:
            detail = ("; ".join(c["failed"]) if c["failed"] else
                      f"all {c['artifacts']} pass" + (f"; closest: {c['closest']}" if c["closest"] else ""))
            print(f"| {c['check']} | {c['verdict']} | {detail} |")


def _jsonable(row: dict) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in row.items() if k != "first_row_logits"}


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    paths = ensure_checkpoints(args.checkpoints.resolve())

    import torch

    from edgekd.data import load_data
    from edgekd.export.formats import FORMATS

    models, payloads = {}, {}
    for role in ROLES:
        models[role], payloads[role] = rebuild(paths[role], role)
    data_cfg = payloads["student"]["meta"]["data"]
    if payloads["teacher"]["meta"]["data"] != data_cfg:
        print(f"warning: teacher and student checkpoints record different data sets; using the student's {data_cfg}",
              file=sys.stderr)
    splits = load_data(**data_cfg)
    rng = np.random.default_rng(args.seed)  # as the pipeline: recipe seed 0, first N of a permutation of train
    calibration = splits.x_train[rng.permutation(len(splits.x_train))[: args.calibration_samples]]
    x_test = np.ascontiguousarray(splits.x_test, dtype=np.float32)
    for fmt in ("onnx", "tflite"):
        FORMATS[fmt]().check_available()

    temp = None
    if args.work_dir is None:
        temp = tempfile.TemporaryDirectory(prefix="edgekd-export-matrix-")
        work = Path(temp.name)
    else:
        work = args.work_dir.resolve()
        work.mkdir(parents=True, exist_ok=True)
    try:
        print(f"exporting {len(ROLES)} models x {len(variants())} variants into {work}", flush=True)
        t0 = time.perf_counter()
        rows = export_all(models, splits, work, calibration)
        floors = write_floors(work, splits.input_shape)
        export_seconds = time.perf_counter() - t0

        torch.set_num_threads(1)  # no torch worker threads competing during the timing
        modules = {rt: import_runtime(rt) for rt in ("onnxruntime", "litert")}
        timed = floors + [r for r in rows if "error" not in r]
        slots = [Slot(r, x_test[:1], modules) for r in timed]
        for s in slots:
            s.warm()
            s.plan(args.block, args.max_block_ms)
        est = args.rounds * sum(s.calls * s.per_call_ns for s in slots) / 1e9
        print(f"timing {len(slots)} artifacts (2 floors): {args.rounds} rounds, ~{est:.0f} s of timed calls "
              "(+ loop overhead)", flush=True)
        load_before = loadavg()
        seconds = measure(slots, args.rounds, args.seed)
        load_after = loadavg()
        analyse(slots, args.seed)  # before the cleanup: it asks the loaded models for their runtime details
    finally:
        if temp is not None:
            temp.cleanup()

    noise = machine_noise(slots)
    doc = {
        "schema": SCHEMA,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "checkpoints": {role: {"path": str(paths[role]), "sha256": sha256_file(paths[role]),
                               "spec": payloads[role]["spec"],
                               "test_accuracy": (payloads[role]["meta"].get("metrics") or {}).get("test_accuracy")}
                        for role in ROLES},
        "data": {**data_cfg, "train": int(len(splits.x_train)), "test": int(len(splits.x_test)),
                 "calibration_rows": int(len(calibration)), "calibration": f"first {len(calibration)} of a "
                 f"permutation of the training split (numpy default_rng({args.seed}))"},
        "machine": machine_info(),
        "measurement": {
            "rounds": args.rounds, "block_max_calls": args.block, "block_max_ms": args.max_block_ms,
            "batch_size": 1, "seed": args.seed, "seconds": seconds, "export_seconds": export_seconds,
            "method": "one process; per round one block of every artifact in random order; 1 untimed call then "
                      "timed calls (perf_counter_ns), gc disabled; models loaded by edgekd.bench.runner.load_model "
                      "(OrtModel: run_with_iobinding, 1 thread; LiteRTModel: Interpreter.invoke, 1 thread, XNNPACK)",
            "inputs": "first row of the test split",
            "conversion_seconds": "fp32: the export from PyTorch; quantized: quantization of the format's FP32 file "
                                  "(includes the backend's own checks, e.g. the INT4 file's test run)",
            "loadavg_before": load_before, "loadavg_after": load_after,
        },
        "checks": checks(rows),
        "int4_findings": int4_findings(rows, slots, args.seed),
        "notes": notes_for(rows, slots, noise),
        "machine_noise": noise,
        "floors": [_jsonable(r) for r in floors],
        "artifacts": [_jsonable(r) for r in rows],
    }
    doc["total_seconds"] = time.perf_counter() - started
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output, doc)  # temp file beside it + os.replace
    os.chmod(args.output, 0o644)  # mkstemp made it owner-only
    print()
    print_report(doc, args.markdown)
    print(f"\nwrote {args.output}")
    failed = [c for c in doc["checks"] if c["verdict"] == "FAIL"]
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
