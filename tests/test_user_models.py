"""Models users bring, not made by edgekd: the harness describes them as onnxruntime sees them, times them,
and scores their outputs only when they are a classifier's [batch, classes] scores (else it says why), on the
real runner and onnxruntime."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgekd
from edgekd.bench.harness import BenchSettings
from edgekd.errors import BenchError

FAST = BenchSettings(warmup_runs=5, min_runs=30, min_seconds=0.02, rounds=1)


def _save(path, nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    path.write_bytes(model.SerializeToString())
    return path


def _linear(path, classes: int, *, weights_as_inputs: bool = False, second_input: bool = False):
    """x [batch, 8] -> x @ W [batch, classes]; optionally W listed as a graph input too (torch.onnx's
    keep_initializers_as_inputs) or a second input scaling the scores."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, classes)).astype(np.float32), "W")
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])]
    if weights_as_inputs:
        inputs.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [8, classes]))
    nodes = [helper.make_node("MatMul", ["x", "W"], ["scores"])]
    if second_input:
        inputs.append(helper.make_tensor_value_info("scale", TensorProto.FLOAT, ["batch", 1]))
        nodes = [helper.make_node("MatMul", ["x", "W"], ["raw"]), helper.make_node("Mul", ["raw", "scale"], ["scores"])]
    return _save(path, nodes, inputs, [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", classes])],
                 [w])


def _eval(tmp_path, classes: int, top: int | None = None):
    x = np.random.default_rng(1).standard_normal((20, 8)).astype(np.float32)
    y = np.arange(20) % (top or classes)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    return tmp_path / "x.npy", tmp_path / "y.npy"


class _Notes:
    def __init__(self):
        self.notes: list[str] = []

    def task(self, description, total):
        from edgekd.progress import SilentReporter

        return SilentReporter().task(description, total)

    def note(self, message):
        self.notes.append(message)


def test_weights_listed_as_inputs_are_not_inputs(tmp_path):
    """torch.onnx's keep_initializers_as_inputs: each weight was taken for an input of fixed batch ("fixed batch
    of 8 … input 'W'", and --batch-size 8 led to the next weight)."""
    from edgekd.bench.harness import _describe_bare_file

    path = _linear(tmp_path / "kiai.onnx", 4, weights_as_inputs=True)
    assert [i["name"] for i in _describe_bare_file(path).inputs] == ["x"]
    [result] = edgekd.bench([path], settings=FAST, eval_data=_eval(tmp_path, 4))
    assert result.complete and result.latency_us["p50"] > 0 and result.device_accuracy is not None


def test_a_scikit_learn_zipmap_classifier_is_timed():
    """Its output is a sequence of maps: describing it was an internal error (KeyError: 0), and the runner
    crashed on it ('list' object has no attribute 'shape')."""
    from onnxruntime.datasets import get_example

    from edgekd.bench.harness import _describe_bare_file

    path = get_example("logreg_iris.onnx")  # ships with onnxruntime: inputs [3, 2], a ZipMap output
    assert [o["dtype"] for o in _describe_bare_file(Path(path)).outputs] == ["int64", "sequence"]
    [result] = edgekd.bench([path], settings=BenchSettings(**{**FAST.__dict__, "batch_size": 3}))
    assert result.complete and result.latency_us["p50"] > 0


@pytest.mark.parametrize("make, why", [
    (lambda p: _linear(p, 1), "has shape ['batch', 1]: the top class of [batch, classes] scores"),  # one logit
    (lambda p: _linear(p, 4, second_input=True), "it takes 2 inputs (x, scale) and the test inputs feed one"),
])
def test_outputs_that_are_no_class_scores_are_timed_and_not_scored(tmp_path, make, why):
    """A one-logit binary model scored 45.5% (the share of class 0), a per-position output crashed, and a
    model with two inputs aborted the whole bench; each is timed and said to be unscored."""
    reporter = _Notes()
    [result] = edgekd.bench([make(tmp_path / "m.onnx")], settings=FAST, eval_data=_eval(tmp_path, 2),
                            reporter=reporter)
    assert result.complete and result.device_accuracy is None
    assert any(n.startswith("no accuracy for m: ") and why in n for n in reporter.notes), reporter.notes


def test_labels_past_the_models_classes_are_refused(tmp_path):
    """Labels 0-6 for a 5-class model scored every sample of classes 5 and 6 wrong, exit 0."""
    with pytest.raises(BenchError, match=r"go up to 6, but m scores 5 classes \(0-4\)"):
        edgekd.bench([_linear(tmp_path / "m.onnx", 5)], settings=FAST, eval_data=_eval(tmp_path, 5, top=7))


def test_a_model_with_external_data_is_benched_with_its_weights(tmp_path):
    """A model saved with external data (large transformer exports) failed on the device ("External data path
    does not exist": only the model file was pushed, renamed), and its size left out the weights. Two models of
    one graph file and different weights are scored apart: each ran with its own data file."""
    import onnx

    x, y = _eval(tmp_path, 4)
    for name, sign in (("plus", 1.0), ("minus", -1.0)):
        folder = tmp_path / name
        folder.mkdir()
        model = onnx.load(str(_linear(folder / "tmp.onnx", 4)))
        model.graph.initializer[0].CopyFrom(numpy_helper.from_array(sign * numpy_helper.to_array(
            model.graph.initializer[0]), "W"))
        onnx.save_model(model, str(folder / "m.onnx"), save_as_external_data=True, location="m.onnx.data",
                        size_threshold=0)
        (folder / "tmp.onnx").unlink()
    results = [edgekd.bench([tmp_path / n / "m.onnx"], settings=FAST, eval_data=(x, y))[0] for n in ("plus", "minus")]
    files = [sum(f.stat().st_size for f in (tmp_path / n).iterdir()) for n in ("plus", "minus")]
    assert [r.artifact["size_bytes"] for r in results] == files and files[0] > 128  # the weights counted
    accuracies = [r.device_accuracy["accuracy"] for r in results]
    w = numpy_helper.to_array(onnx.load(str(tmp_path / "plus" / "m.onnx")).graph.initializer[0])
    scores, labels = np.load(x) @ w, np.load(y)
    assert accuracies == pytest.approx([(scores.argmax(1) == labels).mean(), ((-scores).argmax(1) == labels).mean()])
    assert accuracies[0] != accuracies[1]
    assert (tmp_path / "plus" / "m.onnx").read_bytes() == (tmp_path / "minus" / "m.onnx").read_bytes()
    assert results[0].artifact["sha256"] != results[1].artifact["sha256"]  # the files are the same model file


def test_new_weights_in_external_data_are_benched_again_on_resume(tmp_path):
    """A bare model was keyed on its model file alone: new weights in its data file kept the model file's bytes,
    so --resume took the old result for the new model, and the history filed both as one model."""
    import onnx

    x, y = _eval(tmp_path, 4)
    w = numpy_helper.to_array(onnx.load(str(_linear(tmp_path / "tmp.onnx", 4))).graph.initializer[0])
    saved = {}
    for sign in (1.0, -1.0):
        model = onnx.load(str(tmp_path / "tmp.onnx"))
        model.graph.initializer[0].CopyFrom(numpy_helper.from_array(sign * w, "W"))
        folder = tmp_path / str(sign)
        folder.mkdir()
        onnx.save_model(model, str(folder / "m.onnx"), save_as_external_data=True, location="m.onnx.data",
                        size_threshold=0)
        saved[sign] = folder
    assert (saved[1.0] / "m.onnx").read_bytes() == (saved[-1.0] / "m.onnx").read_bytes()
    path = tmp_path / "m.onnx"
    for sign in (1.0, -1.0):  # the user's model file stays; its data file gets new weights
        for name in ("m.onnx", "m.onnx.data"):
            shutil.copyfile(saved[sign] / name, tmp_path / name)
        (result,) = edgekd.bench([path], settings=FAST, eval_data=(x, y), results_dir=tmp_path / "results",
                                 resume=True)
        assert result.device_accuracy["accuracy"] == pytest.approx(
            ((np.load(x) @ (sign * w)).argmax(1) == np.load(y)).mean())


def test_a_model_the_device_cannot_load_is_named_as_the_user_knows_it(tmp_path):
    """The error named the device's copy (artifacts/786728ec4e126316.onnx, named after its content), not which
    of the files given failed, and told to re-export a model that needs its custom operator's library."""
    graph = helper.make_graph([helper.make_node("MyGelu", ["x"], ["y"], domain="com.acme")], "custom",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.acme", 1)])
    model.ir_version = 9
    path = tmp_path / "custom op.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(BenchError) as err:
        edgekd.bench([path], settings=FAST)
    assert err.value.what.startswith(f"host: custom op: onnxruntime could not load {path}"), err.value.what
    assert str(path) in err.value.why and "artifacts/" not in err.value.why
    assert err.value.fix.startswith("register the library that implements its custom operators")


def test_an_old_model_onnxruntime_runs_is_benched_though_the_checker_refuses_it():
    """onnxruntime's own mul_1.onnx (IR version 3) fails onnx.checker ("W in initializer but not in graph
    input") and was called no valid ONNX model, to be re-exported; the runtime that runs it is the judge."""
    import onnx
    from onnxruntime.datasets import get_example

    path = get_example("mul_1.onnx")
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(onnx.load(path))
    [result] = edgekd.bench([path], settings=BenchSettings(**{**FAST.__dict__, "batch_size": 3}))
    assert result.complete and result.latency_us["p50"] > 0


def test_each_input_of_a_two_input_model_can_be_fed(tmp_path):
    """inputs= fed the first input only: the second was missing and onnxruntime refused the run. A mapping now
    feeds the inputs it names, and one file feeds the first with the other made up at its batch."""
    path = _linear(tmp_path / "m.onnx", 4, second_input=True)
    np.save(tmp_path / "x3.npy", np.ones((3, 8), np.float32))
    np.save(tmp_path / "scale3.npy", np.full((3, 1), 2.0, np.float32))
    both = {"x": tmp_path / "x3.npy", "scale": tmp_path / "scale3.npy"}
    (fed,) = edgekd.bench([path], settings=FAST, inputs=both)
    assert [(i["name"], i["shape"]) for i in fed.inputs] == [("x", [3, 8]), ("scale", [3, 1])]
    (first,) = edgekd.bench([path], settings=FAST, inputs=tmp_path / "x3.npy", results_dir=tmp_path / "first")
    assert [(i["name"], i["shape"]) for i in first.inputs] == [("x", [3, 8]), ("scale", [3, 1])]
    with pytest.raises(BenchError) as err:
        edgekd.bench([path], settings=FAST, inputs={"x": tmp_path / "x3.npy", "scales": tmp_path / "scale3.npy"})
    assert err.value.what == "m has no input named 'scales'" and err.value.why == "its inputs are 'x', 'scale'"
    with pytest.raises(BenchError, match=r"the inputs\['scale'\] file .*missing.npy does not exist"):
        edgekd.bench([path], settings=FAST, inputs={"scale": tmp_path / "missing.npy"})


def test_the_cli_feeds_each_input_from_a_file(tmp_path):
    """`edgekd bench --input NAME=FILE.npy` (repeatable) times the model on the user's data; a mistake in the
    option is one clear error."""
    import json

    from test_cli_errors import assert_user_error, run_cli

    path = _linear(tmp_path / "m.onnx", 4, second_input=True)
    np.save(tmp_path / "x2.npy", np.ones((2, 8), np.float32))
    np.save(tmp_path / "scale2.npy", np.ones((2, 1), np.float32))
    fast = ["--rounds", "1", "--min-seconds", "0.05", "--history", str(tmp_path / "h.sqlite")]
    proc = run_cli(tmp_path, "bench", str(path), "--input", "x=x2.npy", "--input", "scale=scale2.npy", *fast)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "export" / "results" / "bench-m.json").read_text())
    assert [i["shape"] for i in result["inputs"]] == [[2, 8], [2, 1]]
    said = assert_user_error(run_cli(tmp_path, "bench", str(path), "--input", "x=x2.npy", "--input", "scale2.npy",
                                     *fast))
    assert "--input 'scale2.npy' is not NAME=FILE.npy" in said
    said = assert_user_error(run_cli(tmp_path, "bench", str(path), "--input", "size=x2.npy", *fast))
    assert "m has no input named 'size'" in said


def test_rounds_stopped_by_max_runs_before_min_seconds_are_told(tmp_path):
    """`--min-seconds 8` on a fast model ran about a second: each round stopped at max_runs calls, silently."""
    from conftest import NoteKeeper

    notes = NoteKeeper()
    settings = BenchSettings(warmup_runs=5, min_runs=10, max_runs=50, min_seconds=10.0, max_seconds=20.0, rounds=2)
    (result,) = edgekd.bench([_linear(tmp_path / "m.onnx", 4)], settings=settings, reporter=notes)
    assert result.latency_us["n"] == 100
    (said,) = [n for n in notes.notes if "max_runs" in n]
    assert said.startswith("m: 2 of 2 rounds stopped at max_runs (50 calls) after ") and "of the 5.00 s asked" in said
