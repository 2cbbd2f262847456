"""Compression trade-off: what each pruning and quantization step costs in accuracy and buys in size and speed,
measured on the exported ONNX artifact, for the demo's KD student and its teacher.

    .venv/bin/python benchmarks/compress_tradeoff.py [--rounds 600] [--recovery-epochs 20] [--check]

Rows per model (each exported with edgekd's ONNX backend, accuracy = the exported file on the test split in
onnxruntime, parity against its own PyTorch model):
  FP32; structured 25/50/75% (channels physically removed, multiples of 8) right after pruning and after KD
  recovery; unstructured 50/90% and 2:4 (zeros in dense weights, after recovery with the zeros kept);
  INT8 static, INT8 dynamic, QAT INT8 (when edgekd.compress.qat is available), INT4; structured 50% + INT8
  static and + INT4.
Each row: parameters, file size, exported accuracy and agreement, host p50 at batch 1 on one thread with its
bootstrap 95% CI. Latency is measured interleaved in one process (benchmarks/interleave.py: every round runs a
short block of every artifact in a fresh order), so the VM's speed changes hit all rows alike.

Checks (the issue's acceptance): teacher structured 50% after recovery >= 1.6x faster (p50) and >= 1.8x
smaller than its FP32 file, accuracy within 1 point; student INT8 static within 0.5 point of FP32; INT4
within 2 points. Writes benchmarks/results/compress_tradeoff.json and compress_tradeoff.png (Pareto plots:
accuracy vs p50, accuracy vs size).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import interleave  # noqa: E402
from export_matrix import DEFAULT_CHECKPOINTS, ensure_checkpoints, rebuild  # noqa: E402

from edgekd.bench import stats  # noqa: E402
from edgekd.bench.runner import import_runtime, load_model, system_info  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoints", type=Path, default=DEFAULT_CHECKPOINTS)
    p.add_argument("--rounds", type=int, default=600, help="interleaved timing rounds")
    p.add_argument("--block", type=int, default=50, help="calls per block (fewer for slow models)")
    p.add_argument("--max-block-ms", type=float, default=20.0)
    p.add_argument("--recovery-epochs", type=int, default=20, help="KD recovery passes over the transfer set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check", action="store_true", help="exit 1 when a check fails")
    return p.parse_args(argv)


def compress_variants(model, role: str, splits, teacher, recipe, epochs: int) -> list[tuple[str, Any, list[str]]]:
    """(variant, PyTorch model, steps) for every pruning setting; the uncompressed model first."""
    from edgekd.compress.recovery import compress_and_recover

    out = [("fp32", model, [])]
    settings = [("structured", 0.25), ("structured", 0.5), ("structured", 0.75), ("unstructured", 0.5),
                ("unstructured", 0.9), ("nm", 0.5)]
    for method, ratio in settings:
        label = {"structured": f"structured {ratio:.0%}", "unstructured": f"unstructured {ratio:.0%}",
                 "nm": "2:4"}[method]
        r = recipe.model_copy(deep=True)
        r.compress.prune.method, r.compress.prune.ratio = method, ratio
        if method == "structured":  # the model right after pruning, before recovery
            r.compress.recovery.epochs = 0
            bare = compress_and_recover(r, splits, model, teacher)
            out.append((f"{label} (no recovery)", bare.model, bare.steps))
        r.compress.recovery.epochs = epochs
        done = compress_and_recover(r, splits, model, teacher)
        out.append((f"{label} + KD", done.model, done.steps))
        print(f"  {role}: {label}: {done.metrics['parameters_after']:,} parameters, accuracy "
              f"{done.metrics['accuracy_before']:.2%} -> {done.metrics['accuracy_after_prune']:.2%} pruned -> "
              f"{done.metrics['accuracy_after_recovery']:.2%} recovered", flush=True)
    return out


def export_rows(role: str, variants, splits, work: Path, calibration: np.ndarray) -> list[dict]:
    from edgekd.distill.trainer import predict_logits
    from edgekd.export.formats import FORMATS, ExportOptions
    from edgekd.export.verify import onnx_predict, parity
    from edgekd.models import count_parameters

    backend, options = FORMATS["onnx"](), ExportOptions(calibration=calibration)
    rows = []
    for variant, model, steps in variants:
        model.eval()
        reference = predict_logits(model, splits.x_test)
        folder = work / role / variant.replace(" ", "_").replace("%", "").replace(":", "-").replace("+", "p")
        fp32 = folder / "fp32.onnx"
        backend.export_fp32(model, splits.input_shape, fp32, options)
        precisions = ["fp32"]
        if variant in ("fp32", "structured 50% + KD"):
            precisions += ["int8_static", "int4"] + (["int8_dynamic"] if variant == "fp32" else [])
        for precision in precisions:
            path = fp32 if precision == "fp32" else folder / f"{precision}.onnx"
            if precision != "fp32":
                backend.quantize(fp32, path, precision, options)
            check = parity(onnx_predict(path, splits.x_test), reference, splits.y_test,
                           num_classes=splits.num_classes, threshold=0.0, reference_name=f"PyTorch {role}")
            name = variant if precision == "fp32" else (f"{precision}" if variant == "fp32" else f"{variant} + {precision}")
            rows.append({"model": role, "variant": name, "precision": precision, "path": path,
                         "parameters": count_parameters(model), "size_bytes": path.stat().st_size,
                         "accuracy": check.accuracy, "agreement": check.agreement, "steps": steps})
    return rows


def qat_rows(role: str, model, teacher, splits, recipe, work: Path, calibration: np.ndarray) -> list[dict]:
    """QAT INT8 (quantization-aware distillation) on the weight grid the post-training rows use, its agreement
    measured against the fake-quant model it was trained as (what the artifact implements)."""
    from edgekd.compress import qat
    from edgekd.compress.isa import choose_reduce_range
    from edgekd.distill.api import budget, transfer_set
    from edgekd.distill.trainer import predict_logits
    from edgekd.export.formats import ExportOptions
    from edgekd.export.verify import onnx_predict, parity
    from edgekd.models import count_parameters

    options = ExportOptions(calibration=calibration)  # as export_rows: the same weight grid for both INT8 rows
    reduce_range = choose_reduce_range(options.int8_reduce_range, options.int8_targets)["reduce_range"]
    x, target, _ = transfer_set(recipe, splits)
    trained, fake_quant = qat.qat_distill(
        copy.deepcopy(model), teacher, x, target, steps=budget(recipe, splits) // 3, batch_size=64, lr=1e-4,
        temperature=recipe.distill.loss.temperature, alpha=recipe.distill.loss.alpha, seed=recipe.seed,
        calibration=calibration, reduce_range=reduce_range, return_qat=True)
    path = qat.qat_export_onnx(trained, splits.input_shape, work / role / "qat_int8.onnx", calibration,
                               reduce_range=reduce_range)
    check = parity(onnx_predict(path, splits.x_test), predict_logits(fake_quant, splits.x_test), splits.y_test,
                   num_classes=splits.num_classes, threshold=0.0, reference_name=f"PyTorch {role} (QAT fake-quant)")
    return [{"model": role, "variant": "QAT int8", "precision": "int8_static", "path": path,
             "parameters": count_parameters(model), "size_bytes": path.stat().st_size, "accuracy": check.accuracy,
             "agreement": check.agreement, "steps": ["QAT with KD"]}]


class Slot(interleave.Slot):
    def __init__(self, row: dict, x1: np.ndarray, ort: Any):
        self.row = row
        model = load_model("onnxruntime", ort, str(row["path"]), 1)
        model.feed({model.inputs[0]["name"]: x1})
        super().__init__(model)


def checks(rows: list[dict]) -> list[dict]:
    def row(model: str, variant: str) -> dict:
        return next(r for r in rows if r["model"] == model and r["variant"] == variant)

    t_fp32, t_pruned = row("teacher", "fp32"), row("teacher", "structured 50% + KD")
    s_fp32 = row("student", "fp32")
    out = [
        ("teacher structured 50% + KD: p50 >= 1.6x faster than FP32", t_fp32["p50_us"] / t_pruned["p50_us"], 1.6, ">="),
        ("teacher structured 50% + KD: file >= 1.8x smaller", t_fp32["size_bytes"] / t_pruned["size_bytes"], 1.8, ">="),
        ("teacher structured 50% + KD: accuracy within 1 point", 100 * (t_fp32["accuracy"] - t_pruned["accuracy"]), 1.0, "<="),
        ("student INT8 static within 0.5 point of FP32", 100 * (s_fp32["accuracy"] - row("student", "int8_static")["accuracy"]), 0.5, "<="),
        ("student INT4 within 2 points of FP32", 100 * (s_fp32["accuracy"] - row("student", "int4")["accuracy"]), 2.0, "<="),
    ]
    return [{"goal": g, "value": v, "threshold": t,
             "verdict": "PASS" if (v >= t if op == ">=" else v <= t) else "FAIL"} for g, v, t, op in out]


def pareto_plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for model, marker in (("student", "o"), ("teacher", "s")):
        sub = [r for r in rows if r["model"] == model]
        for ax, key, label in ((axes[0], "p50_us", "host p50 (µs, batch 1, 1 thread)"),
                               (axes[1], "size_bytes", "file size (bytes)")):
            ax.scatter([r[key] for r in sub], [100 * r["accuracy"] for r in sub], marker=marker, label=model)
            for r in sub:
                ax.annotate(r["variant"], (r[key], 100 * r["accuracy"]), fontsize=6, alpha=0.8)
            ax.set_xscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel("test accuracy of the exported ONNX (%)")
    axes[0].legend()
    fig.suptitle("edgekd compression trade-off (digits demo)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from edgekd.distill.api import load_splits
    from edgekd.recipe import load_recipe
    from edgekd.rundir import atomic_write_json

    started = time.perf_counter()
    paths = ensure_checkpoints(args.checkpoints)
    recipe = load_recipe("demo")
    splits = load_splits(recipe)
    teacher, _ = rebuild(paths["teacher"], "teacher")
    student, _ = rebuild(paths["student"], "student")
    rng = np.random.default_rng(args.seed)
    calibration = splits.x_train[rng.permutation(len(splits.x_train))[:256]]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="edgekd-compress-") as tmp:
        work = Path(tmp)
        for role, model in (("student", student), ("teacher", teacher)):
            print(f"{role}: pruning and KD recovery ({args.recovery_epochs} epochs each)", flush=True)
            variants = compress_variants(model, role, splits, teacher, recipe, args.recovery_epochs)
            rows += export_rows(role, variants, splits, work, calibration)
            rows += qat_rows(role, model, teacher, splits, recipe, work, calibration)
        ort = import_runtime("onnxruntime")
        x1 = np.ascontiguousarray(splits.x_test[:1], dtype=np.float32)
        slots = [Slot(r, x1, ort) for r in rows]
        for s in slots:
            s.warm()
            s.plan(args.block, args.max_block_ms)
        print(f"timing {len(slots)} artifacts, {args.rounds} interleaved rounds", flush=True)
        seconds = interleave.measure(slots, args.rounds, args.seed)
        for s in slots:
            summary = stats.summarize(s.latencies, seed=args.seed)
            s.row.update(p50_us=summary["p50"], ci95_p50_us=summary["ci95_p50"], n=summary["n"])
        noise = interleave.machine_noise(min(slots, key=lambda s: s.per_call_ns), "fastest artifact", slots)
    results = checks(rows)
    table = [(r["model"], r["variant"], f"{r['parameters']:,}", f"{r['size_bytes'] / 1024:.1f}",
              f"{100 * r['accuracy']:.2f}", f"{100 * r['agreement']:.2f}",
              f"{r['p50_us']:.2f} ({r['ci95_p50_us'][0]:.2f}-{r['ci95_p50_us'][1]:.2f})") for r in rows]
    system = system_info()
    interleave.print_table(f"compression trade-off — {system['cpu_model']}, 1 thread, onnxruntime, batch 1",
                           ("model", "variant", "params", "KiB", "acc %", "agree %", "p50 µs (95% CI)"), table, left=2)
    for c in results:
        print(f"  {c['verdict']}  {c['goal']}: {c['value']:.3f} (need {c['threshold']})")
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot = RESULTS / "compress_tradeoff.png"
    pareto_plot(rows, plot)
    doc = {"schema": "edgekd.benchmark.compress_tradeoff/1", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "machine": {**interleave.host_fields(system), "threads": 1, "int8_flags": interleave.int8_flags(),
                       "loadavg": interleave.loadavg()},
           "settings": {"rounds": args.rounds, "recovery_epochs": args.recovery_epochs, "seed": args.seed,
                        "timing_seconds": round(seconds, 1)},
           "machine_noise": noise, "rows": [{k: (str(v) if k == "path" else v) for k, v in r.items()
                                             if k != "path"} for r in rows],
           "checks": results, "plot": str(plot.relative_to(REPO)), "wall_seconds": round(time.perf_counter() - started, 1)}
    atomic_write_json(RESULTS / "compress_tradeoff.json", json.loads(json.dumps(doc, default=float)))
    print(f"wrote {RESULTS / 'compress_tradeoff.json'} and {plot}")
    return 1 if args.check and any(c["verdict"] == "FAIL" for c in results) else 0


if __name__ == "__main__":
    sys.exit(main())
