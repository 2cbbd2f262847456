"""The run report built from hand-made run directories (real Artifact records and BenchResults, no training):
results of a native benchmark tool, runs where only some stages produced something, and the plots' side
effects on the process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgekd.bench import native, stats
from edgekd.bench.report import build_summary, plots, write_html
from edgekd.bench.result import BenchResult
from edgekd.errors import BenchError
from edgekd.export.artifact import Artifact, Parity
from edgekd.rundir import RunDir

SAMPLES = Path(__file__).parent / "native_samples"


def _parity(accuracy: float, passed: bool = True) -> Parity:
    return Parity(reference="pytorch", samples=10, agreement=1.0, max_abs_error=0.0, mean_abs_error=0.0,
                  accuracy=accuracy, reference_accuracy=accuracy, per_class_accuracy=[accuracy, accuracy],
                  threshold=0.97, passed=passed, reason=None if passed else "agreement 90% < 97%")


def _runner_fields(center_us: float, rounds: tuple[float, ...] = (1.0, 1.01, 0.99), calls: int = 300) -> dict:
    """BenchResult fields as the runner path fills them: per-call times, one p50 per round."""
    ns = [int(center_us * 1000 * f) + i % 7 for f in rounds for i in range(calls)]
    summary = stats.summarize(ns)
    summary["ci95_p50_rounds"] = stats.rounds_interval([center_us * f for f in rounds])
    return {"latency_us": summary, "round_p50_us": [center_us * f for f in rounds], "latencies_ns": ns}


def _native_fields() -> dict:
    """BenchResult fields of one round of LiteRT's benchmark_model (its real output): summaries, no per-call times."""
    return native.bench_result_fields(native.parse_benchmark_model(
        (SAMPLES / "benchmark_model_tf2.20_xnnpack_percentiles.txt").read_text()))


def make_run(root: Path, specs: list[tuple[str, dict[str, Any] | None, Parity | None]]) -> RunDir:
    """A run directory whose export and bench stages recorded these artifacts (name role-format-precision) and,
    where given, their results on the host."""
    run = RunDir(root)
    run.create()
    records, results = [], []
    for name, fields, parity in specs:
        role, fmt, precision = name.split("-", 2)
        folder = run.artifacts / name
        folder.mkdir()
        (folder / "model.bin").write_bytes(b"\0" * 4096)
        artifact = Artifact(name=name, role=role, format=fmt, precision=precision, file="model.bin",
                            size_bytes=4096, sha256=name.encode().hex().ljust(64, "0")[:64], parameters=1000,
                            parity=parity, directory=folder)
        records.append(artifact.save())
        if fields is not None:
            result = BenchResult(artifact={"name": name, "sha256": artifact.sha256, "format": fmt,
                                           "precision": precision, "role": role},
                                 device={"name": "host"}, settings={"threads": 1, "batch_size": 1}, **fields)
            results.append(result.save(run.results / f"bench-{name}.json"))
    run.mark_done("export", "e", records, 0.0)
    run.mark_done("bench", "b", results, 0.0)
    return run


def test_a_run_benchmarked_by_a_native_tool_has_a_report(tmp_path):
    """A device without Python is timed by the runtime's own binary: one round gives a p50 without an interval
    and no per-call times. The page shows the p50 alone and draws no distribution it does not have; it used to
    fail on both (a log axis of no data, an interval of None)."""
    run = make_run(tmp_path / "run", [("teacher-tflite-fp32", _native_fields(), _parity(0.9)),
                                      ("student-tflite-fp32", _native_fields(), _parity(0.8))])
    summary = build_summary(run, recipe={"name": "native"}, model_metrics={}, class_names=["a", "b"])
    assert [r["ci95_p50"] for r in summary["rows"]] == [None, None]
    page = write_html(summary, run).read_text()
    assert "<td>899281.00</td>" in page  # the tool's p50, no interval after it
    assert "Latency distributions" not in page and "accuracy vs p50" in page


def test_runner_and_native_results_together_draw_the_runner_distributions(tmp_path):
    run = make_run(tmp_path / "run", [("teacher-tflite-fp32", _native_fields(), _parity(0.9)),
                                      ("student-tflite-fp32", _runner_fields(20.0), _parity(0.8))])
    summary = build_summary(run, recipe={"name": "mixed"}, model_metrics={}, class_names=["a", "b"])
    page = write_html(summary, run).read_text()
    assert "Latency distributions" in page


def test_the_plots_leave_the_process_backend_and_pyplot_alone():
    """A notebook (or any program) that calls edgekd keeps its own matplotlib backend and figures: the report
    used to switch the process to Agg and put its figures in pyplot's registry."""
    import matplotlib
    import matplotlib.pyplot as plt

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # stands in for a user's backend (a notebook's inline one)
    try:
        rows = [{"name": "student-onnx-fp32", "role": "student", "format": "onnx", "precision": "fp32",
                 "accuracy": 0.9, "p50_us": 10.0, "size_bytes": 4096}]
        images = plots({"rows": rows, "floors": {"onnx": {"p50_us": 3.0}}}, {"student-onnx-fp32": [10_000] * 50})
        assert set(images) == {"pareto", "latency"}
        assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in images.values())
        assert matplotlib.get_backend() == "svg" and plt.get_fignums() == []
    finally:
        matplotlib.use(before)


def _timed_in_rounds(name: str, rounds: list[tuple[float, int]], tmp_path: Path) -> dict[str, Any]:
    """BenchResult fields pooled by the harness (to_result) from runner rounds of (p50 µs, calls): a fixed time
    per round times more calls when the machine is fast."""
    from edgekd.bench.harness import BenchSettings, to_result
    from edgekd.devices.profiles import open_device

    artifact = Artifact(name=name, role="x", format="onnx", precision="fp32", file="m.onnx", size_bytes=1,
                        sha256="0" * 64, directory=tmp_path)
    raws = [{"latencies_ns": [int(us * 1000) + i % 3 for i in range(calls)], "load_ms": 1.0,
             "first_inference_us": 1.0, "memory_kb": {}, "runtime": {"name": "onnxruntime"}} for us, calls in rounds]
    device = open_device("host")
    try:
        result = to_result(raws, artifact, device, BenchSettings(rounds=len(rounds), min_runs=10))
    finally:
        device.close()
    return {"latency_us": result.latency_us, "round_p50_us": result.round_p50_us, "latencies_ns": result.latencies_ns}


def test_the_p50_shown_is_the_centre_of_its_interval_and_gives_the_speed_up(tmp_path):
    """The host switches between a fast and a ~1.3× slower state; a round in the fast state times more calls. The
    median of all calls then sits on the fast rounds (100 µs), outside the rounds' interval shown beside it
    ([103, 125]), and teacher p50 / student p50 was not the speed-up shown. The p50 shown is the rounds' centre."""
    from rich.console import Console

    from edgekd.console import bench_table

    switching = lambda us: [(us, 2000), (us * 1.3, 1500)] * 5  # noqa: E731
    teacher, student = _timed_in_rounds("t", switching(100.0), tmp_path), _timed_in_rounds("s", switching(20.0), tmp_path)
    floor = _timed_in_rounds("f", switching(4.0), tmp_path)
    assert teacher["latency_us"]["p50"] == pytest.approx(100.0, abs=0.01)  # what the calls' median says
    run = make_run(tmp_path / "run", [("teacher-onnx-fp32", teacher, _parity(0.9)),
                                      ("student-onnx-fp32", student, _parity(0.8)), ("floor-onnx-fp32", floor, None)])
    summary = build_summary(run, recipe={"name": "rounds"}, model_metrics={}, class_names=["a", "b"])
    rows = {r["name"]: r for r in summary["rows"]}
    for row in rows.values():
        low, high = row["ci95_p50"]
        assert low < row["p50_us"] < high, row["name"]
    t, s = rows["teacher-onnx-fp32"], rows["student-onnx-fp32"]
    assert s["speedup_vs_teacher"] == pytest.approx(t["p50_us"] / s["p50_us"])
    assert s["x_floor"] == pytest.approx(s["p50_us"] / summary["floors"]["onnx"]["p50_us"])
    page = write_html(summary, run).read_text()
    assert f"<td>{t['p50_us']:.2f} [" in page
    console = Console(width=300, record=True)
    console.print(bench_table([BenchResult.load(p) for p in run.recorded_outputs("bench", "bench-teacher*.json")]))
    assert f"{t['p50_us']:.2f} [" in console.export_text()


def test_the_runtimes_are_named_without_a_floor(tmp_path):
    """bench.floor: false times no Identity graph; the page named the runtimes from the floors only, so it said
    "runtimes" and nothing after it."""
    timed = {**_runner_fields(20.0), "runtime": {"name": "onnxruntime", "version": "1.2.3"}}
    run = make_run(tmp_path / "run", [("student-onnx-fp32", timed, _parity(0.8))])
    summary = build_summary(run, recipe={"name": "nofloor"}, model_metrics={}, class_names=["a", "b"])
    assert summary["runtimes"] == {"onnx": {"name": "onnxruntime", "version": "1.2.3"}}
    page = write_html(summary, run).read_text()
    assert "runtimes onnxruntime 1.2.3" in page
    assert "Latency: ;" not in page and "(no floor was timed)" in page  # it said "Latency: ; ..."


def test_a_native_tool_that_prints_no_percentiles_still_gets_a_report(tmp_path):
    """LiteRT's benchmark_model before percentiles (TF 2.4, common on phones) prints an average but no p50: no
    row and no floor has a p50. The page used to fail formatting the floor's p50 of None."""
    old = native.bench_result_fields(native.parse_benchmark_model(
        (SAMPLES / "benchmark_model_tf2.4_android_cpu.txt").read_text()))
    assert old["latency_us"]["p50"] is None
    run = make_run(tmp_path / "run", [("teacher-tflite-fp32", old, _parity(0.9)),
                                      ("student-tflite-fp32", old, _parity(0.8)), ("floor-tflite-fp32", old, None)])
    summary = build_summary(run, recipe={"name": "tf24"}, model_metrics={}, class_names=["a", "b"])
    assert summary["floors"] == {} and all(r["p50_us"] is None for r in summary["rows"])
    assert "Teacher vs student" in write_html(summary, run).read_text()


def test_a_native_tools_peak_memory_is_in_the_report(tmp_path):
    """onnxruntime_perf_test prints its peak working set: `edgekd bench` showed it, the run's report "–"."""
    perf = native.bench_result_fields(native.parse_perf_test((SAMPLES / "perf_test_v1.3_acl_android.txt").read_text()))
    run = make_run(tmp_path / "run", [("student-onnx-fp32", perf, _parity(0.8))])
    summary = build_summary(run, recipe={"name": "perf"}, model_metrics={}, class_names=["a", "b"])
    (row,) = summary["rows"]
    assert row["vmhwm_kb"] == perf["memory_kb"]["peak"] == 154464.0
    assert f"<td>{154464.0 / 1024:.1f}</td>" in write_html(summary, run).read_text()


def test_the_pareto_labels_of_close_artifacts_do_not_cover_each_other():
    """One student in two formats and four precisions: eight points close together. Labels at one fixed offset
    (alternately above and below) covered each other in both panels; each now takes a free place nearby."""
    from edgekd.bench.report import pareto_figure

    rows = [{"name": f"student-{fmt}-{precision}", "role": "student", "format": fmt, "precision": precision,
             "accuracy": 0.93 - 0.001 * i - 0.0005 * j, "p50_us": 40.0 * (1 + 0.02 * i) * (1.05 if j else 1),
             "size_bytes": 40_000 // (1 + i)}
            for j, fmt in enumerate(("onnx", "tflite"))
            for i, precision in enumerate(("fp32", "int8_static", "int8_dynamic", "int4"))]
    rows.append({"name": "teacher-onnx-fp32", "role": "teacher", "format": "onnx", "precision": "fp32",
                 "accuracy": 0.96, "p50_us": 300.0, "size_bytes": 400_000})
    _assert_labels_apart_and_inside(pareto_figure({"rows": rows, "floors": {"onnx": {"p50_us": 3.0}}}), len(rows))


def _assert_labels_apart_and_inside(fig, n: int) -> None:
    """Each panel's n point labels (their text; a leader line may cross another) cover no other label and stay
    inside the axes."""
    import itertools

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    for ax in fig.axes:
        boxes = [Text.get_window_extent(text, renderer) for text in ax.texts]
        assert len(boxes) == n
        assert not [pair for pair in itertools.combinations(boxes, 2) if pair[0].overlaps(pair[1])], ax.get_title()
        inside = ax.get_window_extent(renderer)
        assert all(inside.x0 <= b.x0 and b.x1 <= inside.x1 and inside.y0 <= b.y0 and b.y1 <= inside.y1
                   for b in boxes), ax.get_title()


@pytest.mark.parametrize("fastest_us, slowest_us", [(1.2, 90.0), (15.0, 43_000.0), (0.8, 100_000.0),
                                                     (0.5, 2_000_000.0), (3.0, 4.0)])
def test_the_log_axis_tick_labels_never_run_into_each_other(fastest_us, slowest_us):
    """The MiniLM news run's plot (a student at 15 µs, the teacher at 43 ms) labelled 11 ticks of 1, 2 and 5 per
    decade: '500 10002000 5000 1000020000 50000'. Fewer ticks are labelled as the span grows; a few stay."""
    import itertools

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from edgekd.bench.report import latency_figure, pareto_figure

    rows = [{"name": f"m{i}-onnx-fp32", "role": role, "format": "onnx", "precision": "fp32", "accuracy": acc,
             "p50_us": p50, "size_bytes": size}
            for i, (role, acc, p50, size) in enumerate((("student", 0.84, fastest_us, 2_000_000),
                                                         ("teacher", 0.86, slowest_us, 90_000_000)))]
    calls = {"fast": [int(fastest_us * 1000)] * 20, "slow": [int(slowest_us * 1000)] * 20}
    for fig in (pareto_figure({"rows": rows, "floors": {}}), latency_figure(calls)):
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        renderer = canvas.get_renderer()
        ax = fig.axes[0]
        shown = [t for t in ax.get_xticklabels() if t.get_text() and t.get_visible()
                 and ax.get_xlim()[0] <= t.get_position()[0] <= ax.get_xlim()[1]]
        boxes = [t.get_window_extent(renderer) for t in shown]
        assert len(shown) >= 2, [t.get_text() for t in ax.get_xticklabels()]
        assert not [(a, b) for a, b in itertools.combinations(boxes, 2) if a.padded(2).overlaps(b)], \
            [t.get_text() for t in shown]


def test_the_pareto_labels_of_the_demo_stay_inside_the_axes_apart():
    """The demo's four LiteRT students sit within 1.27-1.37 µs at one accuracy, beside the axis: every place for a
    label with a leader line was measured with the line, which reaches back over the neighbours' markers, so none
    was free and 'student tflite int8_dynamic' went left of the axes, over the tick labels and the axis title."""
    from edgekd.bench.report import pareto_figure

    demo = [("teacher-onnx-fp32", 83.62, 99.26, 641501), ("teacher-tflite-fp32", 81.21, 99.26, 646900),
            ("student-onnx-fp32", 6.84, 96.67, 19869), ("student-onnx-int8_static", 9.43, 96.67, 8559),
            ("student-onnx-int8_dynamic", 7.52, 96.67, 7578), ("student-onnx-int4", 10.12, 96.30, 4255),
            ("student-tflite-fp32", 1.37, 96.67, 21204), ("student-tflite-int8_static", 1.36, 96.67, 8960),
            ("student-tflite-int8_dynamic", 1.27, 96.67, 7952), ("student-tflite-int4", 1.29, 96.67, 5584),
            ("scratch-onnx-fp32", 6.64, 92.96, 19869), ("scratch-tflite-fp32", 1.54, 92.96, 21204)]
    rows = [{"name": name, **dict(zip(("role", "format", "precision"), name.split("-", 2))), "p50_us": p50,
             "accuracy": acc / 100, "size_bytes": size} for name, p50, acc, size in demo]
    summary = {"rows": rows, "floors": {"onnx": {"p50_us": 4.31}, "tflite": {"p50_us": 0.87}}}
    _assert_labels_apart_and_inside(pareto_figure(summary), len(rows))


def test_the_teacher_has_no_speed_up_against_itself(tmp_path):
    """The page showed the teacher's row as "1.00× [1.00, 1.00] (within noise)": itself against itself."""
    run = make_run(tmp_path / "run", [("teacher-onnx-fp32", _runner_fields(100.0), _parity(0.9)),
                                      ("student-onnx-fp32", _runner_fields(20.0), _parity(0.8))])
    summary = build_summary(run, recipe={"name": "self"}, model_metrics={}, class_names=["a", "b"])
    teacher, student = summary["rows"]
    assert "speedup_vs_teacher" not in teacher and student["speedup_vs_teacher"] == pytest.approx(5.0)
    assert "1.00× [1.00, 1.00]" not in write_html(summary, run).read_text()


def test_a_round_whose_median_is_zero_is_refused_where_the_result_is_made(tmp_path):
    """A clock too coarse for one call gives a zero round p50; the report's speed-ups (logs of the rounds) then
    stopped with an internal error. The result is refused when it is made, saying why."""
    fields = _runner_fields(2.0)
    fields["round_p50_us"] = [0.0, 2.0, 2.0]
    with pytest.raises(BenchError, match="median latency is 0 µs") as caught:
        make_run(tmp_path / "run", [("teacher-onnx-fp32", _runner_fields(10.0), _parity(0.9)),
                                    ("student-onnx-fp32", fields, _parity(0.9))])
    assert "clock" in caught.value.why


def test_the_page_names_the_interval_the_speed_up_was_computed_with(tmp_path):
    """The speed-up's interval is a paired t interval over the rounds (stats.compare_rounds); the note under the
    table called it a bootstrap interval of the ratio of medians, an interval over calls that the project measured
    17-90x too narrow, so a reader would trust "significant" more than it deserves."""
    import numpy as np

    teacher, student = _runner_fields(100.0, rounds=(1.0, 1.2, 0.9)), _runner_fields(20.0, rounds=(1.0, 1.1, 1.0))
    run = make_run(tmp_path / "run", [("teacher-onnx-fp32", teacher, _parity(0.9)),
                                      ("student-onnx-fp32", student, _parity(0.8))])
    summary = build_summary(run, recipe={"name": "method"}, model_metrics={}, class_names=["a", "b"])
    student = summary["rows"][1]
    d = np.log([100.0, 120.0, 90.0]) - np.log([20.0, 22.0, 20.0])
    half = stats.t975(2) * d.std(ddof=1) / np.sqrt(3)
    assert student["speedup_ci95"] == pytest.approx([np.exp(d.mean() - half), np.exp(d.mean() + half)])
    page = " ".join(write_html(summary, run).read_text().split())
    assert "paired t interval over the rounds" in page
    assert "bootstrap 95% intervals of the ratio of medians" not in page


def test_the_fastest_student_names_the_ones_it_is_not_faster_than_beyond_the_noise(tmp_path):
    """Of p50s within the noise of the rounds the lowest is chance: the demo called student-tflite-int8_dynamic
    (1.27 µs) the fastest though FP32, static INT8 and INT4 (1.29-1.37 µs) overlapped it round by round. The finding
    now names those; one clearly slower (2x in every round) is not named."""
    swings = (1.0, 1.4, 0.8)  # the machine's state, shared by the artifacts of one round
    run = make_run(tmp_path / "run", [
        ("student-onnx-fp32", _runner_fields(10.0, rounds=(1.0, 1.3, 0.9)), _parity(0.8)),
        ("student-onnx-int8_static", _runner_fields(10.3, rounds=(0.95, 1.45, 0.8)), _parity(0.8)),
        ("student-onnx-int4", _runner_fields(20.0, rounds=swings), _parity(0.8)),
        ("floor-onnx-fp32", _runner_fields(3.0, rounds=swings), None)])
    summary = build_summary(run, recipe={"name": "ties"}, model_metrics={}, class_names=["a", "b"])
    fastest = next(f for f in summary["findings"] if "fastest student artifact" in f)
    assert fastest.startswith("onnxruntime: fastest student artifact student-onnx-fp32 at p50 ")
    assert "not faster than student-onnx-int8_static (" in fastest
    assert "student-onnx-int4" not in fastest


def test_int4_is_called_slower_than_fp32_only_beyond_the_noise_of_the_rounds(tmp_path):
    """"X is slower than FP32" was said of any higher p50, however much the rounds overlapped; within their noise
    the finding says it is not faster (no slowdown shown), and a slowdown in every round is still called one."""
    def findings_for(int4_rounds):
        run = make_run(tmp_path / str(int4_rounds), [
            ("student-onnx-fp32", _runner_fields(10.0, rounds=(1.0, 1.3, 0.9)), _parity(0.8)),
            ("student-onnx-int4", _runner_fields(10.4, rounds=int4_rounds), _parity(0.8)),
            ("floor-onnx-fp32", _runner_fields(3.0), None)])
        summary = build_summary(run, recipe={"name": "int4"}, model_metrics={}, class_names=["a", "b"])
        return [f for f in summary["findings"] if f.startswith("onnxruntime: student-onnx-int4")]

    (overlapping,) = findings_for((0.9, 1.45, 0.85))
    assert "is not faster than FP32" in overlapping and "within the noise of the rounds" in overlapping
    assert "slower" not in overlapping
    # 1.5-1.6x FP32 in every round (an exact multiple in every round would be rounds without spread: no verdict)
    (slower,) = findings_for((1.5, 1.95, 1.4))
    assert "is slower than FP32" in slower


def test_the_latency_plot_says_its_medians_are_of_the_pooled_calls_not_the_tables_p50(tmp_path):
    """The boxes pool every call of every round; their median sits on the fast rounds (the demo: 4.8 µs for
    student-onnx-fp32, whose table p50 is 6.84 µs, the rounds' centre). Unlabelled, a reader compares the two and
    finds the report contradicting itself."""
    from edgekd.bench.report import latency_figure

    fig = latency_figure({"student-onnx-fp32": [5_000] * 50, "native-without-calls": []})
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["student-onnx-fp32"]
    assert "all rounds pooled" in ax.get_xlabel() and "not the table's p50" in ax.get_xlabel()
    assert latency_figure({"native-without-calls": []}) is None


def test_the_memory_the_model_adds_is_peak_less_the_baseline_of_the_same_round(tmp_path):
    """The peak was the highest round's, its baseline the first round's: two processes' numbers subtracted, so the
    "+ over the runtime alone" carried how much more the peak round's interpreter took before the model loaded."""
    from edgekd.bench.harness import BenchSettings, to_result
    from edgekd.bench.report import model_memory_kb, peak_kb
    from edgekd.devices.profiles import open_device

    artifact = Artifact(name="m", role="student", format="onnx", precision="fp32", file="m.onnx", size_bytes=1,
                        sha256="0" * 64, directory=tmp_path)
    memory = [{"baseline_vmhwm": 50_000, "vmhwm": 60_000}, {"baseline_vmhwm": 53_000, "vmhwm": 62_000}]
    raws = [{"latencies_ns": [1000 + i % 3 for i in range(50)], "load_ms": 1.0, "first_inference_us": 1.0,
             "memory_kb": m, "runtime": {"name": "onnxruntime"}} for m in memory]
    device = open_device("host")
    try:
        result = to_result(raws, artifact, device, BenchSettings(rounds=2, min_runs=10))
    finally:
        device.close()
    assert peak_kb(result.memory_kb) == 62_000 and model_memory_kb(result.memory_kb) == 9_000


def test_the_call_overhead_is_said_to_set_the_latency_only_when_the_floor_is_most_of_it(tmp_path):
    """'at this size the runtime's call overhead, not the model, sets the latency' was said of any fastest student,
    also of one at 20x the floor (the floor 5% of its time): a reader would stop optimising a model that is what
    costs the time."""
    def fastest(student_us):
        run = make_run(tmp_path / str(student_us), [("student-onnx-fp32", _runner_fields(student_us), _parity(0.8)),
                                                    ("floor-onnx-fp32", _runner_fields(3.0), None)])
        summary = build_summary(run, recipe={"name": "floor"}, model_metrics={}, class_names=["a", "b"])
        return next(f for f in summary["findings"] if "fastest student artifact" in f)

    assert fastest(4.5).endswith("at this size the runtime's call overhead, not the model, sets the latency.")
    heavy = fastest(60.0)
    assert "20.00× the runtime's per-call floor" in heavy and "call overhead, not the model" not in heavy
    assert heavy.endswith("the model, not the runtime's call overhead (~5% of it), sets the latency.")


def test_the_kd_gain_is_tested_against_the_noise_of_the_test_set_sample_by_sample():
    """The finding gave "+3.7 points" with nothing on whether 270 test samples can tell: the demo's KD student is
    right on 13 samples the scratch one misses and wrong on 3 it gets (exact McNemar p = 0.021); the same gain
    from 5 against 3 would be noise."""
    from edgekd.bench.report import findings

    def kd_finding(only_kd, only_scratch):
        both, neither = 100, 10
        student = "1" * both + "1" * only_kd + "0" * only_scratch + "0" * neither
        scratch = "1" * both + "0" * only_kd + "1" * only_scratch + "0" * neither
        models = {m: {"test_accuracy": c.count("1") / len(c), "test_correct": c} for m, c in
                  (("student", student), ("scratch", scratch))}
        return next(f for f in findings({"rows": [], "models": models}) if f.startswith("Distillation"))

    found = kd_finding(13, 3)
    assert "of the 126 test samples 13 are right only with KD and 3 only from scratch" in found
    assert "exact McNemar p = 0.021, beyond the noise of the test set" in found
    assert "p = 0.727, within the noise of the test set" in kd_finding(5, 3)
    assert "exact McNemar p < 0.001, beyond" in kd_finding(40, 2)
    old = findings({"rows": [], "models": {"student": {"test_accuracy": 0.9}, "scratch": {"test_accuracy": 0.8}}})
    assert "+10.0 points; not tested against the noise of the test set (no per-sample results recorded))" in old[0]


def test_results_of_two_devices_are_refused_not_merged_into_one_row(tmp_path):
    """The results were keyed by artifact sha256 alone: one artifact benched on the host and on a board gave one
    row with whichever result came last, and its speed-up divided one device's time by the other's."""
    run = make_run(tmp_path / "run", [("teacher-onnx-fp32", _runner_fields(40.0), _parity(0.9)),
                                      ("student-onnx-fp32", _runner_fields(10.0), _parity(0.8))])
    host = run.recorded_outputs("bench", "bench-*.json")
    board = BenchResult.load(host[1]).model_copy(update={"device": {"name": "pi"}})
    run.mark_done("bench", "b", [*host, board.save(run.results / "bench-student-onnx-fp32@pi.json")], 0.0)
    with pytest.raises(BenchError, match=r"from 2 devices \(host, pi\)") as err:
        build_summary(run, recipe={"name": "two"}, model_metrics={}, class_names=["a", "b"])
    assert "bench the run on one device" in err.value.fix


def test_the_unstable_finding_says_what_was_measured_not_high_spread(tmp_path):
    """'Unstable timings (high spread; rerun on a quieter machine)' was said also of a run max_seconds cut short,
    whose spread may be fine and which a quieter machine would not fix: the finding gives each row's reasons."""
    cut = _runner_fields(10.0)
    cut["latency_us"].update(unstable=True, unstable_reasons=[
        "90 timed calls of the 300 asked for: max_seconds (0.1 s over 3 rounds) came first; raise max_seconds "
        "(a recipe's bench.max_seconds) or lower min_runs"])
    run = make_run(tmp_path / "run", [("teacher-onnx-fp32", _runner_fields(40.0), _parity(0.9)),
                                      ("student-onnx-fp32", cut, _parity(0.8))])
    summary = build_summary(run, recipe={"name": "cut"}, model_metrics={}, class_names=["a", "b"])
    finding = next(f for f in summary["findings"] if f.startswith("Unstable timings"))
    assert "high spread" not in finding and "teacher" not in finding
    assert finding == ("Unstable timings: student-onnx-fp32 (90 timed calls of the 300 asked for: max_seconds (0.1 s "
                       "over 3 rounds) came first; raise max_seconds (a recipe's bench.max_seconds) or lower "
                       "min_runs).")


def test_a_run_max_seconds_cut_short_is_told_how_to_get_its_calls():
    from edgekd.bench.harness import BenchSettings, _latency

    lat = _latency([10_000 + i % 7 for i in range(90)], [10.0, 10.0, 10.0],
                   BenchSettings(rounds=3, min_runs=300, max_seconds=0.1))
    assert lat["unstable"] and lat["unstable_reasons"][-1].startswith("90 timed calls of the 300 asked for")
    assert lat["unstable_reasons"][-1].endswith("raise max_seconds (a recipe's bench.max_seconds) or lower min_runs")


def test_a_row_where_no_class_changed_says_so_instead_of_naming_class_0_the_worst(tmp_path):
    """Every class at +0.0 made the first class the 'worst': '0: +0.0 pt' read as class 0 being hurt."""
    from rich.console import Console

    from edgekd.console import summary_table

    better = _parity(0.9)
    better.per_class_accuracy = [0.9, 1.0]
    run = make_run(tmp_path / "run", [("teacher-onnx-fp32", _runner_fields(40.0), _parity(0.9)),
                                      ("student-onnx-fp32", _runner_fields(10.0), _parity(0.8)),
                                      ("student-onnx-int8_static", _runner_fields(9.0), _parity(0.8)),
                                      ("scratch-onnx-fp32", _runner_fields(10.0), better)])
    summary = build_summary(run, recipe={"name": "classes"}, model_metrics={}, class_names=["a", "b"])
    worst = {r["name"]: r.get("worst_class") for r in summary["rows"]}
    assert worst["student-onnx-fp32"] == {"class": "a", "delta_points": pytest.approx(-10.0)}
    assert worst["student-onnx-int8_static"] == {"class": None, "delta_points": 0.0, "changed": False}
    assert worst["scratch-onnx-fp32"] == {"class": None, "delta_points": 0.0, "changed": True}
    console = Console(width=400, record=True)
    console.print(summary_table(summary))
    lines = {line.split()[1]: line for line in console.export_text().splitlines() if "onnx" in line}
    assert "a: -10.0 pt" in lines["student-onnx-fp32"]
    assert "no class changed" in lines["student-onnx-int8_static"] and "+0.0 pt" not in console.export_text()
    assert "no class worse" in lines["scratch-onnx-fp32"]
    page = write_html(summary, run).read_text()
    assert "<td>no class changed vs student-onnx-fp32</td>" in page and "class a: -10.0 pt vs teacher-onnx-fp32" in page


def test_no_class_delta_is_measured_against_an_fp32_that_failed_parity(tmp_path):
    """"worst class Δ vs student-onnx-fp32" compared an INT8 file with an FP32 one that failed its parity check, a
    model nobody ships (the speed notes already leave such an FP32 out)."""
    run = make_run(tmp_path / "run", [("teacher-onnx-fp32", _runner_fields(40.0), _parity(0.9)),
                                      ("student-onnx-fp32", _runner_fields(10.0), _parity(0.9, passed=False)),
                                      ("student-onnx-int8_static", _runner_fields(9.0), _parity(0.8))])
    rows = {r["name"]: r for r in build_summary(run, recipe={"name": "classes"}, model_metrics={},
                                                class_names=["a", "b"])["rows"]}
    assert rows["student-onnx-int8_static"].get("worst_class") is None
    assert rows["student-onnx-int8_static"].get("class_delta_reference") is None
    assert rows["student-onnx-fp32"]["class_delta_reference"] == "teacher-onnx-fp32"  # its own still is


def test_int8_notes_blame_the_call_overhead_from_the_formats_measured_floor(tmp_path):
    """The INT8 note called any model under a fixed 50 µs overhead-bound: here a 40 µs student beside a 3.5 µs
    onnxruntime floor (9% of its time). The report gives the floor of the row's format to the note."""
    def reasons(student_us, with_floor=True):
        specs = [("student-onnx-fp32", _runner_fields(student_us), _parity(0.8)),
                 ("student-onnx-int8_dynamic", _runner_fields(student_us * 1.2), _parity(0.8))]
        run = make_run(tmp_path / f"{student_us}{with_floor}",
                       specs + ([("floor-onnx-fp32", _runner_fields(3.5), None)] if with_floor else []))
        summary = build_summary(run, recipe={"name": "int8"}, model_metrics={}, class_names=["a", "b"])
        return next(r for r in summary["rows"] if r["name"] == "student-onnx-int8_dynamic")["int8_speed"]["reasons"]

    assert not any("per-call" in r for r in reasons(40.0))
    assert any(r.startswith("the runtime's per-call floor (3.5 µs, measured) is 70% of this 5.0 µs model's time")
               for r in reasons(5.0))
    assert any("(no floor was measured" in r for r in reasons(40.0, with_floor=False))


def test_one_round_is_never_called_within_the_noise(tmp_path):
    """With one round there is no noise between rounds to compare a gap with: the findings said "within the noise
    of the rounds" of an INT4 artifact at 2.2x FP32 (intervals far apart), and explained an INT8 gap the rounds
    of another run showed to be noise."""
    run = make_run(tmp_path / "one", [
        ("student-onnx-fp32", _runner_fields(4.9, rounds=(1.0,)), _parity(0.8)),
        ("student-onnx-int8_static", _runner_fields(6.0, rounds=(1.0,)), _parity(0.8)),
        ("student-onnx-int4", _runner_fields(10.8, rounds=(1.0,)), _parity(0.8)),
        ("floor-onnx-fp32", _runner_fields(3.0, rounds=(1.0,)), None)])
    text = build_summary(run, recipe={"name": "one"}, model_metrics={}, class_names=["a", "b"])["findings"]
    assert not any("within the noise" in f for f in text), text
    (int4,) = [f for f in text if f.startswith("onnxruntime: student-onnx-int4")]
    assert "is slower than FP32" in int4 and "one round: not tested against the noise between rounds" in int4
    (int8,) = [f for f in text if "INT8 is not faster" in f]
    assert "one round: not tested against the noise between rounds" in int8


def test_an_int8_gap_within_the_noise_of_the_rounds_is_not_explained(tmp_path):
    """An INT8 p50 above FP32's within the rounds' noise got the causes of a slowdown (call overhead, the CPU's
    INT8 instructions) where INT4 in the same place was said to be within noise."""
    run = make_run(tmp_path / "noise", [
        ("student-onnx-fp32", _runner_fields(10.0, rounds=(1.0, 1.3, 0.9)), _parity(0.8)),
        ("student-onnx-int8_static", _runner_fields(10.4, rounds=(0.9, 1.45, 0.85)), _parity(0.8)),
        ("floor-onnx-fp32", _runner_fields(3.0), None)])
    summary = build_summary(run, recipe={"name": "noise"}, model_metrics={}, class_names=["a", "b"])
    (int8,) = [f for f in summary["findings"] if "INT8 is not faster" in f]
    assert "within the noise of the rounds, so there is no slowdown to explain" in int8
    assert "floor" not in int8 and "VNNI" not in int8


def test_a_pareto_front_of_one_point_is_drawn():
    """One artifact both fastest and most accurate is the whole front; a step through one point draws nothing,
    so the legend named a front the plot did not show."""
    from edgekd.bench.report import pareto_figure

    rows = [{"name": "student-onnx-fp32", "role": "student", "format": "onnx", "precision": "fp32", "accuracy": 0.9,
             "p50_us": 5.0, "size_bytes": 20_000},
            {"name": "teacher-onnx-fp32", "role": "teacher", "format": "onnx", "precision": "fp32", "accuracy": 0.8,
             "p50_us": 50.0, "size_bytes": 400_000}]
    for ax in pareto_figure({"rows": rows, "floors": {}}).axes:
        (front,) = [line for line in ax.get_lines() if line.get_label() == "Pareto front"]
        assert list(front.get_xdata()) == [5.0 if "p50" in ax.get_xlabel() else 20_000 / 1024]
        assert front.get_marker() == "o"  # a single point shows as a ring
