"""Which text encoders fit the 20× latency budget against the MiniLM teacher: the compute a student may spend.

Issue 9 asks for a student INT8 at least 20× faster than the teacher FP32 (batch 1, sequence 128, 1 thread).
This script turns that goal into shapes: `text_transformer` students of several depths and widths (1 layer
at the teacher's own width of 384 down to 2 layers at 128), exported through edgekd's ONNX path at FP32 and
dynamic INT8 (per channel), timed side by side with the teacher FP32 and the teacher INT8 in one interleaved
run (benchmarks/text_student.py's timing: p50 with a bootstrap interval, ratios paired round by round),
beside the run's bag student. The students are untrained: latency does not depend on the weights, and what
training reaches is measured in text_student.py, text_word_order.py and text_teacher_layers.py.

Also counts each encoder's multiply-adds per sentence at 128 tokens (the layers' matrix products, attention
included), so the budget reads in a unit that carries to other machines. Writes
benchmarks/results/text_budget.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import interleave  # noqa: E402
from text_student import GOALS, context, study_header, timing, write_study  # noqa: E402

RESULT = REPO / "benchmarks" / "results" / "text_budget.json"
LENGTH = 128
TEACHER = "teacher-onnx-fp32"
COLUMNS = ("encoder", "layers × width, FFN", "M mult-adds", "p50 ms", "95% interval", "teacher FP32 / this",
           "size KiB")
# text_transformer params; embed_dim 128 factorises the 13k-row token table as the family does (vocab × e, e → width).
SHAPES = {
    "1 teacher-sized layer": {"layers": 1, "hidden": 384, "heads": 12, "ffn": 1536, "embed_dim": 128},
    "1 layer, teacher width, FFN 384": {"layers": 1, "hidden": 384, "heads": 4, "ffn": 384, "embed_dim": 128},
    "2 layers, 256 wide": {"layers": 2, "hidden": 256, "heads": 4, "ffn": 1024, "embed_dim": 128},
    "4 layers, 128 wide": {"layers": 4, "hidden": 128, "heads": 2, "ffn": 512, "embed_dim": 64},
    "2 layers, 128 wide": {"layers": 2, "hidden": 128, "heads": 2, "ffn": 512, "embed_dim": 64},
    "1 layer, 128 wide": {"layers": 1, "hidden": 128, "heads": 2, "ffn": 512, "embed_dim": 64},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", type=Path, default=REPO / "export" / "minilm")
    p.add_argument("--rounds", type=int, default=40, help="interleaved timing rounds")
    p.add_argument("--block-ms", type=float, default=60.0, help="longest timed block per model and round")
    p.add_argument("--result", type=Path, default=RESULT, help="where to write the JSON results")
    p.add_argument("--markdown", action="store_true", help="also print the table as Markdown (README)")
    return p.parse_args(argv)


def layer_multiply_adds(layers: int, hidden: int, ffn: int, length: int = LENGTH) -> int:
    """Multiply-adds of `layers` transformer layers on one sentence of `length` tokens: the Q, K, V and output
    projections (4·n·h²), attention scores and context (2·n²·h) and the FFN (2·n·h·f)."""
    return layers * (4 * length * hidden ** 2 + 2 * length ** 2 * hidden + 2 * length * hidden * ffn)


def export_shapes(ctx, out_root: Path) -> dict[str, dict]:
    """name -> {params, fp32, int8 paths}: each shape exported (and parity-checked) by edgekd's text export."""
    from edgekd.export.formats import ExportOptions
    from edgekd.text.export import export_text_model
    from edgekd.text.stages import build_student, parity_ids

    ids, labels = parity_ids(ctx)
    out = {}
    for number, (name, params) in enumerate(SHAPES.items()):
        print(f"exporting {name}", file=sys.stderr)
        made = export_text_model(build_student(ctx.text, "text_transformer", params), role=f"shape{number}",
                                 formats=["onnx"], precisions=["fp32", "int8_dynamic"], out_root=out_root,
                                 length=ctx.text.device_length, ids=ids, labels=labels,
                                 num_classes=ctx.text.num_classes, options=ExportOptions(), min_agreement=0.0,
                                 min_agreement_int4=0.0, lineage={"benchmark": "text_budget"})
        out[name] = {"params": params, **{a.precision: a.path for a in made}}
    return out


def teacher_int8(ctx, out: Path) -> Path:
    """The teacher's ONNX file quantized as the students are (dynamic INT8, per channel)."""
    from edgekd.export.onnx import quantize_dynamic_int8

    quantize_dynamic_int8(ctx.rundir.artifacts / TEACHER / "model.onnx", out)
    return out


def budget_study(ctx, rounds: int, block_ms: float, tmp: Path) -> dict:
    from edgekd.text.teacher import check_teacher_folder

    teacher = ctx.rundir.artifacts / TEACHER / "model.onnx"
    shapes = export_shapes(ctx, tmp)
    files = {TEACHER: teacher, "teacher-onnx-int8_dynamic": teacher_int8(ctx, tmp / "teacher-int8.onnx"),
             "student-onnx-int8_dynamic": ctx.rundir.artifacts / "student-onnx-int8_dynamic" / "model.onnx"}
    for name, shape in shapes.items():
        files[f"{name} fp32"], files[f"{name} int8"] = shape["fp32"], shape["int8_dynamic"]
    first = ctx.text.tokenize(ctx.text.held_out_rows[:1], LENGTH)
    print(f"timing {len(files)} files, {rounds} interleaved rounds", file=sys.stderr)
    timed = timing(files, first, rounds, block_ms, seed=LENGTH)
    rows = {name: {**timed["rows"][name], "bytes": path.stat().st_size} for name, path in files.items()}
    config = check_teacher_folder(ctx.text.teacher_folder)
    return {"length": LENGTH, "goal_speedup": GOALS["speedup_int8"], "rows": rows,
            "shapes": {name: s["params"] for name, s in shapes.items()},
            "teacher": {"layers": config["num_hidden_layers"], "hidden": config["hidden_size"],
                        "ffn": config["intermediate_size"]},
            "timing_seconds": timed["seconds"], "noise": timed["noise"]}


def table_rows(doc: dict) -> list[tuple[str, ...]]:
    study = doc["study"]
    rows_out = []

    def row(label: str, what: str, adds: int | None, r: dict) -> tuple[str, ...]:
        low, high = r["ci95_p50_us"]
        ratio = r["teacher_over_this"]
        return (label, what, "–" if adds is None else f"{adds / 1e6:,.0f}", f"{r['p50_us'] / 1e3:.2f}",
                f"{low / 1e3:.2f}–{high / 1e3:.2f}", "1" if ratio is None else f"{ratio['ratio']:.1f}×",
                f"{r['bytes'] / 1024:,.0f}")

    def shape_of(s: dict) -> tuple[str, int]:
        return f"{s['layers']} × {s['hidden']}, {s['ffn']}", layer_multiply_adds(s["layers"], s["hidden"], s["ffn"])

    rows = study["rows"]
    teacher = shape_of(study["teacher"])
    rows_out.append(row("teacher FP32", *teacher, rows[TEACHER]))
    rows_out.append(row("teacher INT8", *teacher, rows["teacher-onnx-int8_dynamic"]))
    for name, shape in study["shapes"].items():
        for precision in ("fp32", "int8"):
            rows_out.append(row(f"{name}, {precision.upper()}", *shape_of(shape), rows[f"{name} {precision}"]))
    rows_out.append(row("the run's bag student, INT8", "no layers", None, rows["student-onnx-int8_dynamic"]))
    return rows_out


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    ctx = context(args.run_dir)
    doc = {**study_header("text_budget", args.run_dir,
                          {**interleave.training_machine_info(1), "int8_flags": interleave.int8_flags()})}
    with tempfile.TemporaryDirectory() as tmp:
        doc["study"] = budget_study(ctx, args.rounds, args.block_ms, Path(tmp))
    return write_study(doc, args.result, started, f"Encoders against the {GOALS['speedup_int8']:.0f}× budget "
                       f"(batch 1, sequence {LENGTH}, 1 thread, ONNX Runtime; students untrained)", COLUMNS,
                       table_rows(doc), args.markdown)


if __name__ == "__main__":
    sys.exit(main())
