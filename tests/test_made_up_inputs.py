"""Timing data for inputs nobody gave (a bare model file): token ids and masks that are not all padding, 8-bit
images over their range. rng.random cast to int64 made every id and mask 0, so a model that skips padding (as
unpadded transformer exports do) was timed on empty sentences, 100x too fast."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper


def _token_model(path):
    """ids [1, seq] int64, mask [1, seq] int64, image [1, 4] uint8, flag [1] bool -> the count of kept tokens."""
    nodes = [helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["m"], ["kept"], keepdims=0)]
    return _save(path, helper.make_graph(nodes, "tokens", [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, "seq"]),
        helper.make_tensor_value_info("pixels", TensorProto.UINT8, [1, 4]),
        helper.make_tensor_value_info("flag", TensorProto.BOOL, [1])],
        [helper.make_tensor_value_info("kept", TensorProto.FLOAT, [])]))


def _save(path, graph):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    path.write_bytes(model.SerializeToString())
    return path


def test_made_up_integer_inputs_are_not_all_padding(tmp_path):
    from edgekd.bench.harness import _describe_bare_file, _synthetic_inputs

    artifact = _describe_bare_file(_token_model(tmp_path / "tokens.onnx"))
    feeds = {name: np.load(path) for name, path in
             _synthetic_inputs(artifact, 1, tmp_path, dims={"seq": 128}).items()}
    assert feeds["input_ids"].shape == (1, 128) and (feeds["input_ids"] == 1).all()  # a valid id, never pad 0
    assert (feeds["attention_mask"] == 1).all() and feeds["flag"].all()
    assert feeds["pixels"].dtype == np.uint8 and len(np.unique(feeds["pixels"])) > 1


def test_a_model_fed_made_up_ids_sees_every_token(tmp_path):
    """onnxruntime runs the model on them: all 128 positions are kept (it counted 0 before)."""
    import onnxruntime as ort

    from edgekd.bench.harness import _describe_bare_file, _synthetic_inputs

    path = _token_model(tmp_path / "tokens.onnx")
    feeds = {name: np.load(p) for name, p in _synthetic_inputs(_describe_bare_file(path), 1, tmp_path,
                                                               dims={"seq": 128}).items()}
    assert ort.InferenceSession(str(path)).run(None, feeds)[0] == 128


def _unnamed_dims_model(path):
    """x [?, ?] float with neither dimension named (no dim_param, as hand-built and older exports have) -> sum."""
    return _save(path, helper.make_graph([helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0)], "unnamed",
                                         [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None])],
                                         [helper.make_tensor_value_info("total", TensorProto.FLOAT, [])]))


def test_an_unnamed_dynamic_dimension_is_sized_by_its_position(tmp_path):
    """A dimension without a name could not be given a size: the warning told to use --dim NAME=SIZE, and it has
    no name. It now says --dim x:1=SIZE, and that sizes it, on the real runner."""
    from conftest import NoteKeeper

    from edgekd.bench.harness import BenchSettings, bench

    path = _unnamed_dims_model(tmp_path / "unnamed.onnx")
    fast = {"rounds": 1, "min_seconds": 0.02, "min_runs": 5}
    notes = NoteKeeper()
    (guessed,) = bench([path], "host", settings=BenchSettings(**fast), reporter=notes)
    assert guessed.inputs[0]["shape"] == [1, 1]
    assert any("dimension 1 (unnamed) of input 'x' (--dim x:1=SIZE) is dynamic" in n for n in notes.notes), notes.notes
    notes = NoteKeeper()
    (sized,) = bench([path], "host", settings=BenchSettings(**fast, dims={"x:1": 7}), reporter=notes)
    assert sized.inputs[0]["shape"] == [1, 7]
    assert not [n for n in notes.notes if "warning" in n], notes.notes


def test_the_batch_is_not_sized_by_position(tmp_path):
    import pytest

    from edgekd.bench.harness import BenchSettings, bench
    from edgekd.errors import BenchError

    with pytest.raises(BenchError) as err:
        bench([_unnamed_dims_model(tmp_path / "unnamed.onnx")], "host", settings=BenchSettings(dims={"x:0": 4}))
    assert err.value.what == "--dim x:0= sizes the batch of unnamed's input 'x'"
    assert "--batch-size" in err.value.fix
