"""`edgekd bench` through the real adb client to the loopback adb device: the runner path (Python on the
device, as with Termux) and the native path (no Python: a benchmark binary pushed once and parsed)."""

from __future__ import annotations

import html
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

import edgekd
from edgekd.bench import stats
from edgekd.bench.harness import BenchSettings
from edgekd.export.formats import FORMATS, ExportOptions
from conftest import NoteKeeper, StepReporter, hold_device_lock, skip_or_fail_on_ci, waiting_on
from test_adb_device import WD, _attached, _sandbox, adb_server, phone  # noqa: F401  (fixtures)
from test_native import fake_binary, fake_perf_test, tflite_model  # noqa: F401  (fixtures: stand-ins, an MLP)

FAST = BenchSettings(warmup_runs=5, min_runs=30, min_seconds=0.02, rounds=2)


def _profile(folder: Path, server, device, **fields) -> Path:
    path = folder / "phone.yaml"
    path.write_text(yaml.safe_dump({"name": "phone", "kind": "adb", "serial": device.address,
                                    "server_port": server.port, "workdir": WD, **fields}))
    return path


def _models(folder: Path) -> list[Path]:
    paths = []
    for fmt in ("onnx", "tflite"):
        backend = FORMATS[fmt]()
        path = folder / f"identity{backend.suffix}"
        backend.write_floor(path, (16,), ExportOptions())
        paths.append(path)
    return paths


def test_runner_path_over_adb(adb_server, phone, tmp_path):  # noqa: F811
    profile = _profile(tmp_path, adb_server, phone, python=sys.executable)
    results = edgekd.bench(_models(tmp_path), device=str(profile), settings=FAST)
    assert [r.harness for r in results] == ["runner", "runner"]
    assert all(r.device["kind"] == "adb" and r.latency_us["n"] >= 30 for r in results)
    assert [r.inputs[0]["shape"] for r in results] == [[1, 16], [1, 16]]  # as timed: compare pairs on it
    assert all(r.latency_us["timer_overhead_us"] > 0 for r in results)  # measured on the device, recorded


def test_native_path_over_adb(adb_server, phone, fake_binary, tflite_model, tmp_path):  # noqa: F811
    profile = _profile(tmp_path, adb_server, phone, python=None, native={"tflite": str(fake_binary)})
    (result,) = edgekd.bench([tflite_model], device=str(profile), settings=FAST,
                             results_dir=tmp_path / "results", history=tmp_path / "h.sqlite")
    assert result.harness == "native" and result.runtime["tool"] == "benchmark_model"
    assert result.latency_us["timer_overhead_us"] is None  # the tool's own clock: its cost is not known
    assert result.latency_us["p50"] > 0 and len(result.round_p50_us) == 2
    runs = result.runtime["runs_per_round"]  # both rounds count, not the first alone
    assert len(runs) == 2 and min(runs) >= 15 and result.latency_us["n"] == result.runtime["runs"] == sum(runs)
    assert result.latency_us["ci95_p50_rounds"] is not None
    assert (tmp_path / "results" / "bench-mlp@phone.json").is_file()
    # each round ran holding the phone's bench lock, the runner's (this session's: see tests/adb_device.py)
    assert result.device_lock == [{"path": os.environ["EDGEKD_DEVICE_LOCK"], "state": "held", "waited_s": 0.0,
                                   "waited_for": None}] * 2


def test_thermal_status_is_read_before_each_round_and_after_the_run(adb_server, phone, tmp_path):  # noqa: F811
    from adb_device import DEFAULT_THERMAL

    hot = DEFAULT_THERMAL.replace("Thermal Status: 1", "Thermal Status: 3")
    phone.set_thermal(hot)
    try:
        profile = _profile(tmp_path, adb_server, phone, python=sys.executable,
                          thermal={"max_status": 1, "wait_seconds": 1, "poll_seconds": 0.2})
        (result,) = edgekd.bench(_models(tmp_path)[:1], device=str(profile), settings=FAST)
    finally:
        phone.set_thermal(DEFAULT_THERMAL)
    rounds = [t for t in result.thermal if "at_start" in t]
    # too hot: waited its wait_seconds (1), then went on still hot (bounded), and says so
    assert len(rounds) == 2 and rounds[0]["before_wait"]["status"] == rounds[0]["at_start"]["status"] == 3
    assert rounds[0]["waited_seconds"] >= 0.9 and rounds[0]["limits"]["max_status"] == 1
    assert result.thermal[-1]["after_run"]["status"] == 3


def test_a_bench_over_adb_says_at_once_that_it_waits_for_the_phone(adb_server, phone, tmp_path):  # noqa: F811
    from dataclasses import replace

    from test_bench_devices import _bench_while_the_device_is_held

    lock = tmp_path / "phone.lock"  # the phone's lock file (the stand-in gives its shells none of our environment)
    profile = _profile(tmp_path, adb_server, phone, python=["env", f"EDGEKD_DEVICE_LOCK={lock}", sys.executable])
    told, [result] = _bench_while_the_device_is_held(lock, lambda reporter: edgekd.bench(
        _models(tmp_path)[:1], device=str(profile), settings=replace(FAST, rounds=1), reporter=reporter))
    [waiting] = [n for n in told if "busy" in n]
    assert waiting.startswith(f"phone: the device is busy with another bench (pid {os.getpid()}, user alice, "
                              "from 192.0.2.7); waiting up to "), told
    assert [r["state"] for r in result.device_lock] == ["held"] and result.device_lock[0]["waited_s"] > 0


def test_a_bench_on_an_old_phone_that_waits_for_it_says_so_and_measures(adb_server, tmp_path_factory,  # noqa: F811
                                                                         tmp_path):
    """A v1 shell (Android < 7) merges the runner's stderr into its stdout: the notice that it waits is shown
    from there, and the runner's JSON, its last line, is still read (the whole stdout failed to parse, and the
    bench said the runner had crashed, 'exit code 0')."""
    from dataclasses import replace

    from adb_device import LoopbackAdbDevice
    from test_adb_device import _attached, _sandbox
    from test_bench_devices import _bench_while_the_device_is_held

    old = LoopbackAdbDevice(_sandbox(tmp_path_factory, "old-bench-phone"), shell_v2=False)
    lock = tmp_path / "phone.lock"
    with _attached(adb_server, old):
        profile = _profile(tmp_path, adb_server, old, python=["env", f"EDGEKD_DEVICE_LOCK={lock}", sys.executable])
        told, [result] = _bench_while_the_device_is_held(lock, lambda reporter: edgekd.bench(
            _models(tmp_path)[:1], device=str(profile), settings=replace(FAST, rounds=1), reporter=reporter))
    assert [n for n in told if "busy" in n][0].startswith("phone: the device is busy with another bench"), told
    assert [r["state"] for r in result.device_lock] == ["held"] and result.latency_us["n"] >= 30


def test_a_phone_lost_midway_keeps_what_was_measured(adb_server, tmp_path_factory, tmp_path):  # noqa: F811
    import pytest

    from adb_device import LoopbackAdbDevice
    from edgekd.bench.result import BenchResult
    from edgekd.devices.base import DeviceUnreachable
    from test_adb_device import _attached, _sandbox

    flaky = LoopbackAdbDevice(_sandbox(tmp_path_factory, "flaky-bench-phone"))
    one_round = BenchSettings(warmup_runs=5, min_runs=30, min_seconds=0.02, rounds=1)
    with _attached(adb_server, flaky):
        profile = _profile(tmp_path, adb_server, flaky, python=sys.executable)
        with pytest.raises(DeviceUnreachable) as err:
            edgekd.bench(_models(tmp_path), device=str(profile), settings=one_round,
                         results_dir=tmp_path / "results", reporter=StepReporter(flaky.stop))
    assert "adb" in err.value.fix and "--resume" in err.value.fix
    kept = BenchResult.load(tmp_path / "results" / "bench-identity-onnx@phone.json")
    assert kept.complete and kept.artifact["format"] == "onnx"


def test_out_of_space_and_missing_runtime_on_the_phone_are_clear(adb_server, phone, tmp_path):  # noqa: F811
    import pytest

    from edgekd.devices.base import DeviceOutOfSpace
    from edgekd.errors import EdgeKDError

    phone.space_left = 1_000  # less than the runner itself
    try:
        with pytest.raises(DeviceOutOfSpace) as err:
            edgekd.bench(_models(tmp_path)[:1], device=str(_profile(tmp_path, adb_server, phone,
                                                                    python=sys.executable,
                                                                    workdir=WD + "/full")), settings=FAST)
    finally:
        phone.space_left = None
    assert "space" in err.value.what.lower() and err.value.fix
    bare = [sys.executable, "-I", "-S"]  # this Python without site-packages (nor PYTHONPATH): no numpy
    with pytest.raises(EdgeKDError) as err:
        edgekd.bench(_models(tmp_path)[:1], device=str(_profile(tmp_path, adb_server, phone, python=bare)),
                     settings=FAST)
    assert "pip install" in (err.value.fix or "") and "numpy" in (err.value.what + (err.value.fix or ""))


def test_a_phone_whose_workdir_is_the_shared_tmp_is_refused(adb_server, phone, fake_binary,  # noqa: F811
                                                             tflite_model, tmp_path):  # noqa: F811
    # `workdir: /data/local/tmp` benched: its runner, artifacts/, inputs/ and specs/ went straight into the phone's
    # shared folder, which `edgekd devices --clean` then refused to clean (and the out-of-space fix sent there).
    from edgekd.devices.base import DeviceError

    shared = phone.sandbox / "data" / "local" / "tmp"  # the phone's /data/local/tmp
    before = sorted(p.name for p in shared.iterdir())
    runner_path = _profile(tmp_path, adb_server, phone, python=sys.executable, workdir="/data/local/tmp")
    tool_path = tmp_path / "native.yaml"
    tool_path.write_text(yaml.safe_dump({**yaml.safe_load(runner_path.read_text()), "python": None,
                                         "native": {"tflite": str(fake_binary)}}))
    for profile, model in ((runner_path, _models(tmp_path)[0]), (tool_path, tflite_model)):
        with pytest.raises(DeviceError) as err:
            edgekd.bench([model], device=str(profile), settings=FAST)
        assert err.value.what == "will not use the work directory '/data/local/tmp' of device 'phone'"
        assert "devices --clean" in err.value.why and "/data/local/tmp/edgekd" in err.value.fix
        assert sorted(p.name for p in shared.iterdir()) == before
    info = subprocess.run([sys.executable, "-m", "edgekd.cli", "devices", "--info", str(runner_path)],
                          capture_output=True, text=True, timeout=120)
    assert info.returncode == 2 and "will not use the work directory" in info.stderr, info.stderr
    assert "Traceback" not in info.stderr and sorted(p.name for p in shared.iterdir()) == before


def test_cpu_pinning_on_a_phone_with_androids_taskset(adb_server, tmp_path_factory, tmp_path):  # noqa: F811
    # Android's taskset is toybox's: a hex mask, no -c. The runner path pinned with `taskset -c LIST`, so a phone
    # with Termux's Python and `cpus:` (as in edgekd/devices/examples/phone.yaml) failed every run: "the runner
    # crashed on phone: taskset: Unknown option 'c'". The native path already used the mask.
    from adb_device import LoopbackAdbDevice

    toybox = shutil.which("toybox")
    if toybox is None:
        skip_or_fail_on_ci("toybox (Android's taskset) is not installed: apt-get install toybox")
    cpu = sorted(os.sched_getaffinity(0))[-1]
    with _attached(adb_server, LoopbackAdbDevice(_sandbox(tmp_path_factory, "toybox-phone"), toybox=toybox)) as dev:
        profile = _profile(tmp_path, adb_server, dev, python=sys.executable, cpus=[cpu])
        (result,) = edgekd.bench(_models(tmp_path)[:1], device=str(profile), settings=FAST)
    assert result.device["affinity"] == [cpu] and result.device["pinning_applied"] is True


def test_a_phone_without_taskset_says_so_when_cpus_are_set(adb_server, tmp_path_factory, tmp_path):  # noqa: F811
    # The shell's "taskset: not found" (exit 127) was taken for the device's Python (runner path: "install Python
    # 3") or for the benchmark binary (native path: "build benchmark_model for the device's ABI").
    from adb_device import LoopbackAdbDevice

    from edgekd.errors import BenchError

    phone = LoopbackAdbDevice(_sandbox(tmp_path_factory, "no-taskset-phone"), without=("taskset",))
    with _attached(adb_server, phone) as dev:
        profile = _profile(tmp_path, adb_server, dev, python=sys.executable, cpus=[0])
        with pytest.raises(BenchError) as err:
            edgekd.bench(_models(tmp_path)[:1], device=str(profile), settings=FAST)
    assert "has no taskset" in err.value.what and "taskset" in err.value.why
    assert "remove `cpus:`" in err.value.fix and "Python" not in err.value.fix


def test_native_tools_without_a_python_field_are_used(adb_server, tmp_path_factory, fake_binary,  # noqa: F811
                                                       tflite_model, tmp_path):  # noqa: F811
    # `native:` without `python:` was ignored: the default python3 was tried, and a phone without Python failed
    # with "cannot be started: python3 … install Python 3", which never said how to use the tools it names.
    from adb_device import LoopbackAdbDevice

    from edgekd.devices.base import RuntimeMissing

    stock = LoopbackAdbDevice(_sandbox(tmp_path_factory, "stock-phone"), without=("python3",))
    with _attached(adb_server, stock) as dev:
        profile = _profile(tmp_path, adb_server, dev, native={"tflite": str(fake_binary)})
        assert "python" not in yaml.safe_load(profile.read_text())
        (result,) = edgekd.bench([tflite_model], device=str(profile), settings=replace(FAST, rounds=1))
        assert result.harness == "native" and result.latency_us["p50"] > 0
        # `python:` set by hand to one the phone lacks: the fix says how to use its tools instead
        profile = _profile(tmp_path, adb_server, dev, python="python3", native={"tflite": str(fake_binary)})
        with pytest.raises(RuntimeMissing, match="cannot be started: python3") as err:
            edgekd.bench([tflite_model], device=str(profile), settings=replace(FAST, rounds=1))
        info = subprocess.run([sys.executable, "-m", "edgekd.cli", "devices", "--info", str(profile)],
                              capture_output=True, text=True, timeout=120)
    assert "`python: null` to use the benchmark tools under `native:`" in err.value.fix
    assert info.returncode == 2 and "`python: null` to use the benchmark tools" in " ".join(info.stderr.split())


def test_native_onnx_path_over_adb_is_told_the_batch(adb_server, phone, fake_perf_test, fake_binary,  # noqa: F811
                                                      tflite_model, tmp_path):  # noqa: F811
    """onnxruntime_perf_test times a free dimension at 1 unless told (-f NAME:SIZE): a dynamic batch of 2 was
    timed as 1 and recorded as 2. Given inputs (a run's bench stage always gives them) set the shape, the tool
    makes the data. A TFLite model with its fixed batch of 1 cannot be timed at 2: refused before anything
    runs, as the runner refuses it."""
    from dataclasses import replace

    from edgekd.errors import BenchError

    profile = _profile(tmp_path, adb_server, phone, python=None,
                       native={"onnx": str(fake_perf_test), "tflite": str(fake_binary)})
    onnx_model = _models(tmp_path)[0]
    (result,) = edgekd.bench([onnx_model], device=str(profile), settings=replace(FAST, batch_size=2))
    assert (result.harness, result.runtime["tool"]) == ("native", "onnxruntime_perf_test")
    argv = result.runtime["argv"]
    assert argv[argv.index("-I") + 1:argv.index("-s")] == ["-f", "batch:2"]
    assert [i["shape"] for i in result.inputs] == [[2, 16]]  # as timed: `edgekd compare` pairs on it
    assert result.latency_us["n"] == result.runtime["runs"] >= 30 and result.memory_kb["peak"] > 0

    inputs = tmp_path / "x.npy"
    np.save(inputs, np.ones((3, 16), dtype=np.float32))
    notes = NoteKeeper()
    (given,) = edgekd.bench([onnx_model], device=str(profile), settings=FAST, inputs=inputs, reporter=notes)
    argv = given.runtime["argv"]
    assert argv[argv.index("-I") + 1:argv.index("-s")] == ["-f", "batch:3"] and given.inputs[0]["shape"] == [3, 16]
    assert any("makes its own input data, at the shape of the inputs given ('x' [3, 16])" in n for n in notes.notes)

    before = phone.opened_services.count("sync:")
    with pytest.raises(BenchError) as err:
        edgekd.bench([tflite_model], device=str(profile), settings=replace(FAST, batch_size=2))
    assert "has a fixed batch of 1: batch size 2 cannot be applied" in err.value.what
    np.save(inputs, np.ones((3, 8), dtype=np.float32))
    with pytest.raises(BenchError) as err:
        edgekd.bench([onnx_model], device=str(profile), settings=FAST, inputs=inputs)
    assert "the inputs have shape [3, 8]; identity's input 'x' takes ['batch', 16]" in err.value.what
    assert phone.opened_services.count("sync:") == before  # refused before anything was pushed


def test_cpus_the_phone_does_not_have_are_refused_on_the_native_path(adb_server, phone, fake_binary,  # noqa: F811
                                                                     tflite_model, tmp_path):  # noqa: F811
    from edgekd.devices.base import DeviceError

    have = sorted(os.sched_getaffinity(0))  # the loopback phone's shell runs on this machine
    profile = _profile(tmp_path, adb_server, phone, python=None, native={"tflite": str(fake_binary)},
                       cpus=[have[0], have[-1] + 1])
    with pytest.raises(DeviceError) as err:
        edgekd.bench([tflite_model], device=str(profile), settings=FAST)
    assert f"names CPU {have[-1] + 1}, which it does not have (its CPUs: {', '.join(map(str, have))})" in \
        err.value.what and "`cpus:`" in err.value.fix


def test_a_phone_without_taskset_says_so_on_the_native_path(adb_server, tmp_path_factory, fake_binary,  # noqa: F811
                                                            tflite_model, tmp_path):  # noqa: F811
    from adb_device import LoopbackAdbDevice

    from edgekd.errors import BenchError

    phone = LoopbackAdbDevice(_sandbox(tmp_path_factory, "no-taskset-native"), without=("taskset",))
    with _attached(adb_server, phone) as dev:
        profile = _profile(tmp_path, adb_server, dev, python=None, native={"tflite": str(fake_binary)}, cpus=[0])
        with pytest.raises(BenchError) as err:
            edgekd.bench([tflite_model], device=str(profile), settings=FAST)
    assert "has no taskset" in err.value.what and "remove `cpus:`" in err.value.fix
    assert "ABI" not in err.value.fix


def test_sustained_on_a_phone_without_python_is_refused(adb_server, phone, fake_binary, tflite_model,  # noqa: F811
                                                         tmp_path):
    """A native tool times its own loop (here ~1 s, not the minutes asked) and prints one summary: --sustained
    used to run it so and return a result without any trend, as if the device had been loaded that long."""
    from dataclasses import replace

    from edgekd.bench.harness import sustained_settings
    from edgekd.errors import BenchError

    profile = _profile(tmp_path, adb_server, phone, python=None, native={"tflite": str(fake_binary)})
    with pytest.raises(BenchError) as info:
        edgekd.bench([tflite_model], device=str(profile), settings=replace(sustained_settings(0.05), warmup_runs=1),
                     results_dir=tmp_path / "results")
    assert "--sustained needs edgekd's runner" in info.value.what and "python:" in info.value.fix
    assert not (tmp_path / "results" / "bench-mlp@phone.json").exists()


# ------------------------------------------------------------------ the phone's own bench lock on the native path

@pytest.fixture()
def android_phone(adb_server, tmp_path_factory):  # noqa: F811
    """A phone with Android's shell (mksh) and toybox's flock and timeout: no `flock -w`, and fd 9 of `exec 9<`
    closed in every command the shell starts."""
    from adb_device import LoopbackAdbDevice

    toybox, mksh = shutil.which("toybox"), shutil.which("mksh")
    if toybox is None or mksh is None:
        skip_or_fail_on_ci("toybox and mksh (Android's tools and shell) are needed: apt-get install toybox mksh")
    with _attached(adb_server, LoopbackAdbDevice(_sandbox(tmp_path_factory, "android"), toybox=toybox,
                                                 shell=mksh)) as dev:
        yield dev


def test_a_native_bench_on_a_phone_another_bench_holds_waits_then_fails_busy(adb_server, android_phone,  # noqa: F811
                                                                            fake_binary, tflite_model, tmp_path,
                                                                            monkeypatch):
    """Another bench's runner (another machine or user) measures on the phone: the native tool used to run
    anyway, and both measured under each other's load. Now it waits (EDGEKD_DEVICE_WAIT, as a runner) and fails."""
    from edgekd.errors import BenchError

    profile = _profile(tmp_path, adb_server, android_phone, python=None, native={"tflite": str(fake_binary)})
    monkeypatch.setenv("EDGEKD_DEVICE_WAIT", "0.2")
    fd = hold_device_lock(Path(os.environ["EDGEKD_DEVICE_LOCK"]))
    try:
        with pytest.raises(BenchError) as err:
            edgekd.bench([tflite_model], device=str(profile), settings=FAST, results_dir=tmp_path / "results")
    finally:
        os.close(fd)
    assert err.value.exit_code == 2
    assert err.value.what == f"device 'phone' is busy with another bench (pid {os.getpid()}, user alice, from " \
                             "192.0.2.7)"
    assert "EDGEKD_DEVICE_WAIT" in err.value.fix
    assert not (tmp_path / "results" / "bench-mlp@phone.json").exists()  # nothing was measured


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/locks")
def test_a_native_bench_that_had_to_wait_for_the_phone_records_it(adb_server, android_phone, fake_binary,  # noqa: F811
                                                                  tflite_model, tmp_path):
    import time
    from concurrent.futures import ThreadPoolExecutor
    from dataclasses import replace

    from edgekd.bench.harness import device_wait

    lock = Path(os.environ["EDGEKD_DEVICE_LOCK"])
    profile = _profile(tmp_path, adb_server, android_phone, python=None, native={"tflite": str(fake_binary)})
    reporter = NoteKeeper()
    fd = hold_device_lock(lock)
    try:
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(edgekd.bench, [tflite_model], str(profile), settings=replace(FAST, rounds=1),
                                  reporter=reporter)
            deadline = time.monotonic() + 120
            # the phone's shell waits for the device and the bench says so at once: now the other bench ends
            while not (waiting_on(lock) and any("waiting up to" in n for n in reporter.notes)):
                assert not running.done(), running.exception()
                assert time.monotonic() < deadline, "the native run never waited for the phone's lock, or not said so"
                time.sleep(0.05)
            os.close(fd)
            fd = None
            (result,) = running.result(timeout=120)
    finally:
        if fd is not None:
            os.close(fd)
    assert result.harness == "native" and result.latency_us["p50"] > 0
    [record] = result.device_lock
    assert record["state"] == "held" and record["path"] == str(lock) and record["waited_s"] >= 0
    assert record["waited_for"] == f"pid {os.getpid()}, user alice, from 192.0.2.7"
    assert [n for n in reporter.notes if "waiting" in n] == [
        f"phone: the device is busy with another bench ({record['waited_for']}); waiting up to "
        f"{device_wait(FAST):.0f} s for it to end"]
    assert [n for n in reporter.notes if "waited" in n] == [
        f"phone: waited {record['waited_s']:.1f} s for another bench on the device ({record['waited_for']}) to end"]


def test_a_run_benched_on_a_phone_without_python(tiny_run, adb_server, phone, fake_perf_test,  # noqa: F811
                                                 fake_binary, tmp_path):  # noqa: F811
    """A recipe whose bench.device is a stock phone: each artifact is timed by its runtime's own tool, at the shape
    of the run's bench inputs (the tool makes the data), and the run's report is written."""
    shutil.copytree(tiny_run.rundir.root, tmp_path / "tiny")
    profile = _profile(tmp_path, adb_server, phone, python=None,
                       native={"onnx": str(fake_perf_test), "tflite": str(fake_binary)})
    recipe = tiny_run.recipe.model_copy(deep=True)
    recipe.output_dir = tmp_path
    recipe.bench.device = str(profile)
    recipe.bench.rounds = 1
    recipe.bench.eval_samples = 3  # the tool starts once per sample: the stand-in, in Python, takes ~0.5 s
    notes = NoteKeeper()
    result = edgekd.run(recipe, reporter=notes)  # its report crashed on a native result (no device system info)
    assert result.stages["bench"] == "ran" and result.stages["report"] == "ran"
    assert {r.harness for r in result.results} == {"native"}
    timed = {r.artifact["name"]: r.inputs[0]["shape"] for r in result.results}
    expected = {r.artifact["name"]: [1, 64] for r in tiny_run.results}
    # benchmark_model prints whole µs: a TFLite floor (no operator) may time at 0 in every call, and then has no
    # result; a tiny MLP with some calls at 1 µs, the mean of its readings (on a fast CPU: it depends on the speed)
    unresolved = {n for n in expected if n not in timed}
    assert all("tflite" in n for n in unresolved) and timed == {n: expected[n] for n in timed}
    assert all(any(note.startswith(f"[warning] {n}: benchmark_model timed its calls at 0 µs") for note in notes.notes)
               for n in unresolved)
    report = (tmp_path / "tiny" / "report" / "index.html").read_text()
    for r in result.results:
        mean_timed = any(note.startswith(f"{r.artifact['name']}: benchmark_model timed most calls at 0 µs")
                         for note in notes.notes)
        assert r.latency_us["resolution_limited"] == mean_timed
        if mean_timed:
            assert r.latency_us["p5"] is None and html.escape(stats.BELOW_RESOLUTION_MARK) in report
    assert "phone has no Python: its benchmark tool makes its own input data, at the shape of the inputs given " \
           "('x' [1, 64])" in notes.notes
    # the CPU the phone's shell named (/proc/cpuinfo): the report says what the latencies were measured on
    from edgekd.bench.runner import parse_cpuinfo

    cpu = parse_cpuinfo(Path("/proc/cpuinfo").read_text())[0]
    assert cpu and {r.device["info"]["system"]["cpu_model"] for r in result.results} == {cpu}
    assert f"CPU {html.escape(cpu)} ({os.cpu_count()} logical cores" in report


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory):
    """The tiny recipe with a student wide enough for benchmark_model's whole-µs timer on any machine (64-1024-1024-10,
    1.1M multiply-adds a call). The tiny students take well under 1 µs in LiteRT on an AVX-512 host: the tool (and
    its stand-in) prints 0 µs, and such an artifact has no result, so no accuracy either."""
    from conftest import TINY_RECIPE

    recipe = yaml.safe_load(TINY_RECIPE.read_text())
    recipe.update(name="wide", output_dir=str(tmp_path_factory.mktemp("wide")))
    recipe["student"]["model"]["params"] = {"width": 1024, "depth": 2}
    recipe["scratch"] = {"enabled": False}
    recipe["bench"] = {"enabled": False}
    recipe["export"]["targets"] = {"teacher": [], "student": ["fp32", "int8_static"], "scratch": []}
    return edgekd.run(edgekd.load_recipe(recipe))


def test_a_phone_without_python_scores_tflite_artifacts_with_benchmark_model(wide_run, adb_server,  # noqa: F811
                                                                             android_phone, fake_perf_test,
                                                                             fake_binary, tmp_path):  # noqa: F811
    """benchmark_model runs each test sample from a file (--input_layer_value_files) and writes the outputs
    (--output_filepath): a TFLite artifact gets its accuracy on the phone, the quantized one through its int8
    input and output (the loop over the samples runs in Android's shell, mksh), the same as edgekd's runner finds
    on this host for the same samples. perf_test writes no outputs: the ONNX artifact has none, and the bench
    says why. The phone's shell tells what it is (uname, /proc/cpuinfo, getprop); marked emulated (an Android
    emulator), its outputs are compared with this host's runner's. `devices --clean` removes what was left."""
    import platform
    from dataclasses import replace

    names = ("student-tflite-int8_static", "student-tflite-fp32", "student-onnx-fp32")
    artifacts = [wide_run.rundir.artifacts / n for n in names]
    assert wide_run.stages["bench"] == "disabled"  # the export wrote the test split the phone scores with
    settings = replace(FAST, rounds=1, eval_samples=16)
    profile = _profile(tmp_path, adb_server, android_phone, python=None, emulated=True,
                       native={"onnx": str(fake_perf_test), "tflite": str(fake_binary)})
    notes = NoteKeeper()
    on_phone = {r.artifact["name"]: r for r in edgekd.bench(artifacts, device=str(profile), settings=settings,
                                                            reporter=notes)}
    on_host = {r.artifact["name"]: r for r in edgekd.bench(artifacts, settings=settings)}
    assert {n: r.harness for n, r in on_phone.items()} == {n: "native" for n in names}
    for name in names[:2]:
        assert on_phone[name].device_accuracy["samples"] == on_host[name].device_accuracy["samples"] == 16
        assert on_phone[name].device_accuracy["accuracy"] == on_host[name].device_accuracy["accuracy"], name
        parity = on_phone[name].cross_arch_parity
        assert parity["samples"] == 16 and parity["agreement"] == 1.0 and parity["max_abs_error"] == 0.0, parity
        assert parity["device_runtime"] == "benchmark_model (native)" and parity["device_arch"] == platform.machine()
    assert on_phone["student-onnx-fp32"].device_accuracy is None
    assert on_phone["student-onnx-fp32"].cross_arch_parity is None
    system = on_phone["student-onnx-fp32"].device["info"]["system"]
    assert on_phone["student-onnx-fp32"].device["arch"] == system["machine"] == platform.machine()
    assert system["cpu_model"] and system["cpu_count_logical"] == os.cpu_count(), system
    assert system["device_model"] == "edgekd-loopback"  # getprop ro.product.model
    # what the scoring left on the phone (its inputs and outputs) is edgekd's to remove: `devices --clean` does
    from edgekd.bench.clean import clean

    left = [android_phone.host_path(f"{WD}/{folder}") for folder in ("inputs", "outputs")]
    assert all(any(folder.glob("*.bin")) for folder in left), [list(f.iterdir()) for f in left]
    assert clean(str(profile)).failed == 0 and not any(folder.exists() for folder in left)
    assert ("no accuracy on phone (it has no Python to run edgekd's runner) for student-onnx-fp32: "
            "onnxruntime_perf_test writes no outputs") in notes.notes
    assert ("phone has no Python: benchmark_model scores 2 artifact(s) on 16 test samples, starting it once per "
            "sample; bench.eval_samples (--eval-samples) scores fewer") in notes.notes


def test_a_benchmark_model_without_output_filepath_still_times_and_says_why_there_is_no_accuracy(
        wide_run, adb_server, phone, tmp_path_factory, tmp_path):  # noqa: F811
    """An older benchmark_model build (no --output_filepath) refuses the scoring call: the artifact keeps the
    timings it gave, without an accuracy, and a warning quotes the tool."""
    from dataclasses import replace

    from test_native import FAKE, _as_native_binary

    flag = '    "output_filepath": (str, ""),\n'
    assert flag in FAKE.read_text()
    old_source = tmp_path / "old_benchmark_model.py"
    old_source.write_text(FAKE.read_text().replace(flag, ""))
    old_build = _as_native_binary(tmp_path_factory, old_source, "benchmark_model")
    profile = _profile(tmp_path, adb_server, phone, python=None, native={"tflite": str(old_build)})
    notes = NoteKeeper()
    (result,) = edgekd.bench([wide_run.rundir.artifacts / "student-tflite-fp32"], device=str(profile),
                             settings=replace(FAST, rounds=1, eval_samples=2), reporter=notes)
    assert result.harness == "native" and result.latency_us["p50"] > 0 and result.device_accuracy is None
    (warning,) = [n for n in notes.notes if n.startswith("[warning] student-tflite-fp32: no accuracy on phone: ")]
    assert "benchmark_model failed on phone (exit code 1)" in warning and "Unconsumed cmdline flags" in warning


def test_a_model_a_native_tool_times_at_0_us_has_no_result():
    """benchmark_model times whole microseconds: a model it prints at 0 µs in every call (a floor) used to fail the
    whole bench (a result's round p50 must be above 0), so the tiny run on a stock phone failed; it is said and
    left without a result. One with readings of 1 µs among the zeros (a tiny MLP) is timed by their mean."""
    from edgekd.bench.harness import _unresolved
    from edgekd.bench.native import parse_benchmark_model
    from edgekd.export.artifact import Artifact

    def printed(stat: str, avg: str) -> dict:
        return parse_benchmark_model(f"INFO: {stat}\nINFO: Inference timings in us: Init: 5, First inference: 1, "
                                     f"Warmup (avg): 0.4, Inference (avg): {avg}\n")

    zero = printed("count=50 curr=0(all same) p5=0 median=0 p95=0", "0")
    sub_us = printed("count=50 first=1 curr=0 min=0 max=1 avg=0.3 std=0 p5=0 median=0 p95=1", "0.3")
    slow = printed("count=50 first=1 curr=1 min=1 max=2 avg=1.2 std=0 p5=1 median=1 p95=2", "1.2")
    notes = NoteKeeper()
    floor = Artifact(name="floor-tflite-fp32", role="floor", format="tflite", precision="fp32", file="model.tflite",
                     size_bytes=1, sha256="0" * 64)
    model = floor.model_copy(update={"name": "student-tflite-fp32", "role": "student"})
    said: set[str] = set()
    assert (_unresolved(floor, zero, notes, said), _unresolved(model, zero, notes, said)) == (True, True)
    assert (_unresolved(floor, slow, notes, said), _unresolved(model, slow, notes, said)) == (False, False)
    assert [_unresolved(model, sub_us, notes, said) for _ in range(2)] == [False, False]  # timed, said once
    assert notes.notes == [
        "[warning] floor-tflite-fp32: benchmark_model timed its calls at 0 µs, below the 1 µs it can show; it has no "
        "result on this device (a call with no operator costs less there)",
        "[warning] student-tflite-fp32: benchmark_model timed its calls at 0 µs, below the 1 µs it can show; it has "
        "no result on this device: with Python on the device (Termux, `python:` in its profile) edgekd's runner "
        "times in ns",
        "student-tflite-fp32: benchmark_model timed most calls at 0 µs (its timer reads whole µs): its p50 is the mean "
        "of its readings, 0.30 µs in this round, without percentiles. Each reading is the difference of two whole-µs "
        "clock readings, so the mean is the calls' mean"]


def test_calls_under_a_microsecond_are_timed_by_the_mean_of_the_tools_readings():
    """Rounds of benchmark_model where calls take under 1 µs (median 0): every round's p50 is its mean, also a
    round whose whole-µs median happened to be 1, and the percentiles the tool's resolution cannot give are None.
    Each call reads end − start of a whole-µs clock, so these readings average to the calls' mean (the stand-in
    reads its clock the same way)."""
    from edgekd.bench.native import bench_result_fields, parse_benchmark_model

    def printed(median: int, avg: float) -> dict:
        return parse_benchmark_model(f"INFO: count=1000 first=1 curr=0 min=0 max=3 avg={avg} std=0 p5=0 "
                                     f"median={median} p95=1\nINFO: Inference timings in us: Init: 5, "
                                     f"First inference: 1, Warmup (avg): 0.4, Inference (avg): {avg}\n")

    fields = bench_result_fields([printed(0, 0.4), printed(1, 0.55), printed(0, 0.45)])
    lat = fields["latency_us"]
    assert fields["round_p50_us"] == [0.4, 0.55, 0.45] and lat["resolution_limited"] is True
    assert lat["p50"] == 0.45 and lat["mean"] == pytest.approx(0.4666666) and lat["ci95_p50_rounds"] is not None
    assert all(lat[k] is None for k in ("p5", "p90", "p95", "p99", "p999"))
    resolved = bench_result_fields([printed(1, 1.2), printed(1, 1.1)])
    assert resolved["round_p50_us"] == [1.0, 1.0] and resolved["latency_us"]["resolution_limited"] is False


def test_check_threads_on_a_model_without_a_timing_says_so(monkeypatch, tmp_path):
    """check_threads compares two benches of one model; where a native tool timed it at 0 µs the bench has no
    result (see above), and check_threads failed with an IndexError. (The 0 µs bench is stood in for here: a
    real one depends on the device's speed.)"""
    from edgekd.bench import harness
    from edgekd.errors import BenchError

    monkeypatch.setattr(harness, "bench", lambda *args, **kwargs: [])
    with pytest.raises(BenchError) as err:
        harness.check_threads(tmp_path / "mlp.tflite", "phone", 2, FAST)
    assert err.value.what == "mlp.tflite has no timing on phone to compare threads with"
    assert "0 µs" in err.value.why
