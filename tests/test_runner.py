"""The device-side runner, run as a real subprocess against real onnxruntime (no mocks).

Every test goes through `python runner.py SPEC` exactly as a device would, and
checks the one JSON object on stdout and the exit status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

RUNNER = Path(__file__).resolve().parents[1] / "edgekd" / "bench" / "runner.py"

# Small and fast: the point is behaviour, not numbers.
FAST = {
    "warmup_runs": 5,
    "warmup_min_seconds": 0.01,
    "min_runs": 50,
    "min_seconds": 0.05,
    "max_seconds": 5.0,
    "memory_runs": 3,
}


def _save_model(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime this project supports
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def identity_model(path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1, 8, 8])
    return _save_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y]), path)


def linear_model(path: Path, w: np.ndarray, b: np.ndarray, batch: Any = "batch") -> Path:
    """y = x @ w + b (MatMul + Add); batch is a dim name (dynamic) or an int (fixed)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, w.shape[0]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, w.shape[1]])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    return _save_model(helper.make_graph(nodes, "linear", [x], [y], inits), path)


@pytest.fixture()
def weights() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((16, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32)


@pytest.fixture()
def identity_dir(tmp_path: Path) -> Path:
    identity_model(tmp_path / "id.onnx")
    np.save(tmp_path / "x.npy", np.random.default_rng(1).random((1, 1, 8, 8), dtype=np.float32))
    return tmp_path


def run_runner(
    spec: dict | None, workdir: Path, *, args: list[str] | None = None, stdin: str | None = None
) -> tuple[int, dict]:
    """Run the runner in a subprocess; assert stdout is exactly one JSON object and return (exit code, it)."""
    if args is None:
        (workdir / "spec.json").write_text(json.dumps(spec))
        args = [str(workdir / "spec.json")]
    proc = subprocess.run(
        [sys.executable, str(RUNNER), *args],
        input=stdin, capture_output=True, text=True, cwd=str(workdir), timeout=120,
    )
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"stdout must be one JSON line, got {proc.stdout!r}; stderr: {proc.stderr}"
    return proc.returncode, json.loads(lines[0])


def assert_error(code: int, result: dict, kind: str) -> dict:
    assert code == 3, result
    assert result["schema"] == "edgekd.runner/1" and result["ok"] is False
    error = result["error"]
    assert error["kind"] == kind, error
    assert set(error) == {"kind", "what", "why", "fix"} and error["what"]
    return error


def test_identity_run_reports_every_phase(identity_dir: Path):
    code, r = run_runner({"artifact": "id.onnx", "runtime": "onnxruntime", "inputs": {"x": "x.npy"}, **FAST}, identity_dir)
    assert code == 0, r
    assert r["schema"] == "edgekd.runner/1" and r["ok"] is True
    lat = r["latencies_ns"]
    assert len(lat) >= FAST["min_runs"] and len(lat) == r["timed"]["runs"]
    assert all(isinstance(v, int) and v > 0 for v in lat)
    assert r["timed"]["seconds"] >= FAST["min_seconds"]
    assert r["warmup"]["runs"] >= FAST["warmup_runs"] and r["warmup"]["seconds"] >= FAST["warmup_min_seconds"]
    assert r["load_ms"] > 0 and r["first_inference_us"] > 0
    rt = r["runtime"]
    assert rt["name"] == "onnxruntime" and rt["io_binding"] is True and rt["delegate"] is None
    assert rt["intra_op_threads"] == 1 and rt["inter_op_threads"] == 1
    assert "CPUExecutionProvider" in rt["providers"]
    assert r["inputs"] == [{"name": "x", "shape": [1, 1, 8, 8], "dtype": "float32", "model_shape": ["batch", 1, 8, 8]}]
    assert r["outputs"][0]["name"] == "y" and r["outputs"][0]["shape"] == [1, 1, 8, 8]
    assert r["predict"] is None
    timer = r["timer"]  # the timer's own cost, measured by the same loop around a call of nothing
    assert timer["runs"] == 2000 and isinstance(timer["overhead_ns"], int) and timer["overhead_ns"] > 0
    assert timer["resolution_ns"] > 0
    assert r["python"] and r["numpy"] == np.__version__
    system = r["system"]
    assert {"machine", "system", "cpu_model", "cpu_count_logical", "cpu_features", "governor", "affinity"} <= set(system)
    if sys.platform.startswith("linux"):
        mem = r["memory_kb"]
        assert all(isinstance(mem[k], int) and mem[k] > 0 for k in mem), mem
        assert mem["vmhwm"] >= mem["baseline_vmhwm"]
        assert system["affinity"]


def test_caps_stop_the_timed_loop(identity_dir: Path):
    base = {"artifact": "id.onnx", "runtime": "onnxruntime", "inputs": {"x": "x.npy"}, **FAST}
    # max_runs wins over min_seconds: a loop that went on to min_seconds would outlast run_runner's 120 s timeout
    code, r = run_runner({**base, "min_runs": 10, "max_runs": 10, "min_seconds": 600.0, "max_seconds": 600.0},
                         identity_dir)
    assert code == 0 and r["timed"]["runs"] == 10 and len(r["latencies_ns"]) == 10
    # max_seconds wins over min_runs: stopped at (not before) 0.1 s, long before a million runs
    code, r = run_runner({**base, "min_runs": 10**6, "max_runs": 10**6, "min_seconds": 0.0, "max_seconds": 0.1}, identity_dir)
    assert code == 0 and 0 < r["timed"]["runs"] < 10**6 and r["timed"]["seconds"] >= 0.1


def test_windows_run_the_seconds_asked_past_max_runs_keeping_a_bounded_sample(identity_dir: Path):
    """--sustained's loop: max_runs (500 here) bounds what is kept, not how long it runs. A µs model makes
    far more than 500 calls in the second asked; without windows the loop stops at 500 (test above)."""
    spec = {"artifact": "id.onnx", "runtime": "onnxruntime", "inputs": {"x": "x.npy"}, **FAST,
            "min_runs": 1, "min_seconds": 1.0, "max_seconds": 1.0, "max_runs": 500, "windows": 4}
    code, r = run_runner(spec, identity_dir)
    assert code == 0, r
    timed, windows = r["timed"], r["windows"]
    assert timed["seconds"] >= 1.0 and timed["runs"] > 500
    assert len(r["latencies_ns"]) == timed["kept"] == 500  # a sample, not one entry per call
    assert [w["index"] for w in windows] == [0, 1, 2, 3]
    assert sum(w["calls"] for w in windows) == timed["runs"]
    for before, after in zip(windows, windows[1:]):  # contiguous, each ending past its quarter of the second
        assert after["start_ns"] == before["start_ns"] + before["elapsed_ns"] >= after["index"] * 250_000_000
    assert windows[-1]["start_ns"] + windows[-1]["elapsed_ns"] >= 1_000_000_000
    for w in windows:
        assert w["kept"] == min(w["calls"], 500)
        assert w["min_ns"] <= w["p50_ns"] <= w["p90_ns"] <= w["p99_ns"] <= w["max_ns"]
        assert 0 < w["busy_ns"] <= w["elapsed_ns"]


def test_the_windowed_sample_is_algorithm_r_fed_in_batches():
    """The batched reservoir keeps exactly what the one-value-at-a-time Algorithm R keeps with the same random
    draws, in the order the values came; below its size it keeps everything."""
    from edgekd.bench.runner import Reservoir

    values = np.arange(50_000, dtype=np.int64) * 7
    reservoir = Reservoir(1000, np.random.RandomState(3))
    start = 0
    for size in [1, 999, 3, 1000, 17] * 10 + [50_000]:  # batches that straddle the moment it fills
        reservoir.add(values[start:start + size])
        start += size
        if start >= values.size:
            break
    rng = np.random.RandomState(3)
    kept, where = list(values[:1000]), list(range(1000))
    for i in range(1000, values.size):
        slot = int(rng.random_sample() * (i + 1))
        if slot < 1000:
            kept[slot], where[slot] = values[i], i
    assert reservoir.sample().tolist() == [kept[j] for j in np.argsort(where)]
    assert 0.4 < np.mean(reservoir.sample() < values[values.size // 2]) < 0.6  # about half from each half

    small = Reservoir(1000, np.random.RandomState(0))
    small.add(values[:600])
    assert small.sample().tolist() == values[:600].tolist()


def test_spec_on_stdin_resolves_paths_against_cwd(identity_dir: Path):
    spec = {"artifact": "id.onnx", "runtime": "onnxruntime", "inputs": {"x": "x.npy"}, **FAST}
    code, r = run_runner(None, identity_dir, args=["-"], stdin=json.dumps(spec))
    assert code == 0 and r["ok"] and len(r["latencies_ns"]) >= FAST["min_runs"]


def test_predict_dynamic_batch_matches_numpy(tmp_path: Path, weights):
    w, b = weights
    linear_model(tmp_path / "lin.onnx", w, b)
    rng = np.random.default_rng(2)
    np.save(tmp_path / "x.npy", rng.standard_normal((1, 16), dtype=np.float32))
    test_x = rng.standard_normal((100, 16), dtype=np.float32)
    np.save(tmp_path / "test_x.npy", test_x)
    spec = {"artifact": "lin.onnx", "runtime": "onnxruntime", "inputs": {"x": "x.npy"}, **FAST,
            "predict": {"inputs": {"x": "test_x.npy"}, "batch_size": 32, "output": "out/pred.npy"}}
    code, r = run_runner(spec, tmp_path)
    assert code == 0, r
    assert r["predict"]["rows"] == 100 and r["predict"]["batch_size"] == 32 and r["predict"]["seconds"] >= 0
    assert Path(r["predict"]["output"]) == tmp_path / "out" / "pred.npy"
    pred = np.load(tmp_path / "out" / "pred.npy")
    np.testing.assert_allclose(pred, test_x @ w + b, rtol=1e-5, atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["pred.npy"]  # no temp file left behind


def test_predict_fixed_batch_pads_and_trims(tmp_path: Path, weights):
    w, b = weights
    linear_model(tmp_path / "lin8.onnx", w, b, batch=8)
    rng = np.random.default_rng(3)
    np.save(tmp_path / "x.npy", rng.standard_normal((8, 16), dtype=np.float32))
    test_x = rng.standard_normal((21, 16), dtype=np.float32)  # 8 + 8 + 5 (padded to 8)
    np.save(tmp_path / "test_x.npy", test_x)
    spec = {"artifact": "lin8.onnx", "runtime": "onnxruntime", "inputs": {"x": "x.npy"}, **FAST,
            "predict": {"inputs": {"x": "test_x.npy"}, "batch_size": 64, "output": "pred.npy"}}
    code, r = run_runner(spec, tmp_path)
    assert code == 0, r
    assert r["predict"]["rows"] == 21 and r["predict"]["batch_size"] == 8
    np.testing.assert_allclose(np.load(tmp_path / "pred.npy"), test_x @ w + b, rtol=1e-5, atol=1e-5)


def test_info_describes_the_device_without_importing_runtimes():
    proc = subprocess.run([sys.executable, str(RUNNER), "--info"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    from importlib.metadata import version

    assert info["schema"] == "edgekd.runner-info/1"
    assert info["runtimes"]["onnxruntime"] == version("onnxruntime")
    assert "ai_edge_litert" in info["runtimes"]
    assert info["numpy"] == np.__version__
    assert info["system"]["cpu_count_logical"] == os.cpu_count()


# ---------------------------------------------------------------- errors


def test_corrupt_artifact(identity_dir: Path):
    (identity_dir / "bad.onnx").write_bytes(np.random.default_rng(0).bytes(512))
    code, r = run_runner({"artifact": "bad.onnx", "runtime": "onnxruntime", "inputs": {"x": "x.npy"}, **FAST}, identity_dir)
    error = assert_error(code, r, "artifact_load")
    assert error["why"]  # the runtime's own message


def test_missing_artifact(identity_dir: Path):
    code, r = run_runner({"artifact": "nope.onnx", "runtime": "onnxruntime", "inputs": {"x": "x.npy"}}, identity_dir)
    error = assert_error(code, r, "artifact_missing")
    assert "nope.onnx" in error["what"]


def test_unknown_spec_key_lists_known_keys(identity_dir: Path):
    code, r = run_runner({"artifact": "id.onnx", "runtime": "onnxruntime", "inputs": {"x": "x.npy"}, "min_run": 5}, identity_dir)
    error = assert_error(code, r, "spec")
    assert "min_run" in error["what"] and "min_runs" in error["fix"] and "max_seconds" in error["fix"]


def test_unknown_runtime_lists_known_runtimes(identity_dir: Path):
    code, r = run_runner({"artifact": "id.onnx", "runtime": "tensorrt", "inputs": {"x": "x.npy"}}, identity_dir)
    error = assert_error(code, r, "spec")
    assert "tensorrt" in error["what"] and "onnxruntime" in error["fix"]


@pytest.mark.parametrize(
    "patch",
    [{"threads": "2"}, {"threads": 0}, {"min_seconds": True}, {"inputs": ["x.npy"]},
     {"min_runs": 10, "max_runs": 5}, {"predict": {"inputs": {"x": "x.npy"}}}, {"threads": 10**6}],
    ids=["threads-str", "threads-0", "bool-number", "inputs-list", "min-gt-max", "predict-no-output",
         "threads-a-million"],  # a million made onnxruntime hang while the kernel refused the threads' stacks
)
def test_bad_spec_values(identity_dir: Path, patch: dict):
    code, r = run_runner({"artifact": "id.onnx", "runtime": "onnxruntime", "inputs": {"x": "x.npy"}, **patch}, identity_dir)
    assert_error(code, r, "spec")


def test_invalid_json_spec(identity_dir: Path):
    (identity_dir / "spec.json").write_text("{not json")
    code, r = run_runner(None, identity_dir, args=[str(identity_dir / "spec.json")])
    assert_error(code, r, "spec")


def test_wrong_input_name_lists_model_inputs(identity_dir: Path):
    code, r = run_runner({"artifact": "id.onnx", "runtime": "onnxruntime", "inputs": {"input": "x.npy"}}, identity_dir)
    error = assert_error(code, r, "input")
    assert "input" in error["what"] and "x: float32 ['batch', 1, 8, 8]" in error["why"]


@pytest.mark.parametrize(
    "array",
    [np.zeros((1, 1, 8, 8), np.float64), np.zeros((1, 1, 8, 9), np.float32), np.zeros((1, 8, 8), np.float32)],
    ids=["dtype", "fixed-dim", "rank"],
)
def test_input_mismatch(identity_dir: Path, array: np.ndarray):
    np.save(identity_dir / "bad.npy", array)
    code, r = run_runner({"artifact": "id.onnx", "runtime": "onnxruntime", "inputs": {"x": "bad.npy"}}, identity_dir)
    assert_error(code, r, "input")


def test_missing_input_file(identity_dir: Path):
    code, r = run_runner({"artifact": "id.onnx", "runtime": "onnxruntime", "inputs": {"x": "gone.npy"}}, identity_dir)
    error = assert_error(code, r, "input")
    assert "gone.npy" in error["what"]


def test_missing_runtime_says_how_to_install(identity_dir: Path):
    """Block `import onnxruntime` with a meta path finder, as on a device without it, then run the real main."""
    (identity_dir / "spec.json").write_text(json.dumps({"artifact": "id.onnx", "runtime": "onnxruntime", "inputs": {"x": "x.npy"}}))
    code = textwrap.dedent(f"""
        import runpy, sys

        class BlockOnnxRuntime:
            def find_spec(self, name, path=None, target=None):
                if name == "onnxruntime" or name.startswith("onnxruntime."):
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None

        sys.meta_path.insert(0, BlockOnnxRuntime())
        sys.argv = [{str(RUNNER)!r}, {str(identity_dir / "spec.json")!r}]
        runpy.run_path({str(RUNNER)!r}, run_name="__main__")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    error = assert_error(proc.returncode, json.loads(proc.stdout), "runtime_missing")
    assert "pip install onnxruntime" in error["fix"]


# ---------------------------------------------------------------- import hygiene

_MODULES_PROBE = """
import importlib.util, json, runpy, sys
spec = importlib.util.spec_from_file_location("runner_under_test", {runner!r})
runner = importlib.util.module_from_spec(spec)
spec.loader.exec_module(runner)
runner.system_info()
after_import = sorted(sys.modules)
sys.argv = [{runner!r}, {spec_path!r}]
try:
    runpy.run_path({runner!r}, run_name="__main__")
except SystemExit as e:
    assert e.code == 0, e.code
with open({out!r}, "w") as f:
    json.dump({{"after_import": after_import, "after_run": sorted(sys.modules)}}, f)
"""


def test_runner_imports_no_torch_and_no_edgekd(identity_dir: Path):
    """On a device there is no torch and no edgekd: importing the file, and a full run, must not need them."""
    spec_path = identity_dir / "spec.json"
    spec_path.write_text(json.dumps({"artifact": "id.onnx", "runtime": "onnxruntime", "inputs": {"x": "x.npy"}, **FAST}))
    out = identity_dir / "modules.json"
    code = _MODULES_PROBE.format(runner=str(RUNNER), spec_path=str(spec_path), out=str(out))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=str(identity_dir))
    assert proc.returncode == 0, proc.stderr
    modules = json.loads(out.read_text())
    for phase in ("after_import", "after_run"):
        loaded = modules[phase]
        assert not [m for m in loaded if m == "torch" or m.startswith("torch.")], phase
        assert not [m for m in loaded if m == "edgekd" or m.startswith("edgekd.")], phase
    assert "onnxruntime" not in modules["after_import"]  # the runtime is imported lazily, only for a run
    assert "onnxruntime" in modules["after_run"]


def test_importing_runner_as_a_module_loads_no_other_edgekd_module():
    """`import edgekd.bench.runner` loads its parent packages and nothing else of edgekd, and no torch."""
    code = ("import json, sys; import edgekd.bench.runner; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('edgekd', 'torch'))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == ["edgekd", "edgekd.bench", "edgekd.bench.runner"]


def test_int64_ids_feed_an_int32_input_when_they_fit():
    """The TFLite converter narrows int64 token ids to int32: ids that fit are accepted, others refused."""
    from edgekd.bench.runner import RunnerError, check_arrays

    infos = [{"name": "input_ids", "dtype": "int32", "shape": [1, 4]}]
    check_arrays({"input_ids": np.array([[101, 2023, 102, 0]], np.int64)}, infos)
    with pytest.raises(RunnerError, match="dtype int64"):
        check_arrays({"input_ids": np.array([[2**40, 0, 0, 0]], np.int64)}, infos)
    with pytest.raises(RunnerError, match="dtype float32"):
        check_arrays({"input_ids": np.zeros((1, 4), np.float32)}, infos)


# --------------------------------------------------------------------------- --tether: stdin is the host's link

# A run that would go on for 10 minutes (the warmup alone lasts max_seconds): only the tether can end it early.
ENDLESS = {"warmup_runs": 10**9, "warmup_min_seconds": 600.0, "min_runs": 1, "max_runs": 1, "min_seconds": 0.0,
           "max_seconds": 600.0, "memory_runs": 0}


def _wait_gone(proc: subprocess.Popen, seconds: float = 60) -> tuple[int, str]:
    """(exit status, stderr) of a runner expected to end by itself; killed (and the test failed) if it does not."""
    try:
        proc.wait(timeout=seconds)  # not communicate(): it would close stdin, the link under test
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"the runner was still running {seconds:g} s after its link went away")
    return proc.returncode, proc.stderr.read()


def _loaded(proc: subprocess.Popen) -> bool:
    """The runner has loaded onnxruntime: it is past its arguments and into the (endless) run."""
    try:
        return "onnxruntime" in Path(f"/proc/{proc.pid}/maps").read_text()
    except OSError:
        return False


def _start_endless(identity_dir: Path, *args: str, stdin: Any) -> subprocess.Popen:
    (identity_dir / "spec.json").write_text(json.dumps(
        {"artifact": "id.onnx", "runtime": "onnxruntime", "inputs": {"x": "x.npy"}, **ENDLESS}))
    proc = subprocess.Popen([sys.executable, str(RUNNER), *args, str(identity_dir / "spec.json")], stdin=stdin,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import time

    for _ in range(1200):  # up to 60 s to import onnxruntime on a busy machine
        if _loaded(proc) or proc.poll() is not None:
            break
        time.sleep(0.05)
    if proc.poll() is not None or not _loaded(proc):
        proc.kill()
        pytest.fail(f"the runner did not start its run: {proc.wait()}, {proc.stderr.read()}")
    return proc


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/maps")
def test_tethered_runner_ends_when_the_host_closes_its_stdin(identity_dir: Path):
    # Over SSH nothing else tells the runner that its host went away (no SIGHUP, same parent): it went on for
    # its whole time limit, loading the board under the next measurement.
    proc = _start_endless(identity_dir, "--tether", "600", stdin=subprocess.PIPE)
    proc.stdin.write("\n")  # a heartbeat is read and ignored
    proc.stdin.flush()
    proc.stdin.close()  # the host side of the link is gone
    code, err = _wait_gone(proc)
    assert code == 4 and "the host closed the link" in err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/maps")
def test_tethered_runner_ends_when_its_host_goes_silent(identity_dir: Path):
    # A network that goes away without a word closes nothing: the heartbeats just stop arriving.
    proc = _start_endless(identity_dir, "--tether", "2", stdin=subprocess.PIPE)
    code, err = _wait_gone(proc)  # stdin stays open, silent
    proc.stdin.close()
    assert code == 4 and "no word from the host for 2 s" in err


def test_a_runner_the_tether_ends_mid_write_leaves_no_temp_file(tmp_path: Path):
    """The tether ends the process with os._exit, which runs no `finally`: a write of the outputs under way
    left its .tmp-*.npy in the device's work directory for good. Here the write is held (np.save blocks, as
    on a slow card) while the host goes silent."""
    script = textwrap.dedent(f"""
        import importlib.util, os, time
        import numpy as np
        spec = importlib.util.spec_from_file_location("runner", {str(RUNNER)!r})
        runner = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(runner)
        read_end, write_end = os.pipe()  # the host's link: open, and silent
        runner.np.save = lambda *a, **k: time.sleep(120)
        runner.tether(1.0, fd=read_end)
        runner.atomic_save({str(tmp_path / "out.npy")!r}, np.zeros(4))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 4, proc.stderr
    assert "no word from the host" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_runner_by_hand_is_not_tethered_to_its_stdin(identity_dir: Path):
    # The documented uses (`runner.py SPEC.json` from a terminal, a script, `< /dev/null`) never end on stdin.
    spec = {"artifact": "id.onnx", "runtime": "onnxruntime", "inputs": {"x": "x.npy"}, **FAST}
    (identity_dir / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, str(RUNNER), str(identity_dir / "spec.json")], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and json.loads(proc.stdout)["ok"] is True


@pytest.mark.parametrize("args, message", [
    (["--tether", "0", "spec.json"], "--tether needs a number of seconds > 0"),
    (["--tether"], "--tether needs a number of seconds > 0"),
    (["--tether", "30", "-"], "--tether cannot be used with a spec on stdin"),
])
def test_bad_tether_arguments(identity_dir: Path, args: list[str], message: str):
    code, result = run_runner(None, identity_dir, args=args)
    assert message in assert_error(code, result, "spec")["what"]


# ------------------------------------------------------------------------ the device's bench lock (DeviceLock)
# Two real runners on one lock file: what two machines or two users benching one board do on it.

def _lock_file(tmp_path: Path, monkeypatch) -> Path:
    """A lock path of this test's own (runners inherit the variable), not the shared one of the machine."""
    path = tmp_path / "device.lock"
    monkeypatch.setenv("EDGEKD_DEVICE_LOCK", str(path))
    return path


def _holding(proc: subprocess.Popen, lock: Path) -> None:
    """Wait until the endless runner `proc` has locked the device (it writes its pid into the file then)."""
    import time

    for _ in range(1200):
        try:
            if json.loads(lock.read_text() or "{}").get("pid") == proc.pid:
                return
        except (OSError, ValueError):
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"the first runner never held the device lock: {proc.wait()}, {proc.stderr.read()}")


def _first_runner_holding(identity_dir: Path, lock: Path) -> subprocess.Popen:
    """An endless runner that holds the device lock, as another bench's would; closing its stdin (its host's
    link) ends it and so releases the lock."""
    first = _start_endless(identity_dir, "--tether", "600", stdin=subprocess.PIPE)
    _holding(first, lock)  # kills it on failure
    return first


def _second_spec(identity_dir: Path, wait_s: float) -> Path:
    """The spec of a second runner of the same model, which waits up to wait_s for the device."""
    path = identity_dir / "second.json"
    path.write_text(json.dumps({"artifact": "id.onnx", "runtime": "onnxruntime", "inputs": {"x": "x.npy"}, **FAST,
                                "lock_wait_seconds": wait_s}))
    return path


def _wait_line(proc: subprocess.Popen, needle: str) -> str:
    """Read the runner's stderr until a line has `needle` (the runner says it waits), or it ends."""
    seen = ""
    for line in proc.stderr:
        seen += line
        if needle in line:
            return line
    pytest.fail(f"the runner never said {needle!r}; stderr: {seen}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/maps")
def test_a_runner_on_a_device_another_runner_measures_on_waits_then_says_it_is_busy(identity_dir: Path, monkeypatch):
    lock = _lock_file(identity_dir, monkeypatch)
    first = _first_runner_holding(identity_dir, lock)
    try:
        second_spec = _second_spec(identity_dir, 0.2)
        proc = subprocess.run([sys.executable, str(RUNNER), str(second_spec)], capture_output=True,
                              text=True, timeout=120)
        error = assert_error(proc.returncode, json.loads(proc.stdout), "device_busy")
        assert error["what"].startswith(f"the device is busy with another bench (pid {first.pid}, user ")
        assert str(lock) in error["why"] and "each other's load" in error["why"] and "wait for" in error["fix"]
        assert "waiting up to" in proc.stderr
    finally:
        first.stdin.close()
        _wait_gone(first)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/maps")
def test_a_waiting_runner_measures_once_the_holder_ends_and_says_it_waited(identity_dir: Path, monkeypatch):
    lock = _lock_file(identity_dir, monkeypatch)
    first = _first_runner_holding(identity_dir, lock)
    try:
        second_spec = _second_spec(identity_dir, 120.0)
        second = subprocess.Popen([sys.executable, str(RUNNER), str(second_spec)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert f"busy with another bench (pid {first.pid}" in _wait_line(second, "waiting up to 120 s")
    finally:
        first.stdin.close()  # the first bench's host goes away: its runner ends, and the lock with it
        _wait_gone(first)
    out, _ = second.communicate(timeout=120)
    result = json.loads(out)
    assert second.returncode == 0 and result["ok"] is True, result
    record = result["device_lock"]
    assert record["state"] == "held" and record["path"] == str(lock) and record["waited_s"] > 0
    assert record["waited_for"].startswith(f"pid {first.pid}")
    assert json.loads(lock.read_text())["pid"] == second.pid


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/maps")
def test_the_tether_ends_a_runner_that_waits_for_the_device(identity_dir: Path, monkeypatch):
    lock = _lock_file(identity_dir, monkeypatch)
    first = _first_runner_holding(identity_dir, lock)
    try:
        second_spec = _second_spec(identity_dir, 600.0)
        second = subprocess.Popen([sys.executable, str(RUNNER), "--tether", "600", str(second_spec)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_line(second, "waiting up to 600 s")
        second.stdin.close()  # its host gave up: it must not wait on, to take the device for nobody
        code, err = _wait_gone(second)
        assert code == 4 and "the host closed the link" in err
    finally:
        first.stdin.close()
        _wait_gone(first)


def test_the_first_runner_records_the_lock_it_held_without_waiting(identity_dir: Path, monkeypatch):
    lock = _lock_file(identity_dir, monkeypatch)
    code, r = run_runner({"artifact": "id.onnx", "runtime": "onnxruntime", "inputs": {"x": "x.npy"}, **FAST},
                         identity_dir)
    assert code == 0 and r["device_lock"] == {"path": str(lock), "state": "held", "waited_s": 0.0, "waited_for": None}
    assert lock.stat().st_mode & 0o777 == 0o666  # another user's runner must be able to open it to lock it


def test_a_symlink_planted_at_the_lock_path_is_not_followed(identity_dir: Path, monkeypatch):
    lock = _lock_file(identity_dir, monkeypatch)
    mine = identity_dir / "precious.txt"
    mine.write_text("mine")
    lock.symlink_to(mine)  # another user's link to a file of ours: locking must not write through it
    code, r = run_runner({"artifact": "id.onnx", "runtime": "onnxruntime", "inputs": {"x": "x.npy"}, **FAST},
                         identity_dir)
    assert code == 0 and r["ok"] is True  # measured, unlocked, and the result says so
    assert r["device_lock"]["state"] == "unavailable" and "symbolic link" in r["device_lock"]["why"]
    assert mine.read_text() == "mine" and lock.is_symlink()


def test_a_python_without_flock_measures_unlocked_and_says_so(identity_dir: Path, monkeypatch):
    _lock_file(identity_dir, monkeypatch)
    (identity_dir / "spec.json").write_text(json.dumps(
        {"artifact": "id.onnx", "runtime": "onnxruntime", "inputs": {"x": "x.npy"}, **FAST}))
    script = (f"import sys; sys.modules['fcntl'] = None; sys.argv = ['runner.py', {str(identity_dir / 'spec.json')!r}]; "
              f"import runpy; runpy.run_path({str(RUNNER)!r}, run_name='__main__')")  # as on Windows: no fcntl
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    result = json.loads(proc.stdout)
    assert proc.returncode == 0 and result["ok"] is True, result
    assert result["device_lock"]["state"] == "unavailable" and "no fcntl" in result["device_lock"]["why"]
    assert "running without the device's bench lock" in proc.stderr


def test_a_hard_link_planted_at_the_lock_path_is_not_written_through(identity_dir: Path, monkeypatch):
    lock = _lock_file(identity_dir, monkeypatch)
    mine = identity_dir / "precious.txt"
    mine.write_text("mine")
    os.link(mine, lock)  # the lock file would be ours to truncate and write the holder's line into
    code, r = run_runner({"artifact": "id.onnx", "runtime": "onnxruntime", "inputs": {"x": "x.npy"}, **FAST},
                         identity_dir)
    assert code == 0 and r["device_lock"]["state"] == "unavailable" and "one link" in r["device_lock"]["why"]
    assert mine.read_text() == "mine"
