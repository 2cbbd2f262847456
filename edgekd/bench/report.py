"""Teacher-vs-student report: a summary (JSON) built from artifact records and bench results, its findings, and a
self-contained HTML page with embedded matplotlib plots (opens without network); the tables are built in
edgekd.bench.report_tables, and edgekd.bench.report_markdown writes them as Markdown too."""

from __future__ import annotations

import base64
import html
import io
import math
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from edgekd.bench import stats
from edgekd.bench.result import BenchResult
from edgekd.errors import BenchError
from edgekd.export.artifact import Artifact
from edgekd.rundir import RunDir, atomic_write

if TYPE_CHECKING:  # report_tables imports this module's helpers
    from edgekd.bench.report_tables import Table

SUMMARY_SCHEMA = "edgekd.summary/1"
ROLE_ORDER = {"teacher": 0, "student": 1, "scratch": 2, "compressed": 3}
PRECISION_ORDER = {"fp32": 0, "int8_static": 1, "int8_qat": 2, "int8_dynamic": 3, "int4": 4}
INT8_PRECISIONS = ("int8_static", "int8_qat", "int8_dynamic")
WORST_LAYERS = 3  # lowest-SQNR layers listed per INT8 artifact
SATURATION_GAP_DB = 6.0  # deployed SQNR this far below the QDQ math as written: the integer kernels lose it
PARETO_PNG = "pareto.png"  # written beside index.html (and embedded in it)
HTML_NAME, MARKDOWN_NAME = "index.html", "report.md"  # the report's pages (edgekd.bench.report_markdown)
FORMAT_ORDER = {"onnx": 0, "tflite": 1}
RUNTIME_OF = {"onnx": "onnxruntime", "tflite": "LiteRT"}
LAYOUT_SHARE_WARNING = 0.2  # warn when Transpose-like ops are this share of a graph's operators
# Say so when the timer's own cost (two clock reads around a call, measured on the device) is this share of a
# p50 or more: 0.13 µs here is ~4% of a 3.4 µs floor, and it shifts ratios between very fast models.
TIMER_SHARE_NOTE = 0.01
# How the table's latency numbers are made (edgekd.bench.stats), said under it: the rounds are the samples.
LATENCY_METHOD = ("The p50 is the geometric mean of the rounds' p50s (each round a fresh process) and its 95% interval "
                  "a t interval over them; with one round, a bootstrap interval of the median of its calls. The "
                  "speed-up is the teacher's p50 over the artifact's (above 1: faster than the teacher), its 95% "
                  "interval a paired t interval over the rounds' ratios (each round times every artifact side by "
                  "side; Welch's when the two have different numbers of rounds); \"within noise\" means that "
                  "interval contains 1. One round gives no interval, nor do rounds whose p50s are all equal (a "
                  "native tool's whole µs).")
# Under the latency plot: its boxes are not the table's p50s.
POOLED_NOTE = ("Every timed call of every round, pooled: the median of the calls leans to the rounds the machine was "
               "fast in (they time more calls), so it can differ from the p50 in the table, the centre of the rounds.")


def _row(artifact: Artifact, result: BenchResult | None) -> dict[str, Any]:
    p = artifact.parity
    row: dict[str, Any] = {
        "name": artifact.name, "role": artifact.role, "format": artifact.format, "precision": artifact.precision,
        "parameters": artifact.parameters, "size_bytes": artifact.size_bytes, "sha256": artifact.sha256,
        "accuracy": p.accuracy if p else None, "accuracy_samples": p.samples if p else None,
        "agreement": p.agreement if p else None,
        "max_abs_error": p.max_abs_error if p else None, "parity_passed": p.passed if p else None,
        "parity_reason": p.reason if p else None, "per_class_accuracy": p.per_class_accuracy if p else [],
        "ops": sum(artifact.op_histogram.values()), "layout_ops": artifact.layout_ops,
        "int4_bytes": artifact.weight_bits.get("int4_bytes"), "share_4bit": artifact.weight_bits.get("share_4bit"),
        "share_8bit": artifact.weight_bits.get("share_8bit"),
        "int4_settings": ({k: artifact.quantization.get(k) for k in ("block_size", "accuracy_level", "recipe")
                           if k in artifact.quantization} if artifact.quantization and artifact.precision == "int4"
                          else None),
        **_int8_fields(artifact),
    }
    if result is not None:
        lat = result.latency_us
        row.update({"p50_us": stats.shown_p50(lat, result.round_p50_us), "round_p50_us": list(result.round_p50_us),
                    "ci95_p50": stats.shown_p50_interval(lat), "p90_us": lat["p90"], "p99_us": stats.shown_p99(lat),
                    "cv": lat["cv"], "unstable": lat["unstable"], "unstable_reasons": lat.get("unstable_reasons", []),
                    "resolution_limited": bool(lat.get("resolution_limited")),
                    "runs": lat["n"], "timer_overhead_us": lat.get("timer_overhead_us"),
                    "vmhwm_kb": peak_kb(result.memory_kb),
                    "vmhwm_model_kb": model_memory_kb(result.memory_kb), "load_ms": result.load_ms,
                    "device_accuracy": (result.device_accuracy or {}).get("accuracy"),
                    "device_accuracy_samples": (result.device_accuracy or {}).get("samples"),
                    "first_inference_us": result.first_inference_us, "device": result.device.get("name"),
                    "emulated": result.emulated or bool(result.device.get("emulated")),
                    "cross_arch_parity": result.cross_arch_parity,
                    "device_machine": _device_system(result).get("machine"),
                    "device_cpu_features": _device_system(result).get("cpu_features")})
    return row


def _device_system(result: BenchResult) -> dict[str, Any]:
    """What the runner reported of the device's system (for a native tool's result, what the device's shell
    told: native_system); empty when neither did."""
    return (result.device.get("info") or {}).get("system") or {}


def _int8_fields(artifact: Artifact) -> dict[str, Any]:
    """Where an INT8 artifact's accuracy went: the layers kept in FP32 (ONNX mixed-precision fallback), its
    lowest-SQNR layers (per-layer errors against the FP32 graph), its weight grid and, for QAT, the comparison."""
    if artifact.precision not in INT8_PRECISIONS:
        return {}
    q = artifact.quantization or {}
    layers = q.get("layer_errors") or []
    scored = [layer for layer in layers if layer.get("sqnr_db") is not None]  # None: exact (inf) or no signal
    worst = sorted(scored, key=lambda layer: layer["sqnr_db"])[:WORST_LAYERS]
    onnx = artifact.format == "onnx"
    return {"kept_fp32": list(q.get("kept_fp32") or []) if onnx else None,
            "layers_total": len(layers) if layers else None,
            "worst_layers": [{k: layer.get(k) for k in ("node", "op", "sqnr_db", "sqnr_db_simulated", "cosine")}
                             for layer in worst],
            "reduce_range": q.get("reduce_range"), "reduce_range_reason": q.get("reduce_range_reason"),
            "reduce_range_setting": q.get("reduce_range_setting"),
            "reduce_range_for": [t.get("device") for t in q.get("reduce_range_targets") or []],
            "qat": q.get("qat")}


def _per_class_reference(row: dict[str, Any]) -> str | None:
    """Quantized artifacts compare with their FP32 twin; FP32 students with the teacher."""
    from edgekd.exporter import artifact_name

    if row["precision"] != "fp32":
        return artifact_name(row["role"], row["format"], "fp32")
    if row["role"] in ("student", "scratch"):
        return artifact_name("teacher", row["format"], "fp32")
    return None


def build_summary(rundir: RunDir, *, recipe: dict[str, Any], model_metrics: dict[str, Any],
                  class_names: list[str]) -> dict[str, Any]:
    artifacts = [Artifact.load(p) for p in rundir.recorded_outputs("export", "artifact.json")]
    results = _by_artifact(list(map(BenchResult.load, rundir.recorded_outputs("bench", "bench-*.json"))))
    floors = {a.format: results.get(a.sha256) for a in artifacts if a.role == "floor"}
    models = sorted((a for a in artifacts if a.role != "floor"),
                    key=lambda a: (ROLE_ORDER.get(a.role, 9), FORMAT_ORDER.get(a.format, 9),
                                   PRECISION_ORDER.get(a.precision, 9)))
    rows = [_row(a, results.get(a.sha256)) for a in models]
    by_name = {r["name"]: r for r in rows}
    teachers = {a.format: results.get(a.sha256) for a in models if a.role == "teacher" and a.precision == "fp32"}
    for art, row in zip(models, rows):
        res, teacher, floor = results.get(art.sha256), teachers.get(art.format), floors.get(art.format)
        if res is not None and teacher is not None and res is not teacher and res.round_p50_us \
                and teacher.round_p50_us:  # not the teacher against itself: "1.00× [1.00, 1.00] (within noise)"
            # speed-up against the teacher in the same runtime, round by round: the rounds of one bench call
            # interleave the artifacts, so each round's ratio cancels the machine's state at the time
            paired = len(res.round_p50_us) == len(teacher.round_p50_us)
            cmp = stats.compare_rounds(teacher.round_p50_us, res.round_p50_us, paired=paired)
            row.update({"speedup_vs_teacher": cmp["ratio"], "speedup_ci95": cmp["ratio_ci95"],
                        "speedup_significant": cmp["significant"], "speedup_rounds": cmp["rounds"],
                        "speedup_no_interval": cmp["no_interval"]})
        floor_p50 = stats.shown_p50(floor.latency_us, floor.round_p50_us) if floor is not None else None
        if row.get("p50_us") and floor_p50:
            row["x_floor"] = row["p50_us"] / floor_p50
        ref = by_name.get(_per_class_reference(row) or "")
        if ref and ref.get("parity_passed") is False:  # a model nobody ships: no reference (as for the speed notes)
            ref = None
        if ref and row["per_class_accuracy"] and ref["per_class_accuracy"]:
            deltas = [(a - b) * 100 for a, b in zip(row["per_class_accuracy"], ref["per_class_accuracy"])]
            worst = min(range(len(deltas)), key=deltas.__getitem__)
            row["class_delta_reference"] = ref["name"]
            # class None: no class lost accuracy (then "changed" says whether any gained), so none is the worst
            row["worst_class"] = ({"class": class_names[worst] if worst < len(class_names) else str(worst),
                                   "delta_points": deltas[worst]} if deltas[worst] < 0 else
                                  {"class": None, "delta_points": 0.0, "changed": max(deltas) > 0})
    _int8_speed_notes(rows, {fmt: stats.shown_p50(f.latency_us, f.round_p50_us) for fmt, f in floors.items() if f})
    any_result = next((r for r in floors.values() if r), None) or next(iter(results.values()), None)
    summary = {
        "schema": SUMMARY_SCHEMA,
        "run": recipe.get("name"),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": _machine(any_result),
        "runtimes": _runtimes(artifacts, results),
        "recipe": recipe,
        "models": model_metrics,
        "class_names": class_names,
        "floors": {fmt: {"p50_us": stats.shown_p50(f.latency_us, f.round_p50_us),
                         "ci95_p50": stats.shown_p50_interval(f.latency_us),
                         "resolution_limited": bool(f.latency_us.get("resolution_limited"))}
                   for fmt, f in floors.items() if f and stats.shown_p50(f.latency_us, f.round_p50_us) is not None},
        "rows": rows,
        "runtime_comparison": _runtime_comparison(rows),
        "compression": _compression(model_metrics.get("compressed")),
    }
    summary["findings"] = findings(summary)
    return summary


def _by_artifact(results: list[BenchResult]) -> dict[str, BenchResult]:
    """The results by artifact sha256, all of one device: the report is one row per artifact, its speed-ups and
    "× floor" ratios pair results timed side by side, and its machine section describes one device. Results of
    two devices would merge silently (one artifact's row taking either device's numbers, a speed-up dividing a
    board's time by the host's), so they are refused rather than picked from."""
    devices = sorted({str(r.device.get("name")) for r in results})
    if len(devices) > 1:
        raise BenchError(f"the bench results of this run are from {len(devices)} devices ({', '.join(devices)})",
                         why="a report compares the artifacts as timed side by side on one device; results of "
                             "several devices would be mixed in one table (one row per artifact)",
                         fix="bench the run on one device (the recipe's bench.device); to compare devices, bench "
                             "the artifacts with `edgekd bench ARTIFACT... --device NAME` and read `edgekd history`")
    return {r.artifact["sha256"]: r for r in results}


def worst_class_text(worst: dict[str, Any] | None, label: str = "") -> str:
    """A row's "worst class Δ" cell: the class that lost most, or that none lost (a tie at +0.0 named the first
    class, which read as that class being the worst)."""
    if not worst:
        return "–"
    if worst["class"] is None:
        return "no class worse" if worst.get("changed") else "no class changed"
    return f"{label}{worst['class']}: {worst['delta_points']:+.1f} pt"


def _runtimes(artifacts: list[Artifact], results: dict[str, BenchResult]) -> dict[str, dict[str, Any]]:
    """The runtime each format was timed with: its floor's, or (bench.floor: false) its first result's."""
    out: dict[str, dict[str, Any]] = {}
    for artifact in sorted(artifacts, key=lambda a: a.role != "floor"):  # floors first
        result = results.get(artifact.sha256)
        if result is not None:
            out.setdefault(artifact.format, result.runtime)
    return out


def device_int8_features(row: dict[str, Any]) -> dict[str, Any]:
    """INT8-relevant instruction sets of the device a row was measured on (from the runner's system info)."""
    from edgekd.compress.isa import cpu_int8_features

    flags = row.get("device_cpu_features") or []
    return cpu_int8_features("flags : " + " ".join(flags) if flags else "", row.get("device_machine") or "")


def _int8_speed_notes(rows: list[dict[str, Any]], floor_p50s: dict[str, float | None] | None = None) -> None:
    """Each INT8 row measured no faster than its FP32 twin (same role, format and device) gets `int8_speed`:
    {note, reasons, fp32_p50_us}, why from the device's instruction set (edgekd.compress.isa) and, for the call
    overhead, from the per-call floor of its format (`floor_p50s`) where one was measured."""
    from edgekd.compress.isa import explain_int8_speed, int8_slow_reasons

    for row in rows:
        ref = _fp32_reference(rows, row)
        if row["precision"] not in INT8_PRECISIONS or not row.get("p50_us") or ref is None or row.get("emulated") \
                or ref.get("device") != row.get("device") or _all_fp32(row):
            continue
        features = device_int8_features(row)
        floor = (floor_p50s or {}).get(row["format"])
        note = explain_int8_speed(row["p50_us"], ref["p50_us"], features, floor)
        if not note:
            continue
        reasons, untested = int8_slow_reasons(ref["p50_us"], features, floor), _untested(ref, row)
        if _faster_beyond_noise(ref, row) is False:  # a higher p50 within the rounds' noise: no slowdown to explain
            reasons = ["the gap is within the noise of the rounds, so there is no slowdown to explain"]
            note = note.split(": ", 1)[0] + ": within the noise of the rounds."
        elif untested:
            reasons = [*reasons, untested]
            note = note[:-1] + f"; {untested}."
        row["int8_speed"] = {"note": note, "reasons": reasons, "fp32_p50_us": ref["p50_us"],
                             "fp32_size_bytes": ref.get("size_bytes")}


def _fp32_reference(rows: list[dict[str, Any]], row: dict[str, Any]) -> dict[str, Any] | None:
    """The FP32 twin a quantized row's speed is told against (INT8 and INT4 alike): same role and format, timed,
    and not failed parity. A failed FP32 is a model nobody ships: "slower than FP32" against it compares with
    nothing on offer, so such a row gets no note rather than one against it."""
    return next((r for r in rows if r["precision"] == "fp32" and r["role"] == row["role"]
                 and r["format"] == row["format"] and r.get("p50_us") and r.get("parity_passed") is not False), None)


def _all_fp32(row: dict[str, Any]) -> bool:
    """An INT8 artifact whose every layer the mixed-precision fallback kept in FP32 (no INT8 layer is left)."""
    return bool(row.get("layers_total")) and len(row.get("kept_fp32") or []) >= row["layers_total"]


def _compression(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    """The compress stage's accuracy before pruning, after pruning and after KD recovery (test split)."""
    if not metrics or "accuracy_before" not in metrics:
        return None
    keys = ("method", "parameters_before", "parameters_after", "zeroed_weights", "channels_removed", "sparsity",
            "accuracy_before", "accuracy_after_prune", "accuracy_after_recovery", "recovery_steps", "notes")
    return {k: metrics.get(k) for k in keys}


def _runtime_comparison(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same model and precision in onnxruntime and in LiteRT, side by side."""
    out = []
    by_key = {(r["role"], r["precision"], r["format"]): r for r in rows if r.get("p50_us") is not None}
    for (role, precision, fmt), onnx_row in by_key.items():
        lite = by_key.get((role, precision, "tflite"))
        if fmt == "onnx" and lite is not None:
            out.append({"role": role, "precision": precision, "onnx_p50_us": onnx_row["p50_us"],
                        "tflite_p50_us": lite["p50_us"], "onnx_over_tflite": onnx_row["p50_us"] / lite["p50_us"],
                        "onnx_accuracy": onnx_row.get("accuracy"), "tflite_accuracy": lite.get("accuracy")})
    return out


def _machine(result: BenchResult | None) -> dict[str, Any]:
    if result is None:
        return {}
    info = result.device.get("info", {})
    return {"device": result.device.get("name"), "emulated": result.emulated or bool(result.device.get("emulated")),
            "system": info.get("system"), "python": info.get("python"),
            "runtime": result.runtime, "threads": result.settings.get("threads"),
            "batch_size": result.settings.get("batch_size")}


def peak_kb(memory_kb: dict[str, Any]) -> float | None:
    """The process's peak memory: the runner's VmHWM, or a native tool's peak (onnxruntime_perf_test's peak
    working set; benchmark_model's with periodic monitoring)."""
    return memory_kb.get("vmhwm") or memory_kb.get("peak")


def model_memory_kb(memory_kb: dict[str, Any]) -> float | None:
    """Peak memory above the runner's own before the model loaded (Python, numpy and the runtime imported):
    what the model costs. The absolute peak is mostly interpreter and runtime, alike for teacher and student."""
    peak, baseline = memory_kb.get("vmhwm"), memory_kb.get("baseline_vmhwm")
    return peak - baseline if peak and baseline else None


def peak_mib(peak_kb: float | None, model_kb: float | None) -> str:
    if not peak_kb:
        return "–"
    return f"{peak_kb / 1024:.1f}" + (f" (+{model_kb / 1024:.1f})" if model_kb is not None else "")


def _speedup_note(row: dict[str, Any]) -> str:
    """The interval of a speed-up over the rounds, and whether it exceeds their noise (none from one round)."""
    interval = row.get("speedup_ci95")
    if not interval:
        return f" ({stats.why_no_interval(row.get('speedup_no_interval') or 'one round')}: no interval)"
    return f" [{interval[0]:.2f}, {interval[1]:.2f}]" + ("" if row.get("speedup_significant") else " (within noise)")


def findings(summary: dict[str, Any]) -> list[str]:
    """Plain sentences about what the numbers mean (fastest precision, INT8 vs FP32, KD gain, failures)."""
    out: list[str] = []
    rows = summary["rows"]
    models = summary.get("models") or {}
    student, scratch = models.get("student"), models.get("scratch")
    if student and scratch:
        gain = (student["test_accuracy"] - scratch["test_accuracy"]) * 100
        strategy = student.get("strategy", "standard")
        source = {"mutual": "its peers' outputs", "self": "its own earlier outputs (self-distillation)",
                  "blackbox": "the black-box teacher's outputs"}.get(strategy, "the teacher's outputs")
        out.append(f"Distillation ({strategy}): the KD student reaches {student['test_accuracy']:.2%} test accuracy "
                   f"vs {scratch['test_accuracy']:.2%} for the same architecture trained from scratch with the same "
                   f"budget per student ({gain:+.1f} points{_kd_noise(student, scratch)}), both seeing labels for "
                   f"{student.get('labelled_samples', '?')} training samples; the KD student also learns from "
                   f"{source} on {student.get('transfer_samples', '?')} samples."
                   + _teacher_labels_note(models.get("teacher"), student, summary.get("recipe") or {}))
    for row in rows:
        if row.get("parity_passed") is False:
            out.append(f"FAILED: {row['name']} did not pass its parity check ({row['parity_reason']}); "
                       "do not ship it.")
    floors = summary.get("floors") or {}
    # every format a student was timed in: a run with bench.floor off times no floor, and its INT4 slower than FP32
    # went unsaid
    for fmt in dict.fromkeys([*floors, *(r["format"] for r in rows if r["role"] == "student")]):
        timed = [r for r in rows if r.get("p50_us") is not None and r["role"] == "student" and r["format"] == fmt
                 and r.get("parity_passed") is not False]  # a failed artifact is no candidate, however fast
        if not timed:
            continue
        runtime = RUNTIME_OF.get(fmt, fmt)
        floor = floors.get(fmt)
        if floor and floor.get("p50_us"):
            out.append(_floor_finding(runtime, timed, floor))
        for row in timed:
            fp32 = _fp32_reference(timed, row)
            if not (fp32 and row["precision"] not in ("fp32", *INT8_PRECISIONS) and row["p50_us"] > fp32["p50_us"]):
                continue
            sizes = f"{row['size_bytes'] / 1024:.1f} vs {fp32['size_bytes'] / 1024:.1f} KiB"
            if _faster_beyond_noise(fp32, row) is False:  # a higher p50 within the rounds' noise: no slowdown shown
                out.append(f"{runtime}: {row['name']} is not faster than FP32 ({row['p50_us']:.2f} vs "
                           f"{fp32['p50_us']:.2f} µs, within the noise of the rounds): at "
                           f"{row.get('parameters') or 0:,} parameters the narrower arithmetic buys no speed (its "
                           f"file is smaller either way: {sizes}).")
                continue
            untested = _untested(fp32, row)
            out.append(
                f"{runtime}: {row['name']} is slower than FP32 ({row['p50_us']:.2f} vs {fp32['p50_us']:.2f} µs"
                f"{'; ' + untested if untested else ''}): "
                f"the student has only {row.get('parameters') or 0:,} parameters, so quantize/dequantize steps "
                "and extra operators cost more than the narrower arithmetic saves; quantization pays off when a "
                "model's time goes into large matrix multiplies or convolutions (and its file is smaller "
                f"either way: {sizes}).")
    out += _int8_findings(rows)
    compression = summary.get("compression")
    if compression:
        out.append(_compression_finding(compression))
    for row in rows:
        if row.get("device_accuracy") is not None and row.get("accuracy") is not None \
                and row.get("device_accuracy_samples") == row.get("accuracy_samples") \
                and abs(row["device_accuracy"] - row["accuracy"]) > 1e-9:  # on the same samples (eval_samples)
            out.append(f"{row['name']}: accuracy on the device ({row['device_accuracy']:.2%}) differs from the "
                       f"export-time check ({row['accuracy']:.2%}): the device's runtime computes differently.")
        if row["precision"] == "int4" and row.get("share_4bit") is not None:
            out.append(f"{row['name']}: {row['share_4bit']:.0%} of its stored weight bytes are 4-bit "
                       f"({(row.get('int4_bytes') or 0) / 1024:.1f} KiB; settings {row.get('int4_settings')}).")
        if row.get("ops") and row["layout_ops"] / row["ops"] >= LAYOUT_SHARE_WARNING:
            out.append(f"warning: {row['name']} spends {row['layout_ops']} of its {row['ops']} operators on layout "
                       "(Transpose), which NCHW→NHWC conversion adds; consider channels-last inputs.")
    emulated = sorted({r["device"] for r in rows if r.get("emulated")})
    if emulated:
        out.append(f"Emulated device ({', '.join(emulated)}): its latency and memory are the emulator's, not a "
                   "board's; read its results for correctness (accuracy on the device, parity with this host) only.")
    for row in rows:
        parity = row.get("cross_arch_parity")
        if not parity:
            continue
        if "error" in parity:
            out.append(f"{row['name']}: no cross-architecture parity ({parity['error']}).")
        else:
            verdict = "matches" if parity["passed"] else "DIFFERS FROM"
            out.append(f"{row['name']} on {parity['device_arch']} {verdict} this {parity['host_arch']} host: top-1 "
                       f"agreement {parity['agreement']:.2%}, max |err| {parity['max_abs_error']:.2e} "
                       f"({parity['device_runtime']} vs {parity['host_runtime']}).")
    out += _unstable_findings(rows)
    out += _timer_findings(rows)
    return out


# the numbers in an instability reason: measured ("35% of the time", "differ by 1.64x") or limits ("(> 10%)")
_NUMBER = re.compile(r"\d[\d.,]*(?:%|x)?")


def _unstable_findings(rows: list[dict[str, Any]]) -> list[str]:
    """One finding per kind of instability, each with what was measured (a spread, a drift, a run max_seconds
    cut short). On a busy machine every row has the same two or three reasons, which differ only in their
    measured value, and were written out in full for each row: rows sharing a reason are listed once with their
    values (the one number that differs between them is shown as N)."""
    groups: dict[str, list[tuple[str, str]]] = {}
    bare = []
    for row in (r for r in rows if r.get("unstable")):
        if not row.get("unstable_reasons"):
            bare.append(row["name"])
        for reason in row.get("unstable_reasons") or ():
            groups.setdefault(_NUMBER.sub("\0", reason), []).append((row["name"], reason))
    out = [f"Unstable timings: {', '.join(bare)}."] if bare else []
    for template, members in groups.items():
        numbers = [_NUMBER.findall(reason) for _, reason in members]
        varying = [i for i, column in enumerate(zip(*numbers)) if len(set(column)) > 1]
        if len(varying) == 1 and len(members) > 1:
            slot = varying[0]
            parts = template.split("\0")
            text = "".join(part + ("" if i == len(numbers[0]) else "N" if i == slot else numbers[0][i])
                           for i, part in enumerate(parts))
            values = ", ".join(f"{name} {found[slot]}" for (name, _), found in zip(members, numbers))
            out.append(f"Unstable timings of {len(members)} artifacts: {text}; N: {values}.")
        elif not varying:
            out.append(f"Unstable timings: {', '.join(name for name, _ in members)} ({members[0][1]}).")
        else:
            out.append(f"Unstable timings: {'; '.join(f'{name} ({reason})' for name, reason in members)}.")
    return out


def _floor_finding(runtime: str, timed: list[dict[str, Any]], floor: dict[str, Any]) -> str:
    """The fastest student artifact of a runtime against that runtime's per-call floor (an Identity graph)."""
    fastest = min(timed, key=lambda r: r["p50_us"])
    x_floor = fastest["p50_us"] / floor["p50_us"]
    return (f"{runtime}: fastest student artifact {fastest['name']} at p50 {fastest['p50_us']:.2f} µs"
            f"{_fastest_within_noise(fastest, timed)}, "
            f"{x_floor:.2f}× the runtime's per-call floor ({floor['p50_us']:.2f} µs"
            f"{stats.BELOW_RESOLUTION_MARK if floor.get('resolution_limited') else ''} for an Identity graph)"
            + (": at this size the runtime's call overhead, not the model, sets the latency."
               if x_floor < stats.OVERHEAD_BOUND else
               f": the model, not the runtime's call overhead (~{1 / x_floor:.0%} of it), sets the latency."))


def _teacher_labels_note(teacher: dict[str, Any] | None, student: dict[str, Any], recipe: dict[str, Any]) -> str:
    """Which labels the teacher saw, beside the students': one trained on every label passes on labels the
    scratch baseline never saw, so part of the KD gain is those labels (benchmarks/kd_teacher_labels.py)."""
    if not teacher or student.get("strategy", "standard") in ("mutual", "self", "blackbox"):
        return ""  # no run's teacher taught it
    if teacher.get("source") == "checkpoint":
        return " The teacher was loaded from a checkpoint: which labels it saw is not recorded in this run."
    seen, students = teacher.get("labelled_samples"), student.get("labelled_samples")
    setting = teacher.get("teacher_labels") or (recipe.get("data") or {}).get("teacher_labels") or "all"
    if seen is not None and seen == students:
        how = " (data.teacher_labels: students)" if setting == "students" else ""
        return (f" The teacher trained on the labels of the same {seen} samples{how}, so the gain is not labels "
                "the scratch baseline never saw.")
    every = f"all {seen}" if seen is not None else "all the"  # a teacher recorded before the count was kept
    theirs = f"{students} " if students is not None else ""
    if recipe.get("task") == "text":  # its head is fitted on every labelled sentence: no switch narrows it
        return (f" The teacher's class head was fitted on the labels of {every} labelled training sentences, so "
                "part of the gain can be labels reaching the student through it.")
    return (f" The teacher trained on the labels of {every} training samples, so part of the gain can be labels "
            "reaching the student through it; data.teacher_labels: students trains it on the students' "
            f"{theirs}labels alone.")


def _kd_noise(student: dict[str, Any], scratch: dict[str, Any]) -> str:
    """Whether the KD student and the scratch one differ beyond the noise of the test set: an exact McNemar test on
    the samples only one of them gets right (both scored on the same samples, so not two independent rates); said
    untested for metrics recorded before the per-sample results were kept."""
    a, b = student.get("test_correct"), scratch.get("test_correct")
    if not a or not b or len(a) != len(b):
        return "; not tested against the noise of the test set (no per-sample results recorded)"
    only_kd = sum(x == "1" and y == "0" for x, y in zip(a, b))
    only_scratch = sum(x == "0" and y == "1" for x, y in zip(a, b))
    p = stats.mcnemar_exact(only_kd, only_scratch)
    verdict = "beyond" if p < 1 - stats.CI_LEVEL else "within"
    return (f"; of the {len(a)} test samples {only_kd} are right only with KD and {only_scratch} only from scratch: "
            f"exact McNemar p {'< 0.001' if p < 0.001 else f'= {p:.3f}'}, {verdict} the noise of the test set (of "
            "one training seed each)")


def _fastest_within_noise(fastest: dict[str, Any], timed: list[dict[str, Any]]) -> str:
    """The other candidates the fastest is not shown faster than (their rounds' speed-up interval contains 1, or
    one round gives none), as a clause: the lowest of p50s within noise of each other is picked by chance, and a
    reader would ship it for being "fastest"."""
    others = [row for row in timed if row is not fastest]
    tied = [f"{row['name']} ({row['p50_us']:.2f} µs)" for row in others if _faster_beyond_noise(fastest, row) is False]
    if tied:
        return f" (not faster than {', '.join(tied)} beyond the noise of the rounds)"
    untested = next((clause for clause in (_untested(fastest, row) for row in others) if clause), "")
    return f" ({untested})" if untested else ""


def _rounds_comparison(fast: dict[str, Any], slow: dict[str, Any]) -> dict[str, Any] | None:
    """stats.compare_rounds of `slow` over `fast` (paired when one bench call timed both side by side); None when
    either kept no rounds (a summary from before they were)."""
    a, b = fast.get("round_p50_us") or [], slow.get("round_p50_us") or []
    return stats.compare_rounds(b, a, paired=len(a) == len(b)) if a and b else None


def _faster_beyond_noise(fast: dict[str, Any], slow: dict[str, Any]) -> bool | None:
    """Whether `fast` is faster than `slow` beyond the noise of their rounds; None when that cannot be told: no
    rounds kept, or rounds that give no interval (one round, or rounds without spread)."""
    cmp = _rounds_comparison(fast, slow)
    if cmp is None or cmp["no_interval"]:
        return None
    return cmp["significant"] and cmp["ratio"] > 1


def _untested(fast: dict[str, Any], slow: dict[str, Any]) -> str:
    """A clause for a gap the rounds cannot test (their comparison has no interval), else ''."""
    cmp = _rounds_comparison(fast, slow)
    if cmp is None or not cmp["no_interval"]:
        return ""
    return f"{stats.why_no_interval(cmp['no_interval'])}: not tested against the noise between rounds"


def _timer_findings(rows: list[dict[str, Any]]) -> list[str]:
    """One finding for the rows whose p50 the timer's own cost is a noticeable part of (TIMER_SHARE_NOTE): the
    latencies keep it (they are plain clock differences), so say how much of each number it is."""
    noticeable = [(row, row["timer_overhead_us"] / row["p50_us"]) for row in rows
                  if row.get("timer_overhead_us") is not None and row.get("p50_us")
                  and row["timer_overhead_us"] / row["p50_us"] >= TIMER_SHARE_NOTE]
    if not noticeable:
        return []
    noticeable.sort(key=lambda pair: -pair[1])
    each = "; ".join(f"{row['name']}: {row['p50_us']:.2f} µs includes ~{row['timer_overhead_us']:.2f} µs ({share:.0%}), "
                     f"~{row['p50_us'] - row['timer_overhead_us']:.2f} µs without it" for row, share in noticeable)
    return [f"The timer's own cost (two clock reads around a call, measured on the device) is part of every "
            f"latency, and of these p50s noticeably: {each}. Ratios between models this fast carry it too."]


def _int8_speed_findings(rows: list[dict[str, Any]]) -> list[str]:
    """One sentence per runtime, device and explanation: which INT8 artifacts are not faster than FP32, and why."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("int8_speed"):
            key = (RUNTIME_OF.get(row["format"], row["format"]), row.get("device") or "the device",
                   tuple(row["int8_speed"]["reasons"]))
            groups.setdefault(key, []).append(row)
    out = []
    for (runtime, device, reasons), members in groups.items():
        which = ", ".join(f"{r['name']} (p50 {r['p50_us']:.1f} vs {r['int8_speed']['fp32_p50_us']:.1f} µs)"
                          for r in members)
        smaller = all((r["int8_speed"].get("fp32_size_bytes") or 0) > (r.get("size_bytes") or 0) for r in members)
        out.append(f"{runtime} on {device}: INT8 is not faster than FP32 for {which}: " + "; ".join(reasons)
                   + (". Their files are smaller than FP32's either way." if smaller else "."))
    return out


def _int8_findings(rows: list[dict[str, Any]]) -> list[str]:
    """INT8 artifacts: not faster than FP32 (and why), layers kept in FP32, integer-kernel saturation, QAT."""
    out = _int8_speed_findings(rows) + _weight_grid_findings(rows)
    for row in rows:
        if row.get("precision") not in INT8_PRECISIONS:
            continue
        name = row["name"]
        if row.get("kept_fp32"):
            out.append(f"{name}: {len(row['kept_fp32'])} of {row.get('layers_total') or '?'} layers kept in FP32 "
                       f"to pass parity ({', '.join(row['kept_fp32'])})"
                       + ("; no layer runs in INT8, so ship the FP32 artifact instead." if _all_fp32(row) else "."))
        worst = (row.get("worst_layers") or [None])[0]
        if worst and worst.get("sqnr_db_simulated") is not None \
                and worst["sqnr_db_simulated"] - worst["sqnr_db"] > SATURATION_GAP_DB:
            out.append(f"{name}: layer {worst['node']} has SQNR {worst['sqnr_db']:.1f} dB as onnxruntime runs it but "
                       f"{worst['sqnr_db_simulated']:.1f} dB as the QDQ graph is written: the integer kernels lose it "
                       f"(saturation; weights {'7' if row.get('reduce_range') else '8'}-bit, "
                       "see export.int8_reduce_range).")
        qat = row.get("qat")
        if qat:
            ptq = "" if qat.get("ptq_accuracy") is None else f", int8_static {qat['ptq_accuracy']:.2%}"
            closed = "" if qat.get("gap_closed") is None else f"; closes {qat['gap_closed']:.0%} of the INT8 gap"
            out.append(f"Quantization-aware distillation ({qat.get('reason')}): {name} reaches "
                       f"{qat['qat_accuracy']:.2%} (FP32 {qat['fp32_accuracy']:.2%}{ptq}){closed}.")
    return out


def _weight_grid_findings(rows: list[dict[str, Any]]) -> list[str]:
    """ONNX INT8 artifacts benchmarked on a CPU the export's weight grid (int8_reduce_range) was not chosen for, as
    the runner reports that CPU: 8-bit weights on x86 without VNNI/AMX saturate its int8 kernels (accuracy there can
    fall below the parity measured at export); 7-bit ones on a CPU that takes 8-bit give up precision for nothing."""
    from edgekd.compress.isa import _auto_reduce_range

    out = []
    for row in rows:
        chosen = row.get("reduce_range")
        if row.get("format") != "onnx" or row.get("precision") not in INT8_PRECISIONS or chosen is None \
                or not row.get("device") or _all_fp32(row):
            continue
        needs, why = _auto_reduce_range(device_int8_features(row))
        if needs is None or needs == chosen or (chosen and row.get("reduce_range_setting") is True):
            continue  # unknown CPU, the right grid, or 7-bit weights the recipe asked for: nothing to say
        device, targets = row["device"], row.get("reduce_range_for") or []
        decided = f"chosen for {', '.join(targets)}" if targets else "chosen with no target device"
        setting = row.get("reduce_range_setting")
        if setting in (True, False):  # the recipe chose the grid, not auto
            fix = f"the recipe set export.int8_reduce_range: {str(setting).lower()}; set it to auto and re-export"
        elif device in targets:  # auto decided for this device, from a CPU it does not have
            fix = (f"set `cpu:` in the profile of {device} to the CPU its runner reports (or export on it) and "
                   f"re-export; or set export.int8_reduce_range: {str(needs).lower()}")
        else:
            fix = f"re-export with bench.device: {device}; or set export.int8_reduce_range: {str(needs).lower()}"
        if needs:
            out.append(f"{row['name']}: 8-bit INT8 weights ({decided}) were benchmarked on {device}, whose CPU needs "
                       f"7-bit ones: {why}. Its accuracy there can be lower than on a CPU that does not saturate "
                       f"them; {fix}.")
        else:
            out.append(f"{row['name']}: 7-bit INT8 weights ({decided}) were benchmarked on {device}, whose CPU takes "
                       f"8-bit ones: {why}. A little precision is given up for nothing there; {fix}.")
    return out


def _compression_finding(c: dict[str, Any]) -> str:
    recovered = ("" if c.get("accuracy_after_recovery") is None
                 else f" → {c['accuracy_after_recovery']:.2%} after KD recovery")
    return (f"Compression ({c.get('method')}): test accuracy {c['accuracy_before']:.2%} before pruning → "
            f"{c['accuracy_after_prune']:.2%} after pruning{recovered}; parameters "
            f"{c.get('parameters_before') or 0:,} → {c.get('parameters_after') or 0:,}"
            + (f" ({_pruned_share(c)})." if _pruned_share(c) else "."))


def _pruned_share(c: dict[str, Any]) -> str | None:
    """What pruning measurably removed: the share of channels (structured: rounding to round_to groups makes it
    differ from the ratio asked for) or of the prunable weights now zero (unstructured, N:M); None for a stage
    recorded before it was measured."""
    if c.get("channels_removed") is not None:
        return f"{c['channels_removed']:.0%} of channels removed"
    if c.get("sparsity") is not None:
        return f"{c['sparsity']:.0%} of the prunable weights zero"
    return None


# -- HTML -----------------------------------------------------------------------------------

def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not beaten by another that is both faster (lower p50) and more accurate."""
    front, best = [], -1.0
    for p50, acc in sorted(points):
        if acc > best:
            front.append((p50, acc))
            best = acc
    return front


def _log_axis_plain(axis) -> None:
    """Log scale with plain tick labels (5, 10, 50 µs), not 5×10⁰, as many as the axis has room for
    (_plain_log_ticks)."""
    from matplotlib.ticker import FuncFormatter

    axis.axes.set_xscale("log")
    axis.set_major_locator(_plain_log_ticks())
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _plain_log_ticks():
    """A matplotlib Locator for a log axis that ticks 1-9, or 1, 2 and 5, or 1 of each decade, by how wide a decade
    is on screen, and every few decades on an axis of very many: ticks at 1, 2 and 5 everywhere ran a text
    teacher's 43 ms and its student's 15 µs into "500 10002000 5000", and an axis of 3-4 µs had no tick at all
    (then a few plain ticks, as on a linear axis). Made here so that importing this module imports no matplotlib."""
    from matplotlib.ticker import Locator, MaxNLocator

    class PlainLogTicks(Locator):
        def __call__(self) -> list[float]:
            return self.tick_values(*self.axis.get_view_interval())

        def tick_values(self, vmin: float, vmax: float) -> list[float]:
            low, high = sorted((vmin, vmax))
            if low <= 0 or high <= low:
                return []
            decades = math.log10(high / low)
            per_decade = self.axis.axes.bbox.width / decades  # display pixels
            mantissas = next(m for room, m in TICKS_PER_DECADE if per_decade >= room)
            step = max(1, math.ceil(MIN_DECADE_PX / per_decade))  # decades between ticks
            first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
            ticks = [m * 10.0 ** e for e in range(first, last + 1) if (e - first) % step == 0 for m in mantissas]
            ticks = [t for t in ticks if low <= t <= high]
            return ticks if len(ticks) >= 2 else [t for t in MaxNLocator(4).tick_values(low, high) if low <= t <= high]

    return PlainLogTicks()


# (display pixels one decade needs at least, the mantissas ticked in each decade); a decade narrower than
# MIN_DECADE_PX gets no tick of its own.
TICKS_PER_DECADE = ((900.0, (1, 2, 3, 4, 5, 6, 7, 8, 9)), (150.0, (1, 2, 5)), (0.0, (1,)))
MIN_DECADE_PX = 55.0


ROLE_COLORS = {"teacher": "tab:red", "student": "tab:blue", "scratch": "tab:gray", "compressed": "tab:purple"}
FORMAT_MARKERS = {"onnx": "o", "tflite": "s"}


def _scatter_labelled(ax, rows: list[dict[str, Any]], x: Callable[[dict[str, Any]], float]) -> list[tuple]:
    """One point per artifact at (x(row), accuracy %), and the Pareto front (lower x, higher accuracy); returns
    the points' labels as (x, y, text), placed by _place_labels once the axes are complete."""
    labels = []
    for r in rows:
        failed = r.get("parity_passed") is False  # hollow, labelled, and never on the front: not shippable
        colour = ROLE_COLORS.get(r["role"], "k")
        ax.scatter(x(r), r["accuracy"] * 100, color="none" if failed else colour, edgecolors=colour,
                   marker=FORMAT_MARKERS.get(r["format"], "o"), s=40, zorder=3)
        labels.append((x(r), r["accuracy"] * 100,
                       f"{r['role']} {r['format']} {r['precision']}" + (" (failed parity)" if failed else "")))
    front = _pareto([(x(r), r["accuracy"] * 100) for r in rows if r.get("parity_passed") is not False])
    # the points ringed too: a front of one point (one artifact fastest and most accurate) draws no step
    ax.step([p for p, _ in front], [a for _, a in front], where="post", color="tab:green", alpha=0.6,
            marker="o", markersize=11, markerfacecolor="none", label="Pareto front")
    _log_axis_plain(ax.xaxis)
    ax.set_ylabel("test accuracy of the artifact (%)")
    ax.grid(alpha=0.3)
    return labels


# Where a label may go, in points from its point (x, y, horizontal alignment): beside it first, then further up
# or down; the first place inside the axes that covers no other label and no other point is taken.
LABEL_PLACES = [(side * 5, dy, "left" if side > 0 else "right")
                for step in range(8) for dy in (2 + 7 * step, -8 - 7 * step) for side in (1, -1)]


def _place_labels(ax, labels: list[tuple]) -> None:
    """Label the points without overlaps where there is room: artifacts of one model in several formats and
    precisions sit close together, and labels at one fixed offset covered each other. Measured with the Agg
    renderer, so call it when the axes' contents (and so their limits) are final. Where no place is free, the
    one that covers the fewest others."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    canvas = ax.figure.canvas if isinstance(ax.figure.canvas, FigureCanvasAgg) else FigureCanvasAgg(ax.figure)
    renderer = canvas.get_renderer()
    ax.autoscale_view()
    inside = ax.get_window_extent(renderer)
    radius = 3 * ax.figure.dpi / 72  # a marker (s=40) is ~6 points across
    points = [Bbox.from_extents(px - radius, py - radius, px + radius, py + radius)
              for px, py in ax.transData.transform([(x, y) for x, y, _ in labels])]
    taken: list = []
    for i, (x, y, text) in enumerate(labels):
        others = taken + points[:i] + points[i + 1:]
        best = None
        for dx, dy, align in LABEL_PLACES:
            note = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=6, ha=align,
                               arrowprops=None if abs(dy) < 10 else {"arrowstyle": "-", "lw": 0.4, "alpha": 0.5})
            note.update_positions(renderer)
            # the text's own box: an Annotation's extent also spans its leader line, which reaches back to the point
            # and so covers every neighbour of a close cluster; no place with a leader was ever free there
            box = Text.get_window_extent(note, renderer)
            covered = sum(box.overlaps(other) for other in others) + (not _within(box, inside))
            if best is not None:
                if covered >= best[0]:
                    note.remove()
                    continue
                best[1].remove()
            best = (covered, note, box)
            if covered == 0:
                break
        taken.append(best[2])


def _within(box, outer) -> bool:
    """Whether `box` lies wholly inside `outer` (a label outside the axes lands on the tick labels)."""
    return outer.x0 <= box.x0 and box.x1 <= outer.x1 and outer.y0 <= box.y0 and box.y1 <= outer.y1


def pareto_figure(summary: dict[str, Any]):
    """Accuracy vs p50 latency (benchmarked artifacts) and accuracy vs file size (every artifact), side by side;
    None when no artifact has an accuracy. A bare Figure, not pyplot's: see _figure."""
    scored = [r for r in summary["rows"] if r.get("accuracy") is not None]
    if not scored:
        return None
    timed = [r for r in scored if r.get("p50_us") is not None]
    fig = _figure(13, 4.6)
    by_time, by_size = fig.subplots(1, 2)
    if timed:
        labels = _scatter_labelled(by_time, timed, lambda r: r["p50_us"])
        for fmt, floor in (summary.get("floors") or {}).items():
            by_time.axvline(floor["p50_us"], color="k", ls=":" if fmt == "onnx" else "--", lw=1,
                            label=f"{RUNTIME_OF.get(fmt, fmt)} floor")
        by_time.legend(fontsize=8)
        _place_labels(by_time, labels)
    else:
        by_time.text(0.5, 0.5, "not benchmarked (bench.enabled: false)", ha="center", va="center",
                     transform=by_time.transAxes)
    by_time.set_xlabel("p50 latency (µs, log scale)")
    by_time.set_title("Accuracy vs latency")
    _place_labels(by_size, _scatter_labelled(by_size, scored, lambda r: r["size_bytes"] / 1024))
    by_size.set_xlabel("file size (KiB, log scale)")
    by_size.set_title("Accuracy vs file size")
    fig.suptitle("Artifacts: circles onnxruntime, squares LiteRT; colour = model")
    return fig


def plots(summary: dict[str, Any], latencies: dict[str, list[int]]) -> dict[str, bytes]:
    """PNG images of the report: `pareto` (accuracy vs latency and vs size) and `latency` (distributions).

    `latencies` maps names to per-call times (ns); a result without them (a native tool prints summaries) has
    no distribution to draw and is left out."""
    images: dict[str, bytes] = {}
    fig = pareto_figure(summary)
    if fig is not None:
        images["pareto"] = _png(fig)
    fig = latency_figure(latencies)
    if fig is not None:
        images["latency"] = _png(fig)
    return images


def latency_figure(latencies: dict[str, list[int]]):
    """Box plots of the per-call times (ns) of each result, all its rounds pooled; None when none has any. The
    box's line is the median of those calls, which leans to the rounds the machine was fast in (they time more
    calls): the axis says so, or a reader takes it for the table's p50 (the rounds' centre) and finds them apart."""
    latencies = {name: calls for name, calls in latencies.items() if len(calls)}
    if not latencies:
        return None
    names = list(latencies)
    fig = _figure(7, 0.45 * len(names) + 1.2)
    ax = fig.subplots()
    ax.boxplot([[v / 1000 for v in latencies[n]] for n in names], orientation="horizontal", showfliers=False)
    ax.set_yticks(range(1, len(names) + 1), names, fontsize=8)
    _log_axis_plain(ax.xaxis)
    ax.set_xlabel("latency per call, the calls of all rounds pooled (µs, log scale; line: their median, not the "
                  "table's p50;\nwhiskers 1.5 IQR, outliers hidden)")
    ax.set_title("Latency distributions")
    ax.grid(alpha=0.3, axis="x")
    return fig


def _figure(width: float, height: float):
    """A Figure outside pyplot: drawn by the Agg canvas savefig picks for PNG, so the report neither switches the
    process's backend (a notebook's inline plots would stop showing) nor leaves figures in pyplot's registry."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _fmt(value: Any, spec: str, empty: str = "–") -> str:
    return empty if value is None else format(value, spec)


def _write_pareto_png(png: bytes | None, path: Path) -> None:
    if png is not None:
        atomic_write(path, png)
    elif path.exists():  # from an earlier report of this run: it would describe other artifacts
        path.unlink()


def _pareto_html(image: str | None) -> str:
    if image is None:
        return ""
    return (f'<h2>Accuracy vs latency and file size</h2><img alt="accuracy vs p50 and vs file size" src="{image}">'
            f'<p class="meta">Also saved as {PARETO_PNG} beside this page. The green steps and rings are the '
            "Pareto front: no other artifact is both faster (or smaller) and more accurate.</p>")


def _table_html(table: Table) -> str:
    """A report_tables.Table as a section of the page; nothing for a table without rows."""
    if not table.rows:
        return ""
    e = html.escape
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in table.rows)
    notes = "".join(f"<li>{e(n)}</li>" for n in table.notes)
    return (f"<h2>{e(table.title)}</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in table.header)
            + f"</tr>{body}</table>"
            + (f'<p class="meta">{e(table.notes_title)}</p>' if table.notes_title else "")
            + (f'<ul class="meta">{notes}</ul>' if notes else "")
            + (f'<p class="meta">{e(table.caption)}</p>' if table.caption else ""))


def machine_text(summary: dict[str, Any]) -> str:
    """The line under a report's title: when, on which device and CPU, how many threads, which runtimes."""
    machine = summary.get("machine") or {}
    if not machine:
        return f"{summary.get('created_at', '')} · not benchmarked (bench.enabled: false)"
    system = machine.get("system") or {}
    model = f" ({system['device_model']})" if system.get("device_model") else ""  # a phone's, from getprop
    runtimes = ", ".join(f"{r.get('name')} {r.get('version')}" + (f" (delegate {r.get('delegate')})"
                                                                 if r.get("delegate") else "")
                         for r in (summary.get("runtimes") or {}).values())
    emulated = " (EMULATED: latency is not a board's)" if machine.get("emulated") else ""
    features = ", ".join(system.get("cpu_features") or []) or "none detected"
    return " · ".join([str(summary.get("created_at", "")), f"device {machine.get('device')}{model}{emulated}",
                       f"CPU {system.get('cpu_model')} ({system.get('cpu_count_logical')} logical cores; "
                       f"features: {features})", f"governor {system.get('governor')}",
                       f"{machine.get('threads')} thread(s), batch {machine.get('batch_size')}",
                       f"runtimes {runtimes}"])


def write_pages(summary: dict[str, Any], rundir: RunDir) -> list[Path]:
    """The run's report pages: report/index.html (self-contained), report/report.md (tables and findings as text,
    for a pull request or a wiki) and, when there is one, the Pareto plot beside them (the Markdown links it)."""
    from edgekd.bench.report_markdown import write_markdown

    page = write_html(summary, rundir)
    pareto = page.parent / PARETO_PNG
    drawn = pareto if pareto.is_file() else None
    return [page, write_markdown(summary, rundir, drawn)] + ([pareto] if drawn else [])


def write_html(summary: dict[str, Any], rundir: RunDir) -> Path:
    """The run's self-contained report/index.html (plots embedded), with the Pareto plot beside it."""
    from edgekd.bench import report_tables as tables

    path = rundir.report / HTML_NAME
    latencies = {}
    for p in rundir.recorded_outputs("bench", "bench-*.json"):
        r = BenchResult.load(p)
        latencies[r.artifact["name"]] = r.latencies_ns
    pngs = plots(summary, latencies)
    _write_pareto_png(pngs.get("pareto"), path.parent / PARETO_PNG)
    images = {key: _data_uri(png) for key, png in pngs.items()}
    e = html.escape
    before_plots = "\n".join(_table_html(build(summary)) for build in tables.BEFORE_PLOTS)
    after_plots = "\n".join(_table_html(build(summary)) for build in tables.AFTER_PLOTS)
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>edgekd report: {e(str(summary.get('run')))}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }}
table {{ border-collapse: collapse; font-size: 13px; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
th {{ background: #f3f3f3; }}
.findings li {{ margin: 0.4em 0; }}
.meta {{ color: #555; font-size: 13px; }}
</style></head><body>
<h1>Teacher vs student: {e(str(summary.get('run')))}</h1>
<p class="meta">{e(machine_text(summary))}</p>
<h2>Findings</h2><ul class="findings">{''.join(f'<li>{e(f)}</li>' for f in summary.get('findings', []))}</ul>
{before_plots}
{_pareto_html(images.get("pareto"))}
{f'<h2>Latency distributions</h2><img alt="latency distributions" src="{images["latency"]}"><p class="meta">{e(POOLED_NOTE)}</p>' if 'latency' in images else ''}
{after_plots}
</body></html>
"""
    return atomic_write(path, doc)
