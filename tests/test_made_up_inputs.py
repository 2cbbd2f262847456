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
    graph = helper.make_graph(nodes, "tokens", [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, "seq"]),
        helper.make_tensor_value_info("pixels", TensorProto.UINT8, [1, 4]),
        helper.make_tensor_value_info("flag", TensorProto.BOOL, [1])],
        [helper.make_tensor_value_info("kept", TensorProto.FLOAT, [])])
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
