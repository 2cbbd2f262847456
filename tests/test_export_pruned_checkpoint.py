"""`edgekd export <run>/checkpoints/compressed.pt`: a structurally pruned checkpoint records its pruning plan, and
export rebuilds the pruned shape from it before loading the weights (as the pipeline does), instead of refusing
the checkpoint as one 'saved from another architecture'."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

DATA = {"name": "digits", "seed": 0, "val_fraction": 0.15, "test_fraction": 0.15, "label_fraction": 0.1}


def _pruned_checkpoint(path: Path) -> int:
    """A digits MLP with half its hidden neurons removed, saved as the compress stage saves it; its parameters."""
    import torch

    from edgekd.checkpoints import save_checkpoint
    from edgekd.compress.prune import prune_structured
    from edgekd.models import create_model

    torch.manual_seed(0)
    model = create_model("mlp", in_shape=(64,), num_classes=10, width=64, depth=1)
    pruned = prune_structured(model, (64,), 0.5)
    save_checkpoint(pruned.model, path, role="compressed", run="r", data=DATA, architecture="student",
                    prune_plan=pruned.plan, steps=["student checkpoint", "structured pruning 50% of channels"],
                    generation=1)
    return pruned.parameters_after


def test_export_rebuilds_a_pruned_checkpoint(tmp_path: Path) -> None:
    from edgekd.exporter import export_checkpoint

    parameters = _pruned_checkpoint(tmp_path / "compressed.pt")
    (artifact,) = export_checkpoint(tmp_path / "compressed.pt", tmp_path / "out", precisions=["fp32"])
    assert artifact.name == "compressed-onnx-fp32" and artifact.parity.passed
    assert artifact.parameters == parameters < 64 * 64 + 64 + 64 * 10 + 10


def test_cli_exports_a_pruned_checkpoint(tmp_path: Path) -> None:
    _pruned_checkpoint(tmp_path / "compressed.pt")
    proc = subprocess.run([sys.executable, "-m", "edgekd.cli", "export", "compressed.pt", "--output-dir", "out",
                           "--precision", "fp32"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "compressed-onnx-fp32" / "model.onnx").is_file()


def test_layers_reads_a_pruned_checkpoint(tmp_path: Path) -> None:
    """`edgekd layers compressed.pt FAMILY` shows the pruned model's layers (32 hidden units left of 64)."""
    from edgekd.models import count_parameters, model_from_name_or_checkpoint

    parameters = _pruned_checkpoint(tmp_path / "compressed.pt")
    model = model_from_name_or_checkpoint(str(tmp_path / "compressed.pt"), data="digits", role="teacher")
    assert count_parameters(model) == parameters


def test_a_pruned_checkpoint_given_where_a_recipe_architecture_is_built_says_how_to_use_it(tmp_path: Path) -> None:
    """A pruned checkpoint as teacher.checkpoint does not fit the recipe's (unpruned) architecture; the fix named
    `teacher.model`, which cannot describe removed channels. It now says what can rebuild it, and the black-box
    route for distilling from it."""
    import pytest

    from edgekd.checkpoints import load_weights
    from edgekd.errors import CheckpointError
    from edgekd.models import create_model

    _pruned_checkpoint(tmp_path / "compressed.pt")
    unpruned = create_model("mlp", in_shape=(64,), num_classes=10, width=64, depth=1)
    with pytest.raises(CheckpointError, match="does not fit the teacher model") as caught:
        load_weights(unpruned, tmp_path / "compressed.pt", role="teacher")
    assert "structurally pruned" in caught.value.fix and "distill.blackbox.source" in caught.value.fix
    assert "teacher.model" not in caught.value.fix
    with pytest.raises(CheckpointError) as member:  # a role without a recipe field of its own
        load_weights(create_model("mlp", in_shape=(64,), num_classes=10, width=32, depth=1),
                     _unpruned_checkpoint(tmp_path / "unpruned.pt"),
                     role="ensemble member 1")
    assert "ensemble member 1.model" not in member.value.fix and "set the model" in member.value.fix


def _unpruned_checkpoint(path: Path) -> Path:
    from edgekd.checkpoints import save_checkpoint
    from edgekd.models import create_model

    save_checkpoint(create_model("mlp", in_shape=(64,), num_classes=10, width=64, depth=1), path, role="teacher")
    return path
