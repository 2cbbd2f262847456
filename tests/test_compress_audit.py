"""Compression and quantization settings that were wrong or ignored in silence (an audit of edgekd/compress and the
ONNX INT8/INT4 paths), each on tiny real models and the real runtimes."""

from __future__ import annotations

import re

import pytest
import torch
import yaml

import edgekd
from edgekd.errors import RecipeError


@pytest.mark.parametrize("prune, said", [
    ({"method": "nm", "ratio": 0.75}, "ratio 0.75 is ignored by method nm"),
    ({"method": "unstructured", "max_parameters": 1000}, "max_parameters is a budget of structured pruning"),
    ({"method": "nm", "max_parameters": 1000}, "max_parameters is a budget of structured pruning"),
    ({"method": "structured", "ratio": 0.3, "max_parameters": 1000}, "ratio 0.3 and max_parameters are both given"),
    ({"method": "structured", "nm": [1, 4]}, "nm [1, 4] is read by method nm only"),
    ({"method": "unstructured", "round_to": 4}, "round_to rounds the channel counts of structured pruning"),
])
def test_a_prune_field_its_method_ignores_is_refused_when_the_recipe_loads(prune, said):
    """{method: nm, ratio: 0.75} pruned 2:4 (50%) and {method: unstructured, max_parameters: N} pruned half the
    weights whatever N: the compress stage read only the fields of its method, and said nothing."""
    with pytest.raises(RecipeError, match=re.escape(f"compress.prune: {said}")):
        edgekd.load_recipe({"name": "r", "compress": {"enabled": True, "prune": prune}})


def test_a_resolved_recipe_with_every_prune_field_still_loads(tmp_path):
    """A run's recipe.yaml holds every field at its value; the fields a method ignores are at their defaults."""
    for prune in ({"method": "nm", "nm": [1, 4]}, {"method": "unstructured", "ratio": 0.8},
                  {"method": "structured", "max_parameters": 5000, "round_to": 4}):
        recipe = edgekd.load_recipe({"name": "r", "compress": {"enabled": True, "prune": prune}})
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
        assert edgekd.load_recipe(path).compress.prune == recipe.compress.prune


@pytest.mark.parametrize("export, said", [
    ({"calibration_percentile": 99.9}, "calibration_percentile 99.9 is read by calibration_method: percentile only"),
    ({"formats": ["tflite"], "calibration_method": "entropy"}, "calibration_method: entropy is an ONNX setting"),
    ({"formats": ["tflite"], "int4": {"block_size": 64}}, "int4.block_size: 64 (TFLite's is int4.tflite_block_size)"),
    ({"formats": ["onnx"], "int4": {"tflite_block_size": 32}}, "int4.tflite_block_size: 32 is a TFLite setting"),
    ({"formats": ["tflite"], "int8_reduce_range": False}, "int8_reduce_range: false is an ONNX setting"),
])
def test_a_quantization_setting_no_exporter_reads_is_refused_when_the_recipe_loads(export, said):
    """calibration_percentile without calibration_method: percentile calibrated by minmax, and ONNX's INT4 block
    size in a TFLite-only run quantized per channel: both in silence."""
    with pytest.raises(RecipeError, match=re.escape(f"export: {said}")):
        edgekd.load_recipe({"name": "r", "export": export})


def test_the_quantization_settings_their_exporters_read_still_load(tmp_path):
    for export in ({"calibration_method": "percentile", "calibration_percentile": 99.9},
                   {"formats": ["onnx", "tflite"], "int4": {"block_size": 64, "tflite_block_size": 32}}):
        recipe = edgekd.load_recipe({"name": "r", "export": export})
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
        assert edgekd.load_recipe(path).export == recipe.export


@pytest.mark.parametrize("method", ["unstructured", "nm"])
def test_skipping_a_container_keeps_every_layer_inside_it_dense(method):
    """skip: [features] kept the cnn's convolutions whole in structured pruning but zeroed half their weights in
    unstructured and N:M pruning: only the container itself, which holds no weight, was left out."""
    import torch

    from edgekd.compress.prune import prune
    from edgekd.models import create_model

    torch.manual_seed(0)
    model = create_model("cnn", in_shape=(64,), num_classes=10, width=16, depth=2, hidden=64).eval()
    result = prune(model, (64,), method, 0.5, skip=["features"])
    weights = dict(model.named_parameters())
    assert not (weights["features.4.weight"] == 0).any() and not (weights["features.0.weight"] == 0).any()
    assert float((weights["head.1.weight"] == 0).float().mean()) == pytest.approx(0.5, abs=0.02)
    assert result.plan["sparsity"] == pytest.approx(0.5, abs=0.02)  # of the weights it prunes: head.1's


@pytest.mark.parametrize("budget", [0, -5, 100.5])
def test_a_budget_that_is_no_parameter_count_is_a_clear_error(budget):
    """prune_to_budget(max_parameters=0) raised ZeroDivisionError, -5 said it was "-122.00x the budget"."""
    from edgekd.compress.prune import prune_to_budget
    from edgekd.errors import CompressionError
    from edgekd.models import create_model

    model = create_model("mlp", in_shape=(64,), num_classes=10)
    said = f"a parameter budget must be a whole number ≥ 1, got {budget!r}"
    with pytest.raises(CompressionError, match=re.escape(said)):
        prune_to_budget(model, (64,), budget)


_QUANTIZE = """
import sys
import numpy as np
from pathlib import Path
from edgekd.export.onnx import quantize_static_int8
rows = int(sys.argv[3])
x = np.random.default_rng(0).random((rows, 16), dtype=np.float32)
quantize_static_int8(Path(sys.argv[1]), Path(sys.argv[2]), x, method="minmax")
"""


def _mlp_onnx(path) -> None:
    """A two-layer float MLP graph (input `x`, output `logits`), made with onnx.helper in no time."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(size=(16, 32)).astype(np.float32), rng.normal(size=(32, 10)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["logits"], name="mm2")], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def test_an_int8_calibration_killed_midway_leaves_nothing_the_next_export_keeps(tmp_path):
    """quantize_static calibrated in a TemporaryDirectory of its own (TMP/ort.quant.*): a SIGKILL during an INT8
    export's calibration left its augmented model there for good, although the README says the next export removes
    what a killed one left (edgekd's process_temp_dir folders)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    temp = tmp_path / "tmp"
    temp.mkdir()
    _mlp_onnx(tmp_path / "fp32.onnx")
    env = {**os.environ, "TMPDIR": str(temp), "PYTHONPATH": str(Path(edgekd.__file__).parent.parent)}
    run = [sys.executable, "-c", _QUANTIZE, str(tmp_path / "fp32.onnx"), str(tmp_path / "int8.onnx")]
    killed = subprocess.Popen([*run, "400000"], env=env)
    deadline = time.monotonic() + 60
    while not any(temp.rglob("augmented*.onnx")) and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, "the export ended before its calibration could be killed"
    subprocess.run([*run, "64"], env=env, check=True)
    assert (tmp_path / "int8.onnx").is_file()
    assert sorted(str(p.relative_to(temp)) for p in temp.rglob("*.onnx")) == []


def test_quantization_aware_distillation_without_steps_names_the_recipe_field():
    """Its fix named compress.qat, a recipe field that does not exist (QAT is export.qat)."""
    import numpy as np
    from torch import nn

    from edgekd.compress.qat import qat_distill
    from edgekd.errors import CompressionError

    x = np.zeros((4, 4), np.float32)
    with pytest.raises(CompressionError) as err:
        qat_distill(nn.Sequential(nn.Linear(4, 3)), np.zeros((4, 3), np.float32), x, np.zeros(4, np.int64), steps=0,
                    batch_size=2, lr=1e-3)
    assert "export.qat.epochs" in err.value.fix and "compress.qat" not in str(err.value)


def test_a_pruning_plan_that_does_not_fit_the_model_is_a_checkpoint_error():
    """A compressed.pt whose recorded plan names a layer the model lacks (edited, damaged) ended `edgekd export` as
    an internal error (AttributeError: 'Sequential' object has no attribute '9')."""
    from edgekd.compress.prune import rebuild
    from edgekd.errors import CheckpointError
    from edgekd.models import create_model

    model = create_model("mlp", in_shape=(64,), num_classes=10)
    with pytest.raises(CheckpointError, match="the pruning plan recorded with the checkpoint does not fit a MLP"):
        rebuild(model, (64,), {"method": "structured", "history": [["net.9", True, [0]]]})


def test_nm_sparsity_that_finds_no_group_is_a_clear_error():
    """2:128 on a 64-wide MLP zeroed nothing and the run reported "2:128 sparsity (0% of the prunable weights zero)"
    after recovering from a pruning that never happened; structured and unstructured pruning refuse to do nothing."""
    from edgekd.compress.prune import prune
    from edgekd.errors import CompressionError
    from edgekd.models import create_model

    model = create_model("mlp", in_shape=(64,), num_classes=10, width=64)
    with pytest.raises(CompressionError, match=re.escape("2:128 sparsity finds no group of 128 input channels in MLP")):
        prune(model, (64,), "nm", nm=(2, 128))
    assert prune(model, (64,), "nm", nm=(2, 64)).plan["sparsity"] == pytest.approx(31 / 32)


@pytest.mark.parametrize("prune, said", [
    ({"method": "nm", "nm": [2, 128]}, "2:128 sparsity finds no group of 128 input channels"),
    ({"method": "structured", "max_parameters": 100}, "a budget of 100 parameters cannot be met"),
])
def test_pruning_settings_that_cannot_work_are_found_on_a_fresh_model(prune, said):
    """What makes a pruning setting fail is the architecture, not the weights: an untrained model of the source's
    architecture says so before the teacher and the student train (the compress stage only runs after them)."""
    from edgekd.compress.recovery import check_pruning
    from edgekd.errors import CompressionError
    from edgekd.models import create_model

    recipe = edgekd.load_recipe({"name": "r", "compress": {"enabled": True, "prune": prune}})
    fresh = create_model("mlp", in_shape=(64,), num_classes=10, width=64, depth=2)
    weights = [p.detach().clone() for p in fresh.parameters()]
    with pytest.raises(CompressionError, match=re.escape(said)):
        check_pruning(fresh, (64,), recipe.compress.prune)
    check_pruning(fresh, (64,), edgekd.load_recipe({"name": "r", "compress": {"enabled": True}}).compress.prune)
    assert all(torch.equal(a, b) for a, b in zip(weights, fresh.parameters()))  # it prunes a copy


@pytest.mark.parametrize("machine, arch", [("armv6l", "arm32"), ("armv7l", "arm32"), ("armv7", "arm32"),
                                           ("armv8l", "arm32"), ("aarch64", "arm64"), ("arm64", "arm64")])
def test_a_32_bit_arm_board_is_arm32(machine, arch):
    """A Raspberry Pi Zero (armv6l) and 32-bit Linux on an ARMv8 CPU (armv8l) were called arm64."""
    from edgekd.compress.isa import cpu_int8_features

    assert cpu_int8_features("Features : half thumb fastmult vfp edsp java tls", machine)["arch"] == arch


def test_a_qat_artifact_that_beats_fp32_closes_the_whole_int8_gap_not_more(tmp_path):
    """QAT trains for export.qat.epochs more: a QAT artifact 4.8 points above FP32, where post-training INT8 lost
    0.37, was reported as closing "1400% of the INT8 gap"."""
    from types import SimpleNamespace

    from edgekd.compress.qat_fallback import QatDecision, _comparison
    from edgekd.data import load_data
    from edgekd.export.onnx import export_onnx
    from edgekd.models import create_model

    splits = load_data("digits")
    torch.manual_seed(0)
    model = create_model("mlp", in_shape=splits.input_shape, num_classes=10, width=16).eval()
    export_onnx(model, splits.input_shape, tmp_path / "model.onnx", opset=18)
    artifact = SimpleNamespace(path=tmp_path / "model.onnx", parity=SimpleNamespace(accuracy=0.7222))
    compared = _comparison(QatDecision(True, "asked", fp32_accuracy=0.6741, ptq_accuracy=0.6704), artifact, model,
                           splits)
    assert compared["gap_closed"] == 1.0 and compared["qat_loss_points"] == pytest.approx(-4.81)
    halfway = SimpleNamespace(path=artifact.path, parity=SimpleNamespace(accuracy=0.6704 + 0.00185))
    assert _comparison(QatDecision(True, "asked", 0.6741, 0.6704), halfway, model, splits)["gap_closed"] == \
        pytest.approx(0.5)


def test_unstructured_pruning_that_zeroes_a_whole_layer_is_a_clear_error():
    """At ratio 0.95 the global threshold was above every weight of a cnn's last conv (as initialised): the pruned
    model's output no longer depended on its input, recovery kept the zeros, and the run reported "95% zero"."""
    from edgekd.compress.prune import prune
    from edgekd.errors import CompressionError
    from edgekd.models import create_model

    torch.manual_seed(0)
    model = create_model("cnn", in_shape=(64,), num_classes=10, width=32, depth=3, hidden=128)
    with pytest.raises(CompressionError, match=re.escape("ratio 0.95 zeroes every weight of features.7.weight")):
        prune(model, (64,), "unstructured", 0.95)
    assert not any(bool((p == 0).any()) for p in model.parameters() if p.dim() > 1)  # refused before any change
    assert prune(model, (64,), "unstructured", 0.9).plan["sparsity"] == pytest.approx(0.9, abs=0.01)


class _Residual(torch.nn.Module):
    """x + branch(x): a branch zeroed whole leaves the output depending on the input."""

    def __init__(self) -> None:
        super().__init__()
        self.branch = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64))
        self.head = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x + self.branch(x))


def test_a_layer_zeroed_whole_on_a_residual_branch_is_allowed():
    from edgekd.compress.prune import prune

    torch.manual_seed(0)
    model = _Residual()
    with torch.no_grad():
        model.branch[2].weight.mul_(1e-3)  # far below the other layer's weights: the threshold empties it
    result = prune(model, (64,), "unstructured", 0.6)
    assert not bool((model.branch[2].weight != 0).any()) and result.plan["sparsity"] == pytest.approx(0.6, abs=0.01)


def test_a_run_refuses_an_impossible_pruning_before_any_training(tmp_path):
    """The plan check prunes an untrained copy: `nm: [2, 128]` on a 64-wide student failed only in the compress
    stage, after the teacher and the students had trained."""
    from edgekd.errors import CompressionError

    recipe = edgekd.load_recipe({"name": "r", "student": {"model": {"family": "mlp", "params": {"width": 64}}},
                                 "compress": {"enabled": True, "prune": {"method": "nm", "nm": [2, 128]}}})
    with pytest.raises(CompressionError, match="2:128 sparsity finds no group"):
        edgekd.run(recipe, output_dir=tmp_path)
    assert not list(tmp_path.rglob("*.pt"))
