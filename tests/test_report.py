"""The run report's compression, INT8 and Pareto sections, checked on a real small run (training, pruning, KD
recovery, export with the mixed-precision fallback, onnxruntime, the bench runner) and on hand-made rows for the
instruction-set explanation of slow INT8."""

from __future__ import annotations

import base64
import json
import platform
from pathlib import Path

import pytest
import yaml

import edgekd
from edgekd.bench import stats
from edgekd.bench.report import (INT8_PRECISIONS, PARETO_PNG, SATURATION_GAP_DB, WORST_LAYERS, findings,
                                 pareto_figure)
from edgekd.bench.runner import CPU_FEATURES_OF_INTEREST
from edgekd.compress.isa import cpu_flags, cpu_int8_features
from edgekd.rundir import read_json

from conftest import TINY_RECIPE

CPUINFO = Path("/proc/cpuinfo")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Tiny recipe + structured pruning with recovery, ONNX INT8 on 8-bit weights and parity 100% (so the
    mixed-precision fallback has work to do), benchmarked on this host."""
    recipe = yaml.safe_load(TINY_RECIPE.read_text())
    recipe.update(name="report", output_dir=str(tmp_path_factory.mktemp("report")))
    recipe["scratch"] = {"enabled": False}
    recipe["compress"] = {"enabled": True, "prune": {"method": "structured", "ratio": 0.5}, "recovery": {"epochs": 2}}
    recipe["export"].update(
        formats=["onnx"], int8_reduce_range=False, qat={"enabled": False},
        targets={"teacher": ["fp32"], "student": ["fp32", "int8_static", "int8_dynamic"], "scratch": [],
                 "compressed": ["fp32", "int8_static"]},
        parity={"min_agreement": 1.0, "min_agreement_int4": 0.85})
    result = edgekd.run(edgekd.load_recipe(recipe))
    return result, read_json(result.summary_path), result.report_path.read_text()


def _host_saturates() -> bool:
    host = cpu_int8_features()
    return host["arch"] == "x86_64" and host["avx2"] and not (host["vnni"] or host["amx_int8"])


def test_compression_accuracy_at_each_step(run):
    result, summary, html = run
    metrics = result.rundir.load_manifest()["stages"]["compress"]["metrics"]
    c = summary["compression"]
    for key in ("accuracy_before", "accuracy_after_prune", "accuracy_after_recovery", "parameters_before",
                "parameters_after", "method"):
        assert c[key] == metrics[key], key
    sentence = next(f for f in summary["findings"] if f.startswith("Compression (structured)"))
    assert (f"{c['accuracy_before']:.2%} before pruning → {c['accuracy_after_prune']:.2%} after pruning → "
            f"{c['accuracy_after_recovery']:.2%} after KD recovery") in sentence
    assert "<h2>Compression</h2>" in html and f"{c['accuracy_after_recovery']:.2%}" in html
    # what pruning measurably removed, not the ratio asked for (rounding to round_to groups moves it)
    removed = f"{metrics['channels_removed']:.0%} of channels removed"
    assert c["channels_removed"] == metrics["channels_removed"] and removed in sentence and removed in html
    assert summary["models"]["compressed"]["parameters"] == c["parameters_after"]


def test_int8_rows_list_kept_layers_and_worst_sqnr(run):
    result, summary, html = run
    records = {a.name: a for a in result.artifacts}
    int8 = [r for r in summary["rows"] if r["precision"] in INT8_PRECISIONS]
    assert {r["name"] for r in int8} == {"student-onnx-int8_static", "student-onnx-int8_dynamic",
                                         "compressed-onnx-int8_static"}
    section = html[html.index("<h2>INT8: where accuracy went</h2>"):]
    for row in int8:
        q = records[row["name"]].quantization
        assert row["kept_fp32"] == q.get("kept_fp32", [])
        assert bool(row["kept_fp32"]) == ("mixed_precision" in q)  # the fallback ran exactly when layers were kept
        expected = sorted((e for e in q["layer_errors"] if e["sqnr_db"] is not None), key=lambda e: e["sqnr_db"])
        assert [w["node"] for w in row["worst_layers"]] == [e["node"] for e in expected[:WORST_LAYERS]]
        assert [w["sqnr_db"] for w in row["worst_layers"]] == [e["sqnr_db"] for e in expected[:WORST_LAYERS]]
        assert row["reduce_range"] is False and row["reduce_range_reason"].startswith("set by the recipe")
        assert row["name"] in section
        kept_finding = [f for f in summary["findings"] if f.startswith(f"{row['name']}: ") and "kept in FP32" in f]
        assert bool(kept_finding) == bool(row["kept_fp32"])
        if row["kept_fp32"]:
            assert all(node in kept_finding[0] for node in row["kept_fp32"])
            assert ", ".join(row["kept_fp32"]) in section
        said = any(f.startswith(f"{row['name']}: layer ") and "integer kernels lose it" in f for f in summary["findings"])
        if set(row["kept_fp32"]) == {e["node"] for e in q["layer_errors"]}:  # every layer FP32: the FP32 graph
            assert row["worst_layers"] == [] and not said and "int8_speed" not in row  # no INT8 to blame
            assert "ship the FP32 artifact instead" in kept_finding[0]
            assert records[row["name"]].parity.max_abs_error < 1e-4
            continue
        worst = row["worst_layers"][0]
        assert f"{worst['node']} ({worst['op']}) {worst['sqnr_db']:.1f} dB" in section
        # integer-kernel saturation is called out exactly when deployed SQNR trails the written QDQ math
        gap = (worst["sqnr_db_simulated"] or worst["sqnr_db"]) - worst["sqnr_db"]
        assert said == (gap > SATURATION_GAP_DB), (row["name"], gap)
    if _host_saturates():  # 8-bit weights on x86 without VNNI: parity 100% needs FP32 layers somewhere
        assert any(r["kept_fp32"] for r in int8)


def test_int8_not_faster_than_fp32_is_explained_from_the_device(run):
    _, summary, html = run
    rows = {r["name"]: r for r in summary["rows"]}
    host = cpu_int8_features()
    for row in rows.values():
        if row["precision"] not in INT8_PRECISIONS:
            continue
        # the device's flags as the runner read them on the device (here: this host)
        assert row["device_machine"] == platform.machine()
        assert set(row["device_cpu_features"]) == set(CPU_FEATURES_OF_INTEREST) & cpu_flags(CPUINFO.read_text())
        fp32 = rows[f"{row['role']}-onnx-fp32"]
        all_fp32 = len(row["kept_fp32"] or []) == row["layers_total"]  # nothing runs in INT8: no ISA to blame
        # a failed FP32 is no reference (nobody ships it): no note against it
        slower = row["p50_us"] >= fp32["p50_us"] and not all_fp32 and fp32["parity_passed"] is not False
        assert bool(row.get("int8_speed")) == slower, row["name"]
        grouped = [f for f in summary["findings"] if "INT8 is not faster than FP32 for" in f and row["name"] in f]
        assert bool(grouped) == slower
        if slower:
            assert f"p50 {row['p50_us']:.1f} vs {fp32['p50_us']:.1f} µs" in grouped[0]
            if _host_saturates():
                assert "no VNNI or AMX" in grouped[0]
            elif host["vnni"]:
                assert "no VNNI" not in grouped[0]
            assert "not faster" in html


def _pareto_label(row: dict) -> str:
    """An artifact's label in the Pareto plot. One that failed parity says so (INT8 flips a test sample on some
    CPUs, an AVX-512 VNNI EPYC among them, and this recipe asks for 100% agreement)."""
    return f"{row['role']} {row['format']} {row['precision']}" + (" (failed parity)" if row["parity_passed"] is False
                                                                  else "")


def test_pareto_plot_has_one_labelled_point_per_artifact(run):
    result, summary, html = run
    png = (result.report_path.parent / PARETO_PNG).read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert base64.b64encode(png).decode() in html  # the same image, embedded: the page opens offline
    fig = pareto_figure(summary)
    by_time, by_size = fig.axes
    labels = {_pareto_label(r) for r in summary["rows"]}
    assert {t.get_text() for t in by_size.texts} == labels and len(by_size.collections) == len(labels)
    timed = {_pareto_label(r) for r in summary["rows"] if r.get("p50_us")}
    assert {t.get_text() for t in by_time.texts} == timed == labels
    assert "file size" in by_size.get_xlabel() and "p50" in by_time.get_xlabel()
    points = by_size.collections[0].get_offsets()[0]
    first = summary["rows"][0]
    assert points[0] == pytest.approx(first["size_bytes"] / 1024) and points[1] == pytest.approx(100 * first["accuracy"])


def _rows(*specs):
    rows = []
    for name, precision, p50, flags, machine in specs:
        role, fmt, _ = name.split("-", 2)
        rows.append({"name": name, "role": role, "format": fmt, "precision": precision, "p50_us": p50,
                     "size_bytes": 8000 if precision == "fp32" else 3000, "device": "board",
                     "device_cpu_features": flags, "device_machine": machine, "ops": 1, "layout_ops": 0})
    return rows


def test_slow_int8_findings_name_the_device_instruction_set():
    from edgekd.bench.report import _int8_speed_notes

    pi4 = ["asimd"]
    rows = _rows(("student-onnx-fp32", "fp32", 40.0, pi4, "aarch64"),
                 ("student-onnx-int8_static", "int8_static", 52.0, pi4, "aarch64"),
                 ("student-onnx-int8_dynamic", "int8_dynamic", 47.0, pi4, "aarch64"),
                 ("teacher-onnx-fp32", "fp32", 300.0, pi4, "aarch64"),
                 ("teacher-onnx-int8_static", "int8_static", 120.0, pi4, "aarch64"))
    _int8_speed_notes(rows)
    text = findings({"rows": rows})
    slow = [f for f in text if "INT8 is not faster" in f]
    assert len(slow) == 1  # both student INT8 artifacts, one explanation
    assert "student-onnx-int8_static (p50 52.0 vs 40.0 µs)" in slow[0] and "student-onnx-int8_dynamic" in slow[0]
    assert "asimddp" in slow[0] and "teacher-onnx-int8_static" not in slow[0]  # the faster teacher INT8: nothing
    assert "smaller than FP32's" in slow[0]
    dotprod = _rows(("student-onnx-fp32", "fp32", 400.0, ["asimd", "asimddp"], "aarch64"),
                    ("student-onnx-int8_static", "int8_static", 410.0, ["asimd", "asimddp"], "aarch64"))
    _int8_speed_notes(dotprod)
    (sentence,) = [f for f in findings({"rows": dotprod}) if "not faster" in f]
    assert "fast INT8 instructions (dotprod)" in sentence
    unknown = _rows(("student-onnx-fp32", "fp32", 40.0, [], ""), ("student-onnx-int8_static", "int8_static", 60.0, [], ""))
    _int8_speed_notes(unknown)
    (sentence,) = [f for f in findings({"rows": unknown}) if "not faster" in f]
    assert "flags are unknown" in sentence and "VNNI" not in sentence
    emulated = _rows(("student-onnx-fp32", "fp32", 40.0, pi4, "aarch64"),
                     ("student-onnx-int8_static", "int8_static", 90.0, pi4, "aarch64"))
    emulated[1]["emulated"] = True  # an emulator's latency says nothing about the board's instructions
    _int8_speed_notes(emulated)
    assert not any("not faster" in f for f in findings({"rows": emulated}))


def test_a_speed_note_never_takes_a_failed_fp32_as_its_reference():
    """The INT8 note ("INT8 is not faster than FP32 …") measured INT8 against an FP32 artifact that failed its
    parity check, a model nobody ships; the INT4 note already left such an FP32 out. Both choose alike now."""
    from edgekd.bench.report import _int8_speed_notes

    def notes(fp32_passed: bool) -> list[str]:
        rows = _rows(("student-onnx-fp32", "fp32", 40.0, ["asimd"], "aarch64"),
                     ("student-onnx-int8_static", "int8_static", 52.0, ["asimd"], "aarch64"),
                     ("student-onnx-int4", "int4", 60.0, ["asimd"], "aarch64"))
        rows[0].update(parity_passed=fp32_passed, parity_reason=None if fp32_passed else "max |err| 3.1 > 1e-4")
        _int8_speed_notes(rows)
        assert bool(rows[1].get("int8_speed")) == fp32_passed
        return [f for f in findings({"rows": rows, "floors": {"onnx": {"p50_us": 5.0}}}) if "than FP32" in f]

    assert len(notes(True)) == 2  # INT8 not faster, INT4 slower: against the FP32 that passed
    assert notes(False) == []  # no reference left to be slower than


def test_a_run_without_a_floor_is_told_its_int4_is_slower_than_fp32():
    """A text run times no floor graph (its models take token ids), and the INT4-slower-than-FP32 finding lived
    inside the floor's loop: a text student's INT4 at 1.6× its FP32 went unsaid."""
    rows = _rows(("student-onnx-fp32", "fp32", 400.0, ["avx2"], "x86_64"),
                 ("student-onnx-int4", "int4", 650.0, ["avx2"], "x86_64"))
    without = [f for f in findings({"rows": rows}) if "than FP32" in f]
    assert len(without) == 1 and without[0].startswith("onnxruntime: student-onnx-int4 is slower than FP32"), without
    with_floor = findings({"rows": rows, "floors": {"onnx": {"p50_us": 5.0}}})
    assert [f for f in with_floor if "than FP32" in f] == without
    assert any("per-call floor" in f for f in with_floor) and not any("per-call floor" in f for f in findings(
        {"rows": rows}))


def test_int8_accuracy_findings_from_rows():
    saturated = {"name": "student-onnx-int8_static", "role": "student", "format": "onnx", "precision": "int8_static",
                 "kept_fp32": [], "layers_total": 2, "reduce_range": False, "ops": 1, "layout_ops": 0,
                 "worst_layers": [{"node": "node_linear", "op": "Gemm", "sqnr_db": 21.2, "sqnr_db_simulated": 46.0}]}
    clean = {**saturated, "name": "student-onnx-int8_dynamic", "precision": "int8_dynamic",
             "worst_layers": [{"node": "node_linear", "op": "Gemm", "sqnr_db": 42.1, "sqnr_db_simulated": 42.1}]}
    partly = {**clean, "name": "teacher-onnx-int8_static", "kept_fp32": ["node_Conv_60"], "layers_total": 5}
    text = findings({"rows": [saturated, clean, partly]})
    (sat,) = [f for f in text if "integer kernels lose it" in f]
    assert sat.startswith("student-onnx-int8_static: layer node_linear has SQNR 21.2 dB") and "46.0 dB" in sat
    assert "8-bit" in sat and "export.int8_reduce_range" in sat
    (kept,) = [f for f in text if "kept in FP32" in f]
    assert kept == "teacher-onnx-int8_static: 1 of 5 layers kept in FP32 to pass parity (node_Conv_60)."


EPYC_FLAGS = ["sse4_2", "avx", "avx2", "fma", "f16c"]  # what the runner reports on this AVX2, non-VNNI host


def _int8_onnx(flags, machine, reduce_range, *, setting="auto", targets=("pi",), device="board"):
    """One ONNX INT8 row as the report builds it: the export's weight grid and the CPU its bench ran on."""
    (row,) = _rows(("student-onnx-int8_static", "int8_static", 50.0, flags, machine))
    row.update(device=device, reduce_range=reduce_range, reduce_range_setting=setting,
               reduce_range_for=list(targets), layers_total=2, kept_fp32=[])
    return row


def _grid(row):
    return [f for f in findings({"rows": [row]}) if "INT8 weights" in f]


def test_8bit_weights_benchmarked_on_a_cpu_that_saturates_them_are_named():
    """The export chose 8-bit weights for one CPU (a profile saying Arm, a VNNI host) and the bench ran them on
    an x86 without VNNI, whose kernels saturate them: say so, and how to get the right grid."""
    (sentence,) = _grid(_int8_onnx(EPYC_FLAGS, "x86_64", False, targets=("pi",)))
    assert sentence.startswith("student-onnx-int8_static: 8-bit INT8 weights (chosen for pi) were benchmarked on "
                               "board, whose CPU needs 7-bit ones")
    assert "without AVX-VNNI/AMX (avx2)" in sentence and "saturate" in sentence
    assert "re-export with bench.device: board" in sentence and "export.int8_reduce_range: true" in sentence
    # decided for this very device: its profile's `cpu:` says another CPU than the runner reports
    (sentence,) = _grid(_int8_onnx(EPYC_FLAGS, "x86_64", False, targets=("board",)))
    assert "set `cpu:` in the profile of board" in sentence
    # a recipe that forced 8-bit weights is told too: the saturation is real whatever asked for it
    (sentence,) = _grid(_int8_onnx(EPYC_FLAGS, "x86_64", False, setting=False))
    assert "the recipe set export.int8_reduce_range: false; set it to auto" in sentence


def test_7bit_weights_benchmarked_on_a_cpu_that_takes_8bit_are_named_unless_asked_for():
    """An Arm board benchmarked with the 7-bit grid an unknown target gets: say that `cpu:` in its profile (or
    bench.device) would give it 8-bit weights. Not when the recipe set int8_reduce_range: true itself."""
    (sentence,) = _grid(_int8_onnx(["asimd", "asimddp"], "aarch64", True, targets=("pi",), device="pi"))
    assert sentence.startswith("student-onnx-int8_static: 7-bit INT8 weights (chosen for pi) were benchmarked on "
                               "pi, whose CPU takes 8-bit ones")
    assert "Arm" in sentence and "set `cpu:` in the profile of pi" in sentence
    assert "export.int8_reduce_range: false" in sentence
    (sentence,) = _grid(_int8_onnx(["avx2", "avx512f", "avx512_vnni"], "x86_64", True, targets=()))
    assert "(chosen with no target device)" in sentence and "avx512_vnni" in sentence
    assert not _grid(_int8_onnx(["asimd"], "aarch64", True, setting=True))


@pytest.mark.parametrize("flags, machine, reduce_range", [
    (EPYC_FLAGS, "x86_64", True),                        # the grid this CPU needs
    (["avx2", "avx_vnni"], "x86_64", False),
    (["asimd"], "aarch64", False),
    ([], "x86_64", False),                               # the runner could not read the flags: unknown, no claim
    ([], "", True),
])
def test_no_weight_grid_finding_when_the_grid_fits_or_the_cpu_is_unknown(flags, machine, reduce_range):
    assert not _grid(_int8_onnx(flags, machine, reduce_range))


def test_a_run_names_8bit_weights_benchmarked_where_they_saturate(run):
    """End to end: the run forces 8-bit weights (int8_reduce_range: false) and benchmarks on this host; the rows
    carry the artifact's grid and target, and on an x86 host without VNNI the findings say the weights saturate."""
    result, summary, _ = run
    records = {a.name: a for a in result.artifacts}
    rows = [r for r in summary["rows"] if r["precision"] in INT8_PRECISIONS]
    for row in rows:
        q = records[row["name"]].quantization
        assert row["reduce_range"] is q["reduce_range"] is False and row["reduce_range_setting"] is False
        assert row["reduce_range_for"] == [t["device"] for t in q["reduce_range_targets"]] == ["host"]
    grid = {f.split(":")[0] for f in summary["findings"] if "8-bit INT8 weights" in f}
    expected = {r["name"] for r in rows if len(r["kept_fp32"]) < (r["layers_total"] or 0)}  # an INT8 layer left
    assert grid == (expected if _host_saturates() else set()), (grid, expected)


def test_an_artifact_that_failed_parity_is_never_the_fastest_candidate():
    rows = _rows(("student-onnx-fp32", "fp32", 40.0, [], ""), ("student-onnx-int4", "int4", 8.0, [], ""))
    rows[1].update(parity_passed=False, parity_reason="agreement 90% < 97%")
    text = findings({"rows": rows, "floors": {"onnx": {"p50_us": 4.0}}})
    (fastest,) = [f for f in text if "fastest student artifact" in f]
    assert "student-onnx-fp32" in fastest and any(f.startswith("FAILED: student-onnx-int4") for f in text)


def test_the_speed_up_says_when_one_round_gives_no_interval():
    from edgekd.bench.report import _speedup_note

    assert _speedup_note({"speedup_ci95": None}) == " (one round: no interval)"
    assert _speedup_note({"speedup_ci95": None, "speedup_no_interval": "no spread"}) == \
        " (rounds without spread, under the clock's resolution: no interval)"
    assert _speedup_note({"speedup_ci95": (1.8, 2.2), "speedup_significant": True}) == " [1.80, 2.20]"
    assert _speedup_note({"speedup_ci95": (0.9, 1.1), "speedup_significant": False}).endswith("(within noise)")


def test_peak_memory_shows_what_the_model_adds_to_the_runtime():
    from edgekd.bench.report import model_memory_kb, peak_mib

    memory = {"vmhwm": 62_874, "baseline_vmhwm": 59_904}
    assert model_memory_kb(memory) == 2_970 and peak_mib(memory["vmhwm"], 2_970) == "61.4 (+2.9)"
    assert model_memory_kb({"vmhwm": 62_874}) is None and peak_mib(62_874, None) == "61.4"


def test_the_timer_cost_is_named_where_it_is_a_noticeable_part_of_the_p50(tmp_path):
    """The runner records its timer's cost per call; the report says how much of a fast model's p50 it is, and
    results written before it was recorded still load and report (without the note)."""
    from edgekd.bench.harness import BenchSettings, to_result
    from edgekd.bench.report import TIMER_SHARE_NOTE, _row
    from edgekd.bench.result import BenchResult
    from edgekd.devices.profiles import open_device
    from edgekd.export.artifact import Artifact

    artifact = Artifact(name="student-onnx-fp32", role="student", format="onnx", precision="fp32",
                        file="m.onnx", size_bytes=1, sha256="0" * 64, directory=tmp_path)
    device = open_device("host")
    raw = {"latencies_ns": [3400] * 500, "load_ms": 1.0, "first_inference_us": 9.0, "memory_kb": {},
           "runtime": {"name": "onnxruntime"}, "system": {"machine": platform.machine()},
           "timer": {"overhead_ns": 130, "runs": 2000, "resolution_ns": 1.0}}
    try:
        fast = to_result([raw, {**raw, "timer": {**raw["timer"], "overhead_ns": 150}}], artifact, device,
                         BenchSettings(rounds=2, min_runs=10))
        old_runner = to_result([{k: v for k, v in raw.items() if k != "timer"}], artifact, device,
                               BenchSettings(rounds=1, min_runs=10))
    finally:
        device.close()
    assert fast.latency_us["timer_overhead_us"] == pytest.approx(0.14)  # the median over the rounds
    assert old_runner.latency_us["timer_overhead_us"] is None

    back = BenchResult.load(fast.save(tmp_path / "bench-new.json"))
    row = _row(artifact, back)
    (note,) = [f for f in findings({"rows": [row]}) if "timer's own cost" in f]
    assert "3.40 µs includes ~0.14 µs (4%), ~3.26 µs without it" in note
    # several rows: one finding naming each, the largest share first (a table-long list of bullets otherwise)
    faster = {**row, "name": "faster", "p50_us": 1.4}
    (both,) = [f for f in findings({"rows": [row, faster]}) if "timer's own cost" in f]
    assert both.index("faster: 1.40 µs includes ~0.14 µs (10%)") < both.index(f"{row['name']}: 3.40 µs")

    slow = {**row, "p50_us": 0.14 / TIMER_SHARE_NOTE * 1.01}
    assert not [f for f in findings({"rows": [slow]}) if "timer's own cost" in f]

    old = fast.model_dump(mode="json", by_alias=True)
    del old["latency_us"]["timer_overhead_us"]  # a result saved before the timer was measured
    (tmp_path / "bench-old.json").write_text(json.dumps(old))
    old_row = _row(artifact, BenchResult.load(tmp_path / "bench-old.json"))
    assert old_row["timer_overhead_us"] is None and old_row["p50_us"] == pytest.approx(3.4)
    assert not [f for f in findings({"rows": [old_row]}) if "timer's own cost" in f]


def test_a_floor_timed_below_the_tools_resolution_is_marked_in_the_findings():
    """A native tool's floor timed as the mean of whole-µs readings (native.below_resolution) says so where the
    findings name it, as the rows' p50s do: a "× floor" against it divides by a mean, not a median."""
    rows = [{"name": "student-tflite-fp32", "role": "student", "format": "tflite", "precision": "fp32",
             "p50_us": 0.7, "parity_passed": True, "size_bytes": 1000, "ops": 1, "layout_ops": 0}]
    for limited in (True, False):
        (said,) = [f for f in findings({"rows": rows, "floors": {"tflite": {"p50_us": 0.49,
                                                                            "resolution_limited": limited}}})
                   if "per-call floor" in f]
        assert ("0.49 µs" + stats.BELOW_RESOLUTION_MARK + " for an Identity graph" in said) == limited, said
        assert "1.43× the runtime's per-call floor" in said
