"""A wrong file given as a checkpoint is named for what it is, with a fix; never torch's advice to load unsafely.

Real files in tmp_path, real torch and onnx: no mocks. Each case goes through `read_checkpoint`, the function that
`edgekd export`, `edgekd layers` and a recipe's teacher.checkpoint all load through.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from edgekd.checkpoints import CHECKPOINT_FORMAT, read_checkpoint, save_checkpoint
from edgekd.errors import CheckpointError

UNSAFE_ADVICE = "weights_only set to False"


class CustomObject:
    """A class of this module: torch.load(weights_only=True) refuses to unpickle it."""

    def __init__(self) -> None:
        self.payload = [1, 2, 3]


def _refused(path: Path) -> str:
    """The CheckpointError text for `path`, checked never to invite an unsafe load."""
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    text = str(info.value)
    assert UNSAFE_ADVICE not in text and "weights_only=False" not in text, text
    assert info.value.fix, text
    return text


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "teacher.pt"
    path.write_bytes(b"")
    text = _refused(path)
    assert f"checkpoint {path} is empty (0 bytes)" in text
    assert "EOFError" not in text


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "teacher.pt"
    path.write_bytes(b"\x00" + random.Random(0).randbytes(4095))
    text = _refused(path)
    assert f"{path} is not a PyTorch checkpoint" in text
    assert "list index out of range" not in text
    assert "<run>/checkpoints/*.pt" in text


def test_onnx_model(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", io[:1], io[1:])
    path = tmp_path / "student.onnx"
    onnx.save(helper.make_model(graph), str(path))
    text = _refused(path)
    assert "is not a PyTorch checkpoint (it looks like an ONNX model)" in text
    assert "edgekd bench" in text and "black-box" in text


def test_onnx_model_without_its_suffix_is_still_recognised(tmp_path: Path) -> None:
    import torch

    path = tmp_path / "student.pt"
    torch.onnx.export(torch.nn.Linear(3, 2), (torch.zeros(1, 3),), str(path), dynamo=False)
    assert "it looks like an ONNX model" in _refused(path)


def test_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("name: tiny\ndata: {name: digits}\n")
    text = _refused(path)
    assert "is not a PyTorch checkpoint (it looks like a YAML file)" in text
    assert "edgekd run RECIPE" in text


@pytest.mark.parametrize("inside", [[], ["checkpoints/teacher.pt", "checkpoints/student.pt"]])
def test_directory(tmp_path: Path, inside: list[str]) -> None:
    import torch

    folder = tmp_path / "run"
    folder.mkdir()
    for name in inside:
        (folder / name).parent.mkdir(exist_ok=True)
        torch.save({"w": torch.zeros(2)}, folder / name)
    text = _refused(folder)
    assert f"checkpoint {folder} is a directory, not a file" in text
    assert "not found" not in text
    if inside:
        assert str(folder / "checkpoints" / "student.pt") in text and str(folder / "checkpoints" / "teacher.pt") in text
    else:
        assert "no *.pt files" in text


def test_pickled_custom_class(tmp_path: Path) -> None:
    import torch

    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(3), "extra": CustomObject()}, path)
    text = _refused(path)
    assert f"cannot load checkpoint {path}" in text
    assert "CustomObject" in text
    assert "edgekd loads weights only, for safety" in text
    assert "without custom classes" in text


def test_missing_path_fix_fits_command_line_and_recipe(tmp_path: Path) -> None:
    text = _refused(tmp_path / "nope.pt")
    assert "checkpoint not found" in text
    assert "command line" in text and "teacher.checkpoint" in text


def _incomplete(tmp_path: Path) -> Path:
    """An edgekd-format checkpoint whose spec lacks in_shape and num_classes."""
    import torch

    from edgekd.models import create_model

    model = create_model("mlp", in_shape=(64,), num_classes=10, width=16, depth=1)
    path = tmp_path / "student.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "spec": {"family": "mlp", "params": {"width": 16, "depth": 1}},
                "state_dict": model.state_dict(), "meta": {"role": "student", "data": {"name": "digits"}}}, path)
    return path


def test_incomplete_spec_names_the_missing_keys(tmp_path: Path) -> None:
    text = _refused(_incomplete(tmp_path))
    assert "incomplete spec (missing in_shape, num_classes)" in text


def test_incomplete_spec_is_refused_by_export_and_layers(tmp_path: Path) -> None:
    from edgekd.exporter import export_checkpoint
    from edgekd.models import model_from_name_or_checkpoint

    path = _incomplete(tmp_path)
    with pytest.raises(CheckpointError, match="missing in_shape"):
        export_checkpoint(path, tmp_path / "artifacts", precisions=["fp32"])
    with pytest.raises(CheckpointError, match="missing in_shape"):
        model_from_name_or_checkpoint(str(path), data="digits", role="student")


@pytest.mark.parametrize("key, value, rule", [
    ("in_shape", "abc", "in_shape must be a list of positive integers"),  # was a TypeError: an internal error
    ("in_shape", [0], "in_shape must be a list of positive integers"),
    ("num_classes", 0, "num_classes must be a positive integer"),  # was torch's zero-element warning, then a
    ("num_classes", True, "num_classes must be a positive integer"),  # misleading "does not fit the model"
    ("params", [16], "params must be a mapping"),
    ("family", 7, "family must be a model family name"),
])
def test_a_spec_that_cannot_build_a_model_names_the_key(tmp_path: Path, key: str, value, rule: str) -> None:
    import torch

    from edgekd.models import create_model, model_from_name_or_checkpoint

    model = create_model("mlp", in_shape=(64,), num_classes=10, width=16, depth=1)
    path = save_checkpoint(model, tmp_path / "student.pt", role="student", data={"name": "digits"})
    payload = torch.load(path, weights_only=True)
    payload["spec"][key] = value
    torch.save(payload, path)
    text = _refused(path)
    assert f"checkpoint {path} has an invalid spec: {rule}" in text and f"correct spec.{key}" in text, text
    with pytest.raises(CheckpointError, match="invalid spec"):  # what `edgekd layers` loads through
        model_from_name_or_checkpoint(str(path), data="digits", role="student")


def test_a_checkpoint_of_another_edgekd_format_says_so(tmp_path: Path) -> None:
    """It said "holds no state dict; it holds a dict"."""
    import torch

    path = tmp_path / "student.pt"
    torch.save({"format": "edgekd.checkpoint/2", "state_dict": {}, "spec": None}, path)
    text = _refused(path)
    assert "is an edgekd checkpoint of another format (edgekd.checkpoint/2)" in text
    assert "edgekd.checkpoint/1" in text and "holds no state dict" not in text


def test_good_checkpoints_still_load(tmp_path: Path) -> None:
    import torch

    from edgekd.models import create_model

    model = create_model("mlp", in_shape=(64,), num_classes=10, width=16, depth=1)
    saved = read_checkpoint(save_checkpoint(model, tmp_path / "student.pt", role="student"))
    assert saved["spec"]["in_shape"] == [64]
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    assert read_checkpoint(tmp_path / "plain.pt")["format"] == "state_dict"


def test_cli_export_of_empty_file_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "empty.pt").write_bytes(b"")
    env = {**os.environ, "COLUMNS": "400"}
    proc = subprocess.run([sys.executable, "-m", "edgekd.cli", "export", "empty.pt", "--output-dir", "out",
                           "--precision", "fp32"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    both = proc.stdout + proc.stderr
    assert proc.returncode == 2, both
    assert "Traceback" not in both, both
    assert "is empty (0 bytes)" in proc.stderr
    assert UNSAFE_ADVICE not in both


def test_export_of_a_users_own_state_dict_says_what_works(tmp_path: Path) -> None:
    """A pickled model was told to give a state dict, and the state dict was told to "export from a run": a
    circle for a model of one's own. Both now name what works (torch.onnx.export, then edgekd bench)."""
    import subprocess
    import sys

    import torch

    path = tmp_path / "mine.pt"
    torch.save(torch.nn.Linear(4, 2).state_dict(), path)
    proc = subprocess.run([sys.executable, "-m", "edgekd.cli", "export", str(path), "--output-dir", str(tmp_path)],
                          capture_output=True, text=True)
    text = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "does not record its architecture" in text, proc.stderr
    assert "torch.onnx.export" in text and "edgekd bench MODEL.onnx" in text and "export from a run" not in text
    torch.save({"weight": torch.zeros(3), "extra": CustomObject()}, path)
    assert "edgekd bench MODEL.onnx" in _refused(path)
