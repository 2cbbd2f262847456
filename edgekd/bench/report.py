"""Teacher-vs-student report: a summary (JSON) built from artifact records and bench results, and a
self-contained HTML page with embedded matplotlib plots (opens without network)."""

from __future__ import annotations

import base64
import html
import io
import time
from pathlib import Path
from typing import Any

from edgekd.bench import stats
from edgekd.bench.result import BenchResult
from edgekd.export.artifact import Artifact
from edgekd.rundir import RunDir, atomic_write

SUMMARY_SCHEMA = "edgekd.summary/1"
ROLE_ORDER = {"teacher": 0, "student": 1, "scratch": 2}
PRECISION_ORDER = {"fp32": 0, "int8_static": 1, "int8_dynamic": 2, "int4": 3}
FORMAT_ORDER = {"onnx": 0, "tflite": 1}
RUNTIME_OF = {"onnx": "onnxruntime", "tflite": "LiteRT"}
LAYOUT_SHARE_WARNING = 0.2  # warn when Transpose-like ops are this share of a graph's operators


def _row(artifact: Artifact, result: BenchResult | None) -> dict[str, Any]:
    p = artifact.parity
    row: dict[str, Any] = {
        "name": artifact.name, "role": artifact.role, "format": artifact.format, "precision": artifact.precision,
        "parameters": artifact.parameters, "size_bytes": artifact.size_bytes, "sha256": artifact.sha256,
        "accuracy": p.accuracy if p else None, "agreement": p.agreement if p else None,
        "max_abs_error": p.max_abs_error if p else None, "parity_passed": p.passed if p else None,
        "parity_reason": p.reason if p else None, "per_class_accuracy": p.per_class_accuracy if p else [],
        "ops": sum(artifact.op_histogram.values()), "layout_ops": artifact.layout_ops,
        "int4_bytes": artifact.weight_bits.get("int4_bytes"), "share_4bit": artifact.weight_bits.get("share_4bit"),
        "share_8bit": artifact.weight_bits.get("share_8bit"),
        "int4_settings": ({k: artifact.quantization.get(k) for k in ("block_size", "accuracy_level", "recipe")
                           if k in artifact.quantization} if artifact.quantization and artifact.precision == "int4"
                          else None),
    }
    if result is not None:
        lat = result.latency_us
        row.update({"p50_us": lat["p50"], "ci95_p50": lat["ci95_p50"], "p90_us": lat["p90"], "p99_us": lat["p99"],
                    "cv": lat["cv"], "unstable": lat["unstable"], "unstable_reasons": lat.get("unstable_reasons", []),
                    "runs": lat["n"], "vmhwm_kb": result.memory_kb.get("vmhwm"), "load_ms": result.load_ms,
                    "device_accuracy": (result.device_accuracy or {}).get("accuracy"),
                    "first_inference_us": result.first_inference_us, "device": result.device.get("name"),
                    "emulated": result.emulated or bool(result.device.get("emulated")),
                    "cross_arch_parity": result.cross_arch_parity})
    return row


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
    artifacts = [Artifact.load(p) for p in sorted(rundir.artifacts.glob("*/artifact.json"))]
    results = {r.artifact["sha256"]: r for r in (BenchResult.load(p) for p in sorted(rundir.results.glob("bench-*.json")))}
    floors = {a.format: results.get(a.sha256) for a in artifacts if a.role == "floor"}
    models = sorted((a for a in artifacts if a.role != "floor"),
                    key=lambda a: (ROLE_ORDER.get(a.role, 9), FORMAT_ORDER.get(a.format, 9),
                                   PRECISION_ORDER.get(a.precision, 9)))
    rows = [_row(a, results.get(a.sha256)) for a in models]
    by_name = {r["name"]: r for r in rows}
    teachers = {a.format: results.get(a.sha256) for a in models if a.role == "teacher" and a.precision == "fp32"}
    for art, row in zip(models, rows):
        res, teacher, floor = results.get(art.sha256), teachers.get(art.format), floors.get(art.format)
        if res is not None and teacher is not None and res.latencies_ns and teacher.latencies_ns:
            # speed-up against the teacher in the same runtime (native summaries have no per-call times)
            cmp = stats.compare(teacher.latencies_ns, res.latencies_ns)
            row.update({"speedup_vs_teacher": cmp["ratio"], "speedup_ci95": cmp["ratio_ci95"],
                        "speedup_significant": cmp["significant"]})
        if res is not None and floor is not None and res.latency_us.get("p50") and floor.latency_us.get("p50"):
            row["x_floor"] = res.latency_us["p50"] / floor.latency_us["p50"]
        ref = by_name.get(_per_class_reference(row) or "")
        if ref and row["per_class_accuracy"] and ref["per_class_accuracy"]:
            deltas = [(a - b) * 100 for a, b in zip(row["per_class_accuracy"], ref["per_class_accuracy"])]
            worst = min(range(len(deltas)), key=deltas.__getitem__)
            row["class_delta_reference"] = ref["name"]
            row["worst_class"] = {"class": class_names[worst] if worst < len(class_names) else str(worst),
                                  "delta_points": deltas[worst]}
    any_result = next((r for r in floors.values() if r), None) or next(iter(results.values()), None)
    summary = {
        "schema": SUMMARY_SCHEMA,
        "run": recipe.get("name"),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": _machine(any_result),
        "runtimes": {fmt: floor.runtime for fmt, floor in floors.items() if floor},
        "recipe": recipe,
        "models": model_metrics,
        "class_names": class_names,
        "floors": {fmt: {"p50_us": f.latency_us["p50"], "ci95_p50": f.latency_us["ci95_p50"]}
                   for fmt, f in floors.items() if f},
        "rows": rows,
        "runtime_comparison": _runtime_comparison(rows),
    }
    summary["findings"] = findings(summary)
    return summary


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
                   f"budget per student ({gain:+.1f} points), both seeing labels for "
                   f"{student.get('labelled_samples', '?')} training samples; the KD student also learns from "
                   f"{source} on {student.get('transfer_samples', '?')} samples.")
    for row in rows:
        if row.get("parity_passed") is False:
            out.append(f"FAILED: {row['name']} did not pass its parity check ({row['parity_reason']}); "
                       "do not ship it.")
    for fmt, floor in (summary.get("floors") or {}).items():
        timed = [r for r in rows if r.get("p50_us") is not None and r["role"] == "student" and r["format"] == fmt]
        if not timed:
            continue
        runtime = RUNTIME_OF.get(fmt, fmt)
        fastest = min(timed, key=lambda r: r["p50_us"])
        out.append(f"{runtime}: fastest student artifact {fastest['name']} at p50 {fastest['p50_us']:.2f} µs, "
                   f"{fastest['p50_us'] / floor['p50_us']:.2f}× the runtime's per-call floor "
                   f"({floor['p50_us']:.2f} µs for an Identity graph): at this size the runtime's call overhead, "
                   "not the model, sets the latency.")
        fp32 = next((r for r in timed if r["precision"] == "fp32"), None)
        for row in timed:
            if fp32 and row["precision"] != "fp32" and row["p50_us"] > fp32["p50_us"]:
                out.append(
                    f"{runtime}: {row['name']} is slower than FP32 ({row['p50_us']:.2f} vs {fp32['p50_us']:.2f} µs): "
                    f"the student has only {row.get('parameters') or 0:,} parameters, so quantize/dequantize steps "
                    "and extra operators cost more than the narrower arithmetic saves; quantization pays off when a "
                    "model's time goes into large matrix multiplies or convolutions (and its file is smaller "
                    f"either way: {row['size_bytes'] / 1024:.1f} vs {fp32['size_bytes'] / 1024:.1f} KiB).")
    for row in rows:
        if row.get("device_accuracy") is not None and row.get("accuracy") is not None \
                and abs(row["device_accuracy"] - row["accuracy"]) > 1e-9:
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
    unstable = [r["name"] for r in rows if r.get("unstable")]
    if unstable:
        out.append(f"Unstable timings (high spread; rerun on a quieter machine): {', '.join(unstable)}.")
    return out


# -- HTML -----------------------------------------------------------------------------------

def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not beaten by another that is both faster (lower p50) and more accurate."""
    front, best = [], -1.0
    for p50, acc in sorted(points):
        if acc > best:
            front.append((p50, acc))
            best = acc
    return front


def _log_axis_plain(axis) -> None:
    """Log scale with plain tick labels (5, 10, 50 µs), not 5×10⁰."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    axis.axes.set_xscale("log")
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def plots(summary: dict[str, Any], latencies: dict[str, list[int]]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    images: dict[str, str] = {}
    rows = [r for r in summary["rows"] if r.get("p50_us") is not None and r.get("accuracy") is not None]
    if rows:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        colors = {"teacher": "tab:red", "student": "tab:blue", "scratch": "tab:gray"}
        markers = {"onnx": "o", "tflite": "s"}
        for i, r in enumerate(rows):
            ax.scatter(r["p50_us"], r["accuracy"] * 100, color=colors.get(r["role"], "k"),
                       marker=markers.get(r["format"], "o"), s=40, zorder=3)
            ax.annotate(f"{r['role']} {r['format']} {r['precision']}", (r["p50_us"], r["accuracy"] * 100), fontsize=6,
                        xytext=(4, 4 if i % 2 == 0 else -10), textcoords="offset points")  # alternate: no overlap
        front = _pareto([(r["p50_us"], r["accuracy"] * 100) for r in rows])
        ax.step([p for p, _ in front], [a for _, a in front], where="post", color="tab:green", alpha=0.6,
                label="Pareto front")
        for fmt, floor in (summary.get("floors") or {}).items():
            ax.axvline(floor["p50_us"], color="k", ls=":" if fmt == "onnx" else "--", lw=1,
                       label=f"{RUNTIME_OF.get(fmt, fmt)} floor")
        _log_axis_plain(ax.xaxis)
        ax.set_xlabel("p50 latency (µs, log scale)")
        ax.set_ylabel("test accuracy of the artifact (%)")
        ax.set_title("Accuracy vs latency (circles onnxruntime, squares LiteRT)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        images["pareto"] = _png(fig)
        plt.close(fig)
    if latencies:
        names = list(latencies)
        fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2))
        ax.boxplot([[v / 1000 for v in latencies[n]] for n in names], orientation="horizontal", showfliers=False)
        ax.set_yticks(range(1, len(names) + 1), names, fontsize=8)
        _log_axis_plain(ax.xaxis)
        ax.set_xlabel("latency per call (µs, log scale; whiskers 1.5 IQR, outliers hidden)")
        ax.set_title("Latency distributions")
        ax.grid(alpha=0.3, axis="x")
        images["latency"] = _png(fig)
        plt.close(fig)
    return images


def _fmt(value: Any, spec: str, empty: str = "–") -> str:
    return empty if value is None else format(value, spec)


def write_html(summary: dict[str, Any], path: Path) -> Path:
    rundir_results = path.parent.parent / "results"
    latencies = {}
    for p in sorted(rundir_results.glob("bench-*.json")):
        r = BenchResult.load(p)
        latencies[r.artifact["name"]] = r.latencies_ns
    images = plots(summary, latencies)
    e = html.escape
    machine = summary.get("machine") or {}
    system = machine.get("system") or {}
    rows_html = []
    for r in summary["rows"]:
        status = "ok" if r.get("parity_passed") else ("FAILED: " + (r.get("parity_reason") or "") if r.get("parity_passed") is False else "–")
        speed = r.get("speedup_vs_teacher")
        speed_txt = "–" if speed is None else f"{speed:.2f}× [{r['speedup_ci95'][0]:.2f}, {r['speedup_ci95'][1]:.2f}]" + (
            "" if r.get("speedup_significant") else " (within noise)")
        worst = r.get("worst_class")
        worst_txt = "–" if not worst else f"class {worst['class']}: {worst['delta_points']:+.1f} pt vs {r['class_delta_reference']}"
        ci = r.get("ci95_p50")
        bits = "–" if r.get("share_4bit") is None else f"{r['share_4bit']:.0%} / {r['share_8bit']:.0%}"
        rows_html.append(
            "<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in [
                r["name"], _fmt(r.get("parameters"), ","), f"{r['size_bytes'] / 1024:.1f} KiB", bits,
                _fmt(r.get("accuracy"), ".2%"), _fmt(r.get("device_accuracy"), ".2%"), _fmt(r.get("agreement"), ".2%"),
                _fmt(r.get("max_abs_error"), ".2e"),
                (f"{r['p50_us']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]" if r.get("p50_us") is not None else "–")
                + (" unstable" if r.get("unstable") else "")
                + (" (emulated: not a board's latency)" if r.get("emulated") else ""),
                _fmt(r.get("p99_us"), ".2f"), _fmt(r.get("x_floor"), ".2f"), speed_txt,
                _fmt(r.get("vmhwm_kb") and r["vmhwm_kb"] / 1024, ".1f"), worst_txt, status]) + "</tr>")
    header = ["artifact", "params", "size", "4-bit / 8-bit weight bytes", "test acc", "acc on device", "agreement", "max |err|", "p50 µs [95% CI]", "p99 µs",
              "× floor", "speed-up vs teacher [95% CI]", "peak MiB", "worst class Δ", "parity"]
    class_names = summary.get("class_names") or []
    per_class = "".join(
        "<tr><td>" + e(r["name"]) + "</td>" + "".join(f"<td>{v:.0%}</td>" for v in r["per_class_accuracy"]) + "</tr>"
        for r in summary["rows"] if r["per_class_accuracy"])
    floors = summary.get("floors") or {}
    floor_txt = "; ".join(f"{RUNTIME_OF.get(f, f)} floor (Identity graph) p50 {v['p50_us']:.2f} µs" for f, v in floors.items())
    comparison = "".join(
        f"<tr><td>{e(c['role'])} {e(c['precision'])}</td><td>{c['onnx_p50_us']:.2f}</td><td>{c['tflite_p50_us']:.2f}</td>"
        f"<td>{c['onnx_over_tflite']:.2f}×</td><td>{_fmt(c['onnx_accuracy'], '.2%')}</td>"
        f"<td>{_fmt(c['tflite_accuracy'], '.2%')}</td></tr>" for c in summary.get("runtime_comparison", []))
    runtimes = summary.get("runtimes") or {}
    runtime_txt = ", ".join(f"{e(str(r.get('name')))} {e(str(r.get('version')))}"
                            + (f" (delegate {e(str(r.get('delegate')))})" if r.get("delegate") else "")
                            for r in runtimes.values())
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
<p class="meta">{e(summary.get('created_at', ''))} · device {e(str(machine.get('device')))}{' (EMULATED: latency is not a board&#39;s)' if machine.get('emulated') else ''} ·
CPU {e(str(system.get('cpu_model')))} ({e(str(system.get('cpu_count_logical')))} logical cores;
features: {e(', '.join(system.get('cpu_features') or []) or 'none detected')}) · governor {e(str(system.get('governor')))} ·
{e(str(machine.get('threads')))} thread(s), batch {e(str(machine.get('batch_size')))} ·
runtimes {runtime_txt}</p>
<h2>Findings</h2><ul class="findings">{''.join(f'<li>{e(f)}</li>' for f in summary.get('findings', []))}</ul>
<h2>Artifacts</h2>
<table><tr>{''.join(f'<th>{e(h)}</th>' for h in header)}</tr>{''.join(rows_html)}</table>
<p class="meta">Accuracy and agreement are measured on the exported artifact (test split) against its PyTorch model.
Latency: {e(floor_txt)}; "× floor" and the speed-up compare with the floor and the teacher in the same runtime;
speed-up intervals are bootstrap 95% intervals of the ratio of medians; "within noise" means the interval contains 1.</p>
{f'<h2>onnxruntime vs LiteRT</h2><table><tr><th>model</th><th>onnxruntime p50 µs</th><th>LiteRT p50 µs</th><th>ORT / LiteRT</th><th>ORT acc</th><th>LiteRT acc</th></tr>{comparison}</table>' if comparison else ''}
{f'<h2>Accuracy vs latency</h2><img alt="accuracy vs p50" src="{images["pareto"]}">' if 'pareto' in images else ''}
{f'<h2>Latency distributions</h2><img alt="latency distributions" src="{images["latency"]}">' if 'latency' in images else ''}
<h2>Per-class test accuracy</h2>
<table><tr><th>artifact</th>{''.join(f'<th>{e(c)}</th>' for c in class_names)}</tr>{per_class}</table>
</body></html>
"""
    return atomic_write(path, doc)
