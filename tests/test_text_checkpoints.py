"""A text run's checkpoints given to `edgekd export` and `edgekd layers`: both called them bare state dicts, not
written by a run (they record no spec), which sent the user looking for another file. Against a real reduced text
run (all-MiniLM-L6-v2 teacher, tiny transformer student, ONNX FP32 of the student alone, no bench)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_cli_errors import assert_user_error, run_cli  # noqa: E402

TEXT_RECIPE = Path(__file__).parent / "recipes" / "text_tiny.yaml"
_LEAN = {"formats: [onnx, tflite]": "formats: [onnx]", "teacher: [fp32]": "teacher: []",
         "student: [fp32, int8_dynamic, int4]": "student: [fp32]", "scratch: [fp32]": "scratch: []"}


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of text_tiny.yaml with the fewest exports and no bench (about 25 s)."""
    import yaml

    import edgekd

    folder = tmp_path_factory.mktemp("text-checkpoints")
    text = TEXT_RECIPE.read_text()
    for old, new in _LEAN.items():
        assert old in text, f"{old!r} is not in {TEXT_RECIPE}"
        text = text.replace(old, new)
    recipe = yaml.safe_load(text)
    recipe["bench"] = {"enabled": False}
    result = edgekd.run(edgekd.load_recipe(recipe), output_dir=folder / "out")
    return result.rundir.root


@pytest.mark.parametrize("role", ["teacher", "student", "scratch"])
def test_export_of_a_text_runs_checkpoint_says_its_run_exports_it(text_run: Path, tmp_path: Path, role: str) -> None:
    checkpoint = text_run / "checkpoints" / f"{role}.pt"
    said = assert_user_error(run_cli(tmp_path, "export", str(checkpoint), "--output-dir", "arts"))
    assert f"is the {role} checkpoint of the text run text-tiny: edgekd export takes the checkpoints of image runs" \
        in said, said
    assert "edgekd run RECIPE --force export" in said and str(text_run / "recipe.yaml") in said, said
    assert "bare state dict" not in said and "does not record" not in said, said
    assert not (tmp_path / "arts").exists()  # refused before the output folder is made
    import edgekd
    from edgekd.errors import CheckpointError

    with pytest.raises(CheckpointError, match="edgekd export takes the checkpoints of image runs"):
        edgekd.export(checkpoint, tmp_path / "api")  # the Python API says it too (it said "bare state dict")
    assert not (tmp_path / "api").exists()


def test_layers_of_text_runs_checkpoints_says_text_models_have_no_layer_listing(text_run: Path,
                                                                               tmp_path: Path) -> None:
    checkpoints = text_run / "checkpoints"
    for args in ([str(checkpoints / "teacher.pt"), str(checkpoints / "student.pt")],
                 ["cnn", str(checkpoints / "scratch.pt")]):
        said = assert_user_error(run_cli(tmp_path, "layers", *args))
        assert "checkpoint of the text run text-tiny: text models have no feature-KD layer listing" in said, said
        assert "plain state dict" not in said and "distill.text" in said, said


def test_export_help_says_it_takes_image_runs_checkpoints(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "export", "--help")
    said = " ".join(proc.stdout.replace("│", " ").split())
    assert proc.returncode == 0 and "a checkpoint of an image run" in said, proc.stdout
    assert "a text run exports its own: edgekd run RECIPE --force export" in said, proc.stdout


def test_an_image_runs_checkpoint_is_not_taken_for_a_text_one(tmp_path: Path) -> None:
    """Only a text run's meta (the teacher's hf_folder, a text student family) marks one: a bare state dict and an
    image model's checkpoint are not."""
    import torch

    from edgekd.checkpoints import read_checkpoint, save_checkpoint, text_run_role
    from edgekd.models import create_model

    model = create_model("mlp", in_shape=(1, 8, 8), num_classes=10, width=16, depth=1)
    image = save_checkpoint(model, tmp_path / "student.pt", role="student", run="tiny", data={"name": "digits"})
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    assert text_run_role(read_checkpoint(image)) is None
    assert text_run_role(read_checkpoint(tmp_path / "bare.pt")) is None
