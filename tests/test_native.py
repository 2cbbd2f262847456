"""edgekd.bench.native: a runtime's own benchmark binary where the device has no Python.

* The parsers run on REAL published output of LiteRT's benchmark_model and onnxruntime_perf_test, saved
  verbatim in tests/native_samples/ (first line: where each came from); the expected numbers are the ones
  printed in those files.
* The end-to-end test goes through the REAL adb client and server to the loopback adb device
  (tests/adb_device.py, fixtures reused from tests/test_adb_device.py). The "device binary" there is
  tests/fake_benchmark_model.py, a clearly named stand-in for benchmark_model (no real binary can be had
  here) that loads the .tflite with LiteRT, times real invocations and prints benchmark_model's log format.
"""

from __future__ import annotations

import math
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edgekd.bench import native, stats
from edgekd.bench.native import (
    BENCHMARK_MODEL,
    LATENCY_KEYS,
    PERF_TEST,
    native_argv,
    parse_benchmark_model,
    parse_perf_test,
    run_native,
)
from edgekd.errors import BenchError

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
# The loopback phone and a private adb server, exactly as the adb device tests use them (module-scoped here too).
from test_adb_device import WD, _adb_device, adb_server, phone  # noqa: E402,F401
from conftest import hold_device_lock, import_or_skip  # noqa: E402

SAMPLES = TESTS / "native_samples"
FAKE = TESTS / "fake_benchmark_model.py"
FAKE_PERF_TEST = TESTS / "fake_perf_test.py"
approx = pytest.approx


def sample(name: str) -> str:
    return (SAMPLES / name).read_text()


def latency(result: dict) -> dict:
    assert set(result["latency_us"]) == set(LATENCY_KEYS)
    return result["latency_us"]


# --------------------------------------------------------------------------- the samples themselves


def test_every_sample_names_its_public_source():
    files = sorted(SAMPLES.glob("*.txt"))
    assert len([f for f in files if f.name.startswith("benchmark_model")]) >= 3
    assert len([f for f in files if f.name.startswith("perf_test")]) >= 3
    for f in files:
        assert f.read_text().splitlines()[0].startswith("# source: https://github.com/"), f.name


# --------------------------------------------------------------------------- benchmark_model


def test_benchmark_model_tf24_android_cpu():
    """TF 2.4 on a Xiaomi Mi11: no percentiles yet, and the memory line was called "Peak memory footprint"."""
    r = parse_benchmark_model(sample("benchmark_model_tf2.4_android_cpu.txt"))
    assert (r["schema"], r["harness"], r["tool"]) == ("edgekd.native/1", "native", BENCHMARK_MODEL)
    assert r["runs"] == 50 and r["warmup_runs"] is None  # the author pasted only the timed statistics
    assert latency(r) == {"n": 50, "mean": 249684.0, "min": 247067.0, "max": 254474.0, "std": 1442.0,
                          "p5": None, "p50": None, "p90": None, "p95": None, "p99": None, "p999": None}
    assert r["init_ms"] == approx(16.242)
    assert r["first_inference_us"] == 360262.0
    assert r["warmup_avg_us"] == 304586.0
    assert r["memory_kb"] == {"init_footprint": approx(4.92969 * 1024), "overall_footprint": approx(138.809 * 1024)}


def test_benchmark_model_riscv_with_op_profiling():
    """No log prefix, C++ scientific notation, and op-profiling tables whose own "Timings (microseconds):
    count=50 …" line (min=2727203) must not be taken for the run's statistics (min=2727568)."""
    r = parse_benchmark_model(sample("benchmark_model_riscv_qemu_op_profiling.txt"))
    assert r["runs"] == 50 and r["warmup_runs"] == 1
    lat = latency(r)
    assert lat["min"] == 2727568.0 and lat["max"] == 3189954.0 and lat["std"] == 109798.0
    assert lat["mean"] == 2950340.0  # "2.95034e+06"
    assert lat["p50"] is None and lat["p5"] is None
    assert r["first_inference_us"] == 3512391.0
    assert r["warmup_avg_us"] == 3512390.0  # "3.51239e+06"
    assert r["init_ms"] == approx(17.187)
    assert r["memory_kb"] == {"init_footprint": approx(4.21094 * 1024), "overall_footprint": approx(46.0859 * 1024)}
    assert r["extra"] == {"model_size_mb": 16.9008, "initialized_session_ms": 17.187, "threads": 4}


def test_benchmark_model_tf220_xnnpack_percentiles():
    """A recent build (TI's LiteRT 2.20 docs): INFO: prefixes, indentation, p5/median/p95 on every stat line."""
    r = parse_benchmark_model(sample("benchmark_model_tf2.20_xnnpack_percentiles.txt"))
    assert r["runs"] == 50 and r["warmup_runs"] == 1
    assert latency(r) == {"n": 50, "mean": 899641.0, "min": 898007.0, "max": 906121.0, "std": 1549.0,
                          "p5": 898333.0, "p50": 899281.0, "p90": None, "p95": 904305.0, "p99": None, "p999": None}
    assert r["first_inference_us"] == 905463.0 and r["warmup_avg_us"] == 905463.0
    assert r["init_ms"] == approx(614.333)
    assert r["memory_kb"] == {"init_footprint": approx(146.363 * 1024), "overall_footprint": approx(150.141 * 1024)}
    assert r["extra"]["model_size_mb"] == 67.3128


def test_benchmark_model_failure_says_why():
    with pytest.raises(BenchError) as err:
        parse_benchmark_model(sample("benchmark_model_tf2.4_android_nnapi_failed.txt"))
    assert "did not report any timings" in err.value.what
    assert err.value.why.startswith("it failed: ")
    assert "Failed to apply NNAPI delegate." in err.value.why and "Node number 248" in err.value.why
    assert "--use_xnnpack=false" in err.value.fix


def test_benchmark_model_logcat_prefixes():
    """The TF 2.20 sample's lines as `adb logcat` (threadtime) would show them."""
    body = [ln.strip() for ln in sample("benchmark_model_tf2.20_xnnpack_percentiles.txt").splitlines()[2:]]
    logcat = "\n".join(f"07-08 15:34:26.{i:03d}  5395  5395 I tflite  : {ln.removeprefix('INFO: ')}"
                       for i, ln in enumerate(body))
    assert parse_benchmark_model(logcat)["latency_us"]["p50"] == 899281.0


def test_benchmark_model_takes_the_last_of_several_runs():
    text = sample("benchmark_model_tf2.20_xnnpack_percentiles.txt") + sample("benchmark_model_tf2.4_android_cpu.txt")
    r = parse_benchmark_model(text)
    assert r["latency_us"]["mean"] == 249684.0 and r["latency_us"]["p50"] is None
    assert r["memory_kb"]["overall_footprint"] == approx(138.809 * 1024)


def test_benchmark_model_all_same_stat_line():
    """LiteRT prints N equal values as "count=N curr=X(all same)"."""
    text = ("INFO: count=3 curr=7(all same) p5=7 median=7 p95=7\n"
            "INFO: count=5 curr=100(all same) p5=100 median=100 p95=100\n"
            "INFO: Inference timings in us: Init: 10, First inference: 7, Warmup (avg): 7, Inference (avg): 100\n")
    r = parse_benchmark_model(text)
    assert (r["runs"], r["warmup_runs"]) == (5, 3)
    lat = r["latency_us"]
    assert (lat["min"], lat["max"], lat["mean"], lat["std"], lat["p50"]) == (100.0, 100.0, 100.0, 0.0, 100.0)
    assert r["memory_kb"] == {}


@pytest.mark.parametrize("text, what", [
    ("", "printed nothing"),
    ("   \n\n", "printed nothing"),
    ("Segmentation fault\n", "did not report any timings"),
    ("STARTING!\nGraph: [/x.tflite]\ncount=1 curr=5\n", "did not report any timings"),
    ("Inference timings in us: Init: 1, First inference: 2, Warmup (avg): 2, Inference (avg): 3\n",
     "no 'count=…' statistics line"),
    ("count=0\nInference timings in us: Init: 1, First inference: 0, Warmup (avg): nan, Inference (avg): nan\n",
     "no timed runs"),
])
def test_benchmark_model_malformed(text, what):
    with pytest.raises(BenchError) as err:
        parse_benchmark_model(text)
    assert what in err.value.what and err.value.fix


def test_benchmark_model_cut_short():
    """An output that stops before the summary (a timeout, a lost phone) is an error, not partial numbers."""
    lines = sample("benchmark_model_tf2.20_xnnpack_percentiles.txt").splitlines()
    cut = "\n".join(ln for ln in lines if "Inference timings" not in ln and "Memory footprint" not in ln)
    with pytest.raises(BenchError) as err:
        parse_benchmark_model(cut)
    assert "no 'Inference timings in us' line" in err.value.why


def test_parsers_reject_each_others_output_and_non_text():
    with pytest.raises(BenchError):
        parse_benchmark_model(sample("perf_test_spacemit_k1_statistics.txt"))
    with pytest.raises(BenchError):
        parse_perf_test(sample("benchmark_model_tf2.20_xnnpack_percentiles.txt"))
    with pytest.raises(BenchError, match="of type bytes"):
        parse_benchmark_model(b"count=1")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- onnxruntime_perf_test


def test_perf_test_v13_with_result_file():
    """onnxruntime 1.3.1 + ACL on Android, writing a result file: no first-inference line, no percentiles."""
    r = parse_perf_test(sample("perf_test_v1.3_acl_android.txt"))
    assert (r["harness"], r["tool"], r["runs"]) == ("native", PERF_TEST, 10)
    assert latency(r) == {"n": 10, "mean": approx(144871.0), "min": None, "max": None, "std": None, "p5": None,
                          "p50": None, "p90": None, "p95": None, "p99": None, "p999": None}
    assert r["init_ms"] == approx(127.918)
    assert r["first_inference_us"] is None and r["warmup_avg_us"] is None and r["warmup_runs"] is None
    assert r["memory_kb"] == {"peak": 158171136 / 1024}
    assert r["extra"] == {"total_inference_time_s": 1.44871, "total_run_time_s": 1.44916, "cpu_usage_pct": 68.0}


def test_perf_test_statistics():
    """A recent build with -s -I: first inference, throughput and the Min..P999 latencies (in seconds)."""
    r = parse_perf_test(sample("perf_test_spacemit_k1_statistics.txt"))
    assert r["runs"] == 10
    assert latency(r) == {"n": 10, "mean": approx(82338.2), "min": approx(80812.9), "max": approx(83881.7),
                          "std": None, "p5": None, "p50": approx(82609.5), "p90": approx(83881.7),
                          "p95": approx(83881.7), "p99": approx(83881.7), "p999": approx(83881.7)}
    assert r["init_ms"] == approx(1144.76)
    assert r["first_inference_us"] == approx(248000.0)
    assert r["memory_kb"] == {"peak": 78946304 / 1024}
    assert r["extra"] == {"total_inference_time_s": 0.823382, "total_run_time_s": 0.823483,
                          "inferences_per_s": 12.1435, "cpu_usage_pct": 48.0, "threads": 4}


def test_perf_test_early_wording():
    r = parse_perf_test(sample("perf_test_early_format_latency_is.txt"))
    assert r["runs"] == 1000
    lat = latency(r)
    assert lat["mean"] == approx(58805.3)
    assert (lat["min"], lat["p50"], lat["p90"]) == (approx(55977.7), approx(58710.8), approx(59984.5))
    assert (lat["p95"], lat["p99"], lat["p999"], lat["max"]) == (approx(60567.6), approx(61951.7),
                                                                 approx(62347.2), approx(62347.2))
    assert r["init_ms"] is None and r["memory_kb"] == {}


@pytest.mark.parametrize("text", [
    "",
    "there is no test data for model model\n",
    "Session creation time cost: 0.06 s\n",  # killed before the summary
    "Total inference requests: 10\n",  # no average
])
def test_perf_test_malformed(text):
    with pytest.raises(BenchError) as err:
        parse_perf_test(text)
    assert err.value.fix
    if text.startswith("there is no test data"):
        assert "there is no test data" in err.value.why and "-I" in err.value.fix


# --------------------------------------------------------------------------- argv


def test_native_argv():
    assert native_argv(BENCHMARK_MODEL, "/data/local/tmp/edgekd/bin/benchmark_model", "/data/local/tmp/m.tflite",
                       threads=2, runs=100, warmup=5) == [
        "/data/local/tmp/edgekd/bin/benchmark_model", "--graph=/data/local/tmp/m.tflite", "--num_threads=2",
        "--num_runs=100", "--warmup_runs=5", "--use_xnnpack=true"]
    assert native_argv(PERF_TEST, "/data/local/tmp/edgekd/bin/onnxruntime_perf_test", "/data/local/tmp/m.onnx",
                       threads=4, runs=200, warmup=1) == [
        "/data/local/tmp/edgekd/bin/onnxruntime_perf_test", "-m", "times", "-r", "200", "-x", "4", "-e", "cpu",
        "-I", "-s", "/data/local/tmp/m.onnx"]


def test_native_argv_sizes_perf_tests_free_dimensions():
    """perf_test -I times every free dimension at 1 unless -f NAME:SIZE names it: a text model's [batch, length]
    was timed as one padding token."""
    argv = native_argv(PERF_TEST, "/d/bin/onnxruntime_perf_test", "/d/m.onnx", threads=1, runs=10, warmup=1,
                       free_dims={"batch": 2, "length": 128})
    assert argv == ["/d/bin/onnxruntime_perf_test", "-m", "times", "-r", "10", "-x", "1", "-e", "cpu", "-I",
                    "-f", "batch:2", "-f", "length:128", "-s", "/d/m.onnx"]
    with pytest.raises(BenchError, match="benchmark_model cannot size a named dimension") as err:
        native_argv(BENCHMARK_MODEL, "/d/bin/benchmark_model", "/d/m.tflite", 1, 10, 1, free_dims={"batch": 2})
    assert "fixed input shapes" in err.value.fix
    for name in ("", "a b", "a:b", "-s", 3):
        with pytest.raises(BenchError, match="invalid dimension name"):
            native_argv(PERF_TEST, "/d/bin/p", "/d/m.onnx", 1, 10, 1, free_dims={name: 1})
    for size in (0, True, 1.5):
        with pytest.raises(BenchError, match="the size of dimension 'batch' must be an integer"):
            native_argv(PERF_TEST, "/d/bin/p", "/d/m.onnx", 1, 10, 1, free_dims={"batch": size})


@pytest.mark.parametrize("kwargs, match", [
    ({"tool": "trtexec"}, "unknown native benchmark tool"),
    ({"threads": 0}, "threads must be an integer ≥ 1"),
    ({"runs": True}, "runs must be an integer ≥ 1"),
    ({"runs": 2.5}, "runs must be an integer ≥ 1"),
    ({"warmup": -1}, "warmup must be an integer ≥ 0"),
    ({"model": "--graph=x"}, "invalid model"),
    ({"device_binary": ""}, "invalid device_binary"),
])
def test_native_argv_rejects(kwargs, match):
    args = {"tool": BENCHMARK_MODEL, "device_binary": "/d/bin/benchmark_model", "model": "/d/m.tflite",
            "threads": 1, "runs": 10, "warmup": 1, **kwargs}
    with pytest.raises(BenchError, match=match) as err:
        native_argv(**args)
    if kwargs.get("tool"):
        assert "benchmark_model, onnxruntime_perf_test" in err.value.why


# --------------------------------------------------------------------------- the stand-in program


@pytest.fixture(scope="module")
def tflite_model(tmp_path_factory) -> Path:
    """A small MLP exported to .tflite with edgekd's own exporter (real litert-torch conversion)."""
    for module in ("litert_torch", "ai_edge_litert"):
        import_or_skip(module, "the [tflite] extra is not installed")  # skips locally, fails on CI
    from edgekd.export.tflite import export_tflite
    from edgekd.models import create_model

    model = create_model("mlp", in_shape=(64,), num_classes=10, width=256).eval()
    return export_tflite(model, (64,), tmp_path_factory.mktemp("native-model") / "mlp.tflite")


def _as_native_binary(tmp_path_factory, stand_in: Path, name: str) -> Path:
    """A stand-in as a "native binary": a copy whose #! line names this test's Python, mode 755."""
    path = tmp_path_factory.mktemp("native-bin") / name
    body = stand_in.read_text().split("\n", 1)[1]  # drop its generic #!/usr/bin/env python3
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def fake_binary(tmp_path_factory) -> Path:
    return _as_native_binary(tmp_path_factory, FAKE, "benchmark_model")


@pytest.fixture(scope="module")
def fake_perf_test(tmp_path_factory) -> Path:
    return _as_native_binary(tmp_path_factory, FAKE_PERF_TEST, "onnxruntime_perf_test")


def test_fake_perf_test_on_this_host_times_the_sized_dimensions(fake_perf_test, tmp_path):
    """The stand-in sizes -f dimensions through onnxruntime's own option and times the rest at 1, like the tool;
    its output parses; without -I it fails the way the tool does."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Shape", ["ids"], ["shape"])], "g",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "length"])],
                              [helper.make_tensor_value_info("shape", TensorProto.INT64, [2])])
    model = tmp_path / "shape.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    base = [str(fake_perf_test), "-m", "times", "-r", "20", "-x", "1", "-e", "cpu", "-I"]
    proc = subprocess.run([*base, "-f", "length:32", "-s", str(model)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Overriding dimension with name, length, to 32" in proc.stdout
    r = parse_perf_test(proc.stdout)
    assert r["runs"] == 20 and r["extra"]["threads"] == 1 and r["memory_kb"]["peak"] > 0
    lat = latency(r)
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["max"]
    sys.path.insert(0, str(TESTS))
    import fake_perf_test as fake

    assert fake.parse(["-I", "-f", "batch:2", "-f", "length:32", "m.onnx"])[1] == [("batch", 2), ("length", 32)]
    timed = fake.generated_inputs(fake.open_session(str(model), 1, [("length", 32)]))["ids"]
    assert timed.shape == (1, 32) and timed.dtype == "int64" and not timed.any()
    no_inputs = subprocess.run([*base[:-1], str(model)], capture_output=True, text=True, timeout=60, check=False)
    assert no_inputs.returncode != 0
    with pytest.raises(BenchError, match="did not report its timings") as err:
        parse_perf_test(no_inputs.stdout + no_inputs.stderr)
    assert "there is no test data" in err.value.why


def test_fake_stat_lines_parse_back_exactly():
    """The stand-in's LiteRT-style statistics and the parser agree on known values."""
    sys.path.insert(0, str(TESTS))
    import fake_benchmark_model as fake
    from array import array

    values = array("q", [120, 100, 101, 99, 250, 100, 98, 102, 100, 103])
    line = fake.stat_line(values)
    assert line == "count=10 first=120 curr=103 min=98 max=250 avg=117.3 std=44 p5=98 median=101 p95=250"
    text = f"INFO: {line}\nINFO: Inference timings in us: Init: 5, First inference: 9, Warmup (avg): 9, " \
           f"Inference (avg): {fake.fmt(sum(values) / len(values))}\n"
    lat = parse_benchmark_model(text)["latency_us"]
    assert (lat["n"], lat["min"], lat["max"], lat["mean"], lat["std"], lat["p5"], lat["p50"], lat["p95"]) == (
        10, 98.0, 250.0, 117.3, 44.0, 98.0, 101.0, 250.0)
    assert fake.stat_line(array("q", [7, 7, 7])) == "count=3 curr=7(all same) p5=7 median=7 p95=7"


def test_fake_benchmark_model_on_this_host(tflite_model, fake_binary):
    proc = subprocess.run([str(fake_binary), f"--graph={tflite_model}", "--num_threads=1", "--num_runs=40",
                           "--warmup_runs=3", "--min_secs=0.05", "--warmup_min_secs=0.01", "--use_xnnpack=true"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # benchmark_model logs to stderr
    r = parse_benchmark_model(proc.stderr)
    assert r["runs"] >= 40 and r["warmup_runs"] >= 3
    lat = r["latency_us"]
    assert 0 <= lat["min"] <= lat["p5"] <= lat["p50"] <= lat["p95"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"] and lat["std"] >= 0
    assert r["init_ms"] > 0 and r["first_inference_us"] > 0 and r["warmup_avg_us"] > 0
    assert set(r["memory_kb"]) == {"init_footprint", "overall_footprint"}
    assert r["extra"]["model_size_mb"] == approx(tflite_model.stat().st_size / 1e6, rel=1e-5)


def test_fake_benchmark_model_failure_is_benchmark_models(fake_binary, tmp_path):
    proc = subprocess.run([str(fake_binary), f"--graph={tmp_path / 'missing.tflite'}"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert proc.stderr.rstrip().endswith("Benchmarking failed.")
    with pytest.raises(BenchError, match="did not report any timings") as err:
        parse_benchmark_model(proc.stderr)
    assert "Could not open" in err.value.why


# --------------------------------------------------------------------------- through the real adb client


@pytest.fixture()
def dev(adb_server, phone):  # noqa: F811 - the fixtures imported above
    return _adb_device(adb_server, phone.address)


def _syncs(phone) -> int:  # noqa: F811
    return phone.opened_services.count("sync:")


def test_run_native_through_adb(dev, phone, tflite_model, fake_binary):  # noqa: F811
    remote_model = f"{WD}/artifacts/mlp.tflite"
    dev.push(tflite_model, remote_model)
    r = run_native(dev, fake_binary, remote_model, BENCHMARK_MODEL, threads=1, runs=30, warmup=3, timeout=120)

    remote_bin = f"{WD}/bin/benchmark_model"
    assert r["argv"] == [remote_bin, f"--graph={remote_model}", "--num_threads=1", "--num_runs=30",
                         "--warmup_runs=3", "--use_xnnpack=true"]
    on_device = phone.host_path(remote_bin)
    assert on_device.read_bytes() == fake_binary.read_bytes()
    assert on_device.stat().st_mode & stat.S_IXUSR
    assert r["binary"]["remote"] == remote_bin and len(r["binary"]["sha256"]) == 64
    assert (r["harness"], r["tool"], r["device"], r["returncode"]) == ("native", BENCHMARK_MODEL, "loopback", 0)
    assert r["runs"] >= 30 and r["warmup_runs"] >= 3
    lat = r["latency_us"]
    assert lat["n"] == r["runs"] and all(lat[k] is not None for k in ("mean", "min", "max", "std", "p5", "p50", "p95"))
    assert 0 <= lat["min"] <= lat["p50"] <= lat["max"] and lat["min"] <= lat["mean"] <= lat["max"]
    assert lat["p90"] is None and lat["p99"] is None  # benchmark_model does not print them: never made up
    assert r["init_ms"] > 0 and r["first_inference_us"] > 0 and not math.isnan(r["warmup_avg_us"])
    assert r["memory_kb"]["overall_footprint"] >= r["memory_kb"]["init_footprint"] >= 0
    # it ran holding the device's bench lock, the runner's (this session's: the phone's shell has conftest's path)
    assert r["device_lock"] == {"path": os.environ["EDGEKD_DEVICE_LOCK"], "state": "held", "waited_s": 0.0,
                                "waited_for": None}

    # Second run: the device already has the binary (same sha256), so nothing is pushed; pinned with taskset
    # to the first CPU this process may use (CPU 0 may be outside it, e.g. in a container limited by cpuset).
    before = _syncs(phone)
    cpu = sorted(os.sched_getaffinity(0))[0]
    dev.profile.cpus = [cpu]
    again = run_native(dev, fake_binary, remote_model, BENCHMARK_MODEL, threads=1, runs=10, warmup=1, timeout=120)
    assert _syncs(phone) == before
    assert again["argv"][:2] == ["taskset", f"{1 << cpu:x}"] and again["argv"][2] == remote_bin
    assert again["runs"] >= 10


def test_run_native_on_a_device_another_bench_holds_waits_then_says_who(dev, phone, tflite_model,  # noqa: F811
                                                                      fake_binary):
    """A runner of another bench (another machine, user or profile) holds the device's lock: the tool must not time
    under its load, so it waits (here 0.2 s) and then fails as the runner's device_busy does (exit 2)."""
    remote_model = f"{WD}/artifacts/mlp.tflite"
    dev.push(tflite_model, remote_model)
    lock = os.environ["EDGEKD_DEVICE_LOCK"]
    fd = hold_device_lock(Path(lock))
    try:
        with pytest.raises(BenchError) as err:
            run_native(dev, fake_binary, remote_model, BENCHMARK_MODEL, threads=1, runs=5, warmup=1, timeout=120,
                       lock_wait=0.2)
    finally:
        os.close(fd)
    assert err.value.exit_code == 2
    assert err.value.what == f"device 'loopback' is busy with another bench (pid {os.getpid()}, user alice, from " \
                             "192.0.2.7)"
    assert lock in err.value.why and "each other's load" in err.value.why and "EDGEKD_DEVICE_WAIT" in err.value.fix


def test_run_native_failure_through_adb(dev, phone, fake_binary):  # noqa: F811
    with pytest.raises(BenchError) as err:
        run_native(dev, fake_binary, f"{WD}/artifacts/missing.tflite", BENCHMARK_MODEL, threads=1, runs=5,
                   warmup=1, timeout=120)
    assert "benchmark_model failed on loopback (exit code 1)" in err.value.what
    assert "Could not open" in err.value.why
    assert f"{WD}/bin/benchmark_model" in err.value.fix


def test_run_native_checks_before_pushing(dev, phone, fake_binary, tmp_path):  # noqa: F811
    before = _syncs(phone)
    with pytest.raises(BenchError, match="binary not found"):
        run_native(dev, tmp_path / "no-such-binary", f"{WD}/m.tflite", BENCHMARK_MODEL, 1, 5, 1)
    with pytest.raises(BenchError, match="threads must be"):
        run_native(dev, fake_binary, f"{WD}/m.tflite", BENCHMARK_MODEL, 0, 5, 1)
    with pytest.raises(BenchError, match="unknown native benchmark tool"):
        run_native(dev, fake_binary, f"{WD}/m.tflite", "tflite_benchmark", 1, 5, 1)
    assert _syncs(phone) == before


def test_cpu_mask():
    assert native.cpu_mask([0]) == "1"
    assert native.cpu_mask([4, 5, 6, 7]) == "f0"
    with pytest.raises(BenchError):
        native.cpu_mask([-1])


def test_taskset_is_available_for_the_pinned_run():
    assert shutil.which("taskset"), "taskset (util-linux) is needed by test_run_native_through_adb"
    cpu = sorted(os.sched_getaffinity(0))[0]  # the CPU that test pins to
    pinned = subprocess.run(["taskset", f"{1 << cpu:x}", "true"], capture_output=True, text=True, timeout=60)
    assert pinned.returncode == 0, pinned.stderr


# --------------------------------------------------------------------------- toward a BenchResult


def test_bench_result_fields_make_a_valid_result(tmp_path):
    """What the harness would store for a native run: a BenchResult that saves and loads, nothing made up."""
    from edgekd.bench.result import BenchResult

    parsed = parse_benchmark_model(sample("benchmark_model_tf2.20_xnnpack_percentiles.txt"))
    fields = native.bench_result_fields(parsed)
    result = BenchResult(artifact={"name": "ssd", "sha256": "0" * 64}, device={"name": "am62x", "kind": "ssh"},
                         settings={"threads": 4, "runs": 50, "warmup": 1}, **fields)
    back = BenchResult.load(result.save(tmp_path / "bench-ssd@am62x.json"))
    assert back.harness == "native" and back.latencies_ns == []
    assert back.latency_us["p50"] == 899281.0 and back.latency_us["n"] == 50
    assert back.latency_us["cv"] == approx(1549 / 899641)
    assert back.latency_us["p90"] is None and back.latency_us["ci95_p50"] is None
    assert back.latency_us["unstable"] is None
    assert back.round_p50_us == [899281.0] and back.load_ms == approx(614.333)
    assert back.runtime["name"] == "litert" and back.runtime["tool"] == BENCHMARK_MODEL
    assert back.memory_kb["overall_footprint"] == approx(150.141 * 1024)

    old = native.bench_result_fields(parse_perf_test(sample("perf_test_v1.3_acl_android.txt")))
    assert old["latency_us"]["p50"] is None and old["round_p50_us"] == [] and old["latency_us"]["cv"] is None
    assert old["runtime"]["name"] == "onnxruntime" and old["memory_kb"] == {"peak": 158171136 / 1024}


def _perf_test_round(requests: int, p50_s: float, p99_s: float, avg_ms: float) -> dict:
    """One onnxruntime_perf_test round: the SpacemiT sample with its call count and figures changed."""
    text = sample("perf_test_spacemit_k1_statistics.txt")
    for old, new in (("Total inference requests: 10", f"Total inference requests: {requests}"),
                     ("Runs:10", f"Runs:{requests}"), ("Average inference time cost: 82.3382 ms",
                                                        f"Average inference time cost: {avg_ms} ms"),
                     ("P50 Latency: 0.0826095 s", f"P50 Latency: {p50_s} s"),
                     ("P99 Latency: 0.0838817 s", f"P99 Latency: {p99_s} s")):
        assert old in text
        text = text.replace(old, new)
    return parse_perf_test(text)


def _native_bench(rounds: list[dict], tmp_path):
    """The BenchResult the harness makes of these native rounds (its own to_result, on the host device)."""
    from edgekd.bench.harness import BenchSettings, to_result
    from edgekd.devices.profiles import open_device
    from edgekd.export.artifact import Artifact

    artifact = Artifact(name="yolo", role="model", format="onnx", precision="int8_static", file="yolo.onnx",
                        size_bytes=1, sha256="0" * 64, directory=tmp_path)
    device = open_device("host")
    try:
        return to_result([{"native": r, "inputs": []} for r in rounds], artifact, device,
                         BenchSettings(rounds=len(rounds)))
    finally:
        device.close()


def test_native_rounds_are_combined_like_the_runners(tmp_path):
    """Every round counts: total calls, the p50 over the rounds with their interval, the exact mean of all
    calls; a p99 only when every round had the calls to estimate one (the first round's used to stand)."""
    few = _perf_test_round(10, 0.080, 0.200, 81.0)  # 10 calls: its "p99" is its largest value, no estimate
    many = _perf_test_round(400, 0.084, 0.090, 85.0)
    result = _native_bench([few, many], tmp_path)
    lat = result.latency_us
    assert lat["n"] == 410 and result.runtime["runs"] == 410 and result.runtime["runs_per_round"] == [10, 400]
    assert result.round_p50_us == [approx(80_000.0), approx(84_000.0)]
    assert lat["p50"] == approx(82_000.0)  # the median of the rounds' p50s, not the first round's
    assert lat["ci95_p50_rounds"] == approx(stats.rounds_interval([80_000.0, 84_000.0]))
    assert stats.shown_p50_interval(lat) == lat["ci95_p50_rounds"]
    assert lat["mean"] == approx((10 * 81_000.0 + 400 * 85_000.0) / 410)
    assert lat["p99"] is None and stats.shown_p99(lat) is None
    assert lat["min"] == approx(80_812.9) and lat["max"] == approx(83_881.7)
    assert lat["unstable"] is False and lat["drift"] == approx(84 / 80)  # rounds within stats.MAX_DRIFT

    slower = _native_bench([many, _perf_test_round(400, 0.120, 0.130, 121.0)], tmp_path).latency_us
    assert slower["unstable"] is True and "round p50s differ by 1.43x" in slower["unstable_reasons"][0]

    both = _native_bench([_perf_test_round(400, 0.080, 0.100, 81.0), many,
                          _perf_test_round(500, 0.082, 0.095, 83.0)], tmp_path).latency_us
    assert both["n"] == 1300 and both["p99"] == approx(95_000.0) and stats.shown_p99(both) == both["p99"]
    assert both["p999"] is None  # p99.9 needs stats.MIN_P999_SAMPLES calls in every round

    back = type(result).load(result.save(tmp_path / "bench-yolo.json"))
    assert back.latency_us == result.latency_us


def test_native_std_of_all_rounds_is_the_pooled_population_std():
    """Two benchmark_model rounds of known values: the combined std is that of all their calls together."""
    sys.path.insert(0, str(TESTS))
    import fake_benchmark_model as fake
    from array import array

    parts = [array("q", [100, 102, 98, 101, 99]), array("q", [200, 210, 190])]
    rounds = []
    for values in parts:
        text = f"INFO: {fake.stat_line(values)}\nINFO: Inference timings in us: Init: 5, First inference: 9, " \
               f"Warmup (avg): 9, Inference (avg): {fake.fmt(sum(values) / len(values))}\n"
        rounds.append(parse_benchmark_model(text))
    lat = native.bench_result_fields(rounds)["latency_us"]
    every = [v for values in parts for v in values]
    mean = sum(every) / len(every)
    # each round's std is printed truncated to an integer (LiteRT's Stat), so agreement is within that
    assert lat["n"] == 8 and lat["mean"] == approx(mean)
    assert lat["std"] == approx(math.sqrt(sum((v - mean) ** 2 for v in every) / len(every)), abs=1.0)
    assert (lat["min"], lat["max"]) == (98.0, 210.0)
