"""The report's tables as ready-formatted cells, built once for both pages: the self-contained HTML page and the
Markdown one (for a pull request, an issue or a wiki). Each page only renders them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgekd.bench import stats
from edgekd.bench.report import (INT8_PRECISIONS, LATENCY_METHOD, RUNTIME_OF, WORST_LAYERS, _fmt, _pruned_share,
                                 _speedup_note, peak_mib, worst_class_text)


@dataclass(frozen=True)
class Table:
    """A titled table of text cells, with a caption under it and notes (a list) between the two."""

    title: str
    header: tuple[str, ...]
    rows: list[tuple[str, ...]]
    caption: str = ""
    notes: list[str] = field(default_factory=list)
    notes_title: str = ""


ARTIFACT_HEADER = ("artifact", "params", "size", "4-bit / 8-bit weight bytes", "test acc", "acc on device",
                   "agreement", "max |err|", "p50 µs [95% CI]", "p99 µs", "× floor", "speed-up vs teacher [95% CI]",
                   "peak MiB (+ over the runtime alone)", "worst class Δ", "parity")


def models_table(summary: dict[str, Any]) -> Table:
    """The PyTorch models side by side (edgekd.bench.model_table)."""
    from edgekd.bench.model_table import MODEL_CAPTION, model_cells

    return Table("PyTorch models", *model_cells(summary), MODEL_CAPTION)


def artifacts_table(summary: dict[str, Any]) -> Table:
    """Every artifact: size, accuracy as exported and on the device, parity, latency, memory, speed-up."""
    floors = summary.get("floors") or {}
    floor_txt = "; ".join(f"{RUNTIME_OF.get(f, f)} floor (Identity graph) p50 {v['p50_us']:.2f} µs"
                          for f, v in floors.items())
    latency_txt = (f'Latency: {floor_txt}; "× floor" and the speed-up compare with the floor and the teacher in the '
                   "same runtime." if floors else "Latency: the speed-up compares with the teacher in the same runtime "
                   "(no floor was timed).")
    caption = ("Accuracy and agreement are measured on the exported artifact (test split) against its PyTorch model. "
               f"{latency_txt} {LATENCY_METHOD}")
    return Table("Artifacts", ARTIFACT_HEADER, [_artifact_cells(r) for r in summary["rows"]], caption)


def _artifact_cells(r: dict[str, Any]) -> tuple[str, ...]:
    if r.get("parity_passed"):
        status = "ok"
    else:
        status = "FAILED: " + (r.get("parity_reason") or "") if r.get("parity_passed") is False else "–"
    speed = r.get("speedup_vs_teacher")
    worst = r.get("worst_class")
    ci = r.get("ci95_p50")
    latency = ("–" if r.get("p50_us") is None  # no interval: one round of a native tool (no per-call times)
               else f"{r['p50_us']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""))
    latency += ((" unstable" if r.get("unstable") else "")
                + (stats.BELOW_RESOLUTION_MARK if r.get("resolution_limited") else "")
                + (" (emulated: not a board's latency)" if r.get("emulated") else ""))
    return (r["name"], _fmt(r.get("parameters"), ","), f"{r['size_bytes'] / 1024:.1f} KiB",
            "–" if r.get("share_4bit") is None else f"{r['share_4bit']:.0%} / {r['share_8bit']:.0%}",
            _fmt(r.get("accuracy"), ".2%"), _device_accuracy_text(r), _fmt(r.get("agreement"), ".2%"),
            _fmt(r.get("max_abs_error"), ".2e"), latency, _fmt(r.get("p99_us"), ".2f"), _fmt(r.get("x_floor"), ".2f"),
            "–" if speed is None else f"{speed:.2f}×" + _speedup_note(r),
            peak_mib(r.get("vmhwm_kb"), r.get("vmhwm_model_kb")),
            worst_class_text(worst, "class ") + (f" vs {r['class_delta_reference']}" if worst else ""), status)


def _device_accuracy_text(row: dict[str, Any]) -> str:
    """The accuracy on the device, with the samples it is of when they are fewer than the test accuracy's
    (bench.eval_samples): 100% of 5 samples is not the artifact's accuracy."""
    text = _fmt(row.get("device_accuracy"), ".2%")
    samples = row.get("device_accuracy_samples")
    if row.get("device_accuracy") is None or samples is None or samples == row.get("accuracy_samples"):
        return text
    return f"{text} (first {samples} samples)"


def embedding_table(summary: dict[str, Any]) -> Table:
    """A text run's embedding table (edgekd.text.report); no rows for other runs."""
    from edgekd.text.report import EMBEDDING_HEADER, embedding_caption, embedding_rows

    rows = embedding_rows(summary)
    return Table("Embedding against the teacher", EMBEDDING_HEADER, rows, embedding_caption(summary) if rows else "")


def runtime_table(summary: dict[str, Any]) -> Table:
    """The same model in onnxruntime and in LiteRT."""
    rows = [(f"{c['role']} {c['precision']}", f"{c['onnx_p50_us']:.2f}", f"{c['tflite_p50_us']:.2f}",
             f"{c['onnx_over_tflite']:.2f}×", _fmt(c["onnx_accuracy"], ".2%"), _fmt(c["tflite_accuracy"], ".2%"))
            for c in summary.get("runtime_comparison", [])]
    return Table("onnxruntime vs LiteRT", ("model", "onnxruntime p50 µs", "LiteRT p50 µs", "ORT / LiteRT", "ORT acc",
                                           "LiteRT acc"), rows)


def compression_table(summary: dict[str, Any]) -> Table:
    """The compress stage: the PyTorch model's parameters and accuracy at each step."""
    c = summary.get("compression") or {}
    header = ("method", "params before", "params after", "removed (measured)", "accuracy before pruning",
              "after pruning", "after KD recovery")
    if not c:
        return Table("Compression", header, [])
    cells = (str(c.get("method")), _fmt(c.get("parameters_before"), ","), _fmt(c.get("parameters_after"), ","),
             _pruned_share(c) or "–", _fmt(c.get("accuracy_before"), ".2%"),
             _fmt(c.get("accuracy_after_prune"), ".2%"),
             _fmt(c.get("accuracy_after_recovery"), ".2%", "no recovery"))
    return Table("Compression", header, [cells], "Test accuracy of the PyTorch model at each step of the compress "
                 "stage.", [str(n) for n in c.get("notes") or []])


def int8_table(summary: dict[str, Any]) -> Table:
    """Per INT8 artifact: weight grid, layers kept FP32, lowest per-layer SQNR, QAT comparison, speed vs FP32."""
    rows, grids = [], {}
    for r in summary["rows"]:
        if r.get("precision") not in INT8_PRECISIONS:
            continue
        grid = "–" if r.get("reduce_range") is None else ("7-bit" if r["reduce_range"] else "8-bit")
        if r.get("reduce_range_reason"):
            grids.setdefault(f"{grid}: {r['reduce_range_reason']}", []).append(r["name"])
        kept = r.get("kept_fp32")
        kept_txt = "–" if kept is None else (", ".join(kept) or "none") + (
            f" (of {r['layers_total']} layers)" if r.get("layers_total") else "")
        qat = r.get("qat")
        qat_txt = "–" if not qat else (f"{qat['qat_accuracy']:.2%} vs FP32 {qat['fp32_accuracy']:.2%}"
                                        + ("" if qat.get("ptq_accuracy") is None
                                           else f", int8_static {qat['ptq_accuracy']:.2%}"))
        slow = r.get("int8_speed")
        speed_txt = "–" if not slow else f"not faster: {r['p50_us'] / slow['fp32_p50_us']:.2f}× FP32's p50"
        rows.append((r["name"], _fmt(r.get("accuracy"), ".2%"), grid, kept_txt, _layers_txt(r), qat_txt, speed_txt))
    header = ("artifact", "test acc", "weights", "kept FP32", f"lowest per-layer SQNR (worst {WORST_LAYERS})", "QAT",
              "speed on the device")
    caption = ("SQNR of each Conv/Gemm/MatMul output against the FP32 graph on the test split, as onnxruntime runs the "
               "artifact (fused integer kernels) and as the QDQ graph is written; errors accumulate from layer to "
               "layer. Kept FP32: layers the mixed-precision fallback left unquantized to pass parity. Why an INT8 "
               "artifact is not faster: see the findings.")
    notes = [f"{reason} ({', '.join(names)})" for reason, names in grids.items()]
    return Table("INT8: where accuracy went", header, rows, caption, notes, "Weight grid:" if notes else "")


def _layers_txt(row: dict[str, Any]) -> str:
    parts = []
    for layer in row.get("worst_layers") or []:
        simulated = layer.get("sqnr_db_simulated")
        parts.append(f"{layer['node']} ({layer['op']}) {layer['sqnr_db']:.1f} dB"
                     + ("" if simulated is None else f" ({simulated:.1f} as written)"))
    return "; ".join(parts) or "–"


def per_class_table(summary: dict[str, Any]) -> Table:
    """Each artifact's test accuracy per class."""
    rows = [(r["name"], *(f"{v:.0%}" for v in r["per_class_accuracy"])) for r in summary["rows"]
            if r["per_class_accuracy"]]
    return Table("Per-class test accuracy", ("artifact", *(summary.get("class_names") or [])), rows)


# The tables in page order, before and after the plots (the HTML page puts its plots between them; the Markdown
# page links the Pareto plot after all of them).
BEFORE_PLOTS = (models_table, artifacts_table, embedding_table, runtime_table, compression_table, int8_table)
AFTER_PLOTS = (per_class_table,)
