"""Distillation mistakes through the real CLI: a clear block (error / why / fix), exit 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from test_cli_errors import TINY, assert_user_error, run_cli, write_recipe


def _recipe(tmp_path: Path, **distill) -> Path:
    recipe = yaml.safe_load(TINY)
    recipe["distill"].update(distill)
    return write_recipe(tmp_path, yaml.safe_dump(recipe))


def test_feature_path_that_does_not_exist(tmp_path: Path) -> None:
    path = _recipe(tmp_path, features=[{"loss": "hint", "student": "net.7", "teacher": "head.1"}])
    msg = assert_user_error(run_cli(tmp_path, "run", str(path)))
    assert "net.7" in msg and "student" in msg and "net.1" in msg  # names the bad path and valid ones
    assert "edgekd layers" in msg


def test_feature_loss_where_a_logit_loss_belongs(tmp_path: Path) -> None:
    msg = assert_user_error(run_cli(tmp_path, "run", str(_recipe(tmp_path, loss={"name": "hint"}))))
    assert "distill.loss.name" in msg and "logits losses: ce, dkd, kd" in msg


def test_blackbox_outputs_with_wrong_shape_or_nans(tmp_path: Path) -> None:
    outputs = tmp_path / "teacher.npy"
    np.save(outputs, np.zeros((5, 10), dtype=np.float32))
    path = _recipe(tmp_path, strategy="blackbox", blackbox={"source": str(outputs)})
    msg = assert_user_error(run_cli(tmp_path, "run", str(path)))
    assert "(5, 10)" in msg and "1257" in msg
    bad = np.zeros((1257, 10), dtype=np.float32)
    bad[7, 1] = np.inf
    np.save(outputs, bad)
    msg = assert_user_error(run_cli(tmp_path, "run", str(path)))
    assert "inf" in msg.lower()


def test_blackbox_outputs_that_do_not_exist_fail_at_load_before_the_teacher_trains(tmp_path: Path) -> None:
    """`edgekd run blackbox` in a folder without the demo: it trained the teacher first, then failed."""
    path = _recipe(tmp_path, strategy="blackbox", blackbox={"source": "export/demo/artifacts/teacher-onnx-fp32"})
    msg = assert_user_error(run_cli(tmp_path, "run", str(path)))
    assert "distill.blackbox.source: export/demo/artifacts/teacher-onnx-fp32 does not exist" in msg, msg
    assert "edgekd demo" in msg and not list(tmp_path.rglob("teacher.pt"))


def test_incompatible_teacher_and_student_output_sizes(tmp_path: Path) -> None:
    outputs = tmp_path / "teacher.npy"
    np.save(outputs, np.zeros((1257, 7), dtype=np.float32))  # a teacher of 7 classes for a 10-class student
    path = _recipe(tmp_path, strategy="blackbox", blackbox={"source": str(outputs)})
    msg = assert_user_error(run_cli(tmp_path, "run", str(path)))
    assert "have 7 columns, expected 10" in msg, msg


def test_teacher_of_generation_two_needs_allow_generation(tmp_path: Path) -> None:
    from edgekd.checkpoints import save_checkpoint
    from edgekd.models import create_model

    student = create_model("mlp", in_shape=(64,), num_classes=10, width=16)
    checkpoint = save_checkpoint(student, tmp_path / "gen2.pt", role="student", generation=2)
    recipe = yaml.safe_load(TINY)
    recipe["teacher"] = {"model": {"family": "mlp", "params": {"width": 16}}, "checkpoint": str(checkpoint)}
    path = write_recipe(tmp_path, yaml.safe_dump(recipe))
    msg = assert_user_error(run_cli(tmp_path, "run", str(path)))
    assert "generation 2" in msg and "--allow-generation" in msg
    allowed = run_cli(tmp_path, "run", str(path), "--allow-generation")
    assert allowed.returncode == 0, allowed.stderr
    said = " ".join((allowed.stdout + allowed.stderr).split())
    assert said.count("generation 2 teacher") == 1, said  # the plan check, the stage and a log line: three times


def test_layers_with_an_unknown_family(tmp_path: Path) -> None:
    msg = assert_user_error(run_cli(tmp_path, "layers", "cnn", "mlpp"))
    assert "unknown model family 'mlpp'" in msg


def _image_checkpoints(folder: Path) -> tuple[Path, Path]:
    """A tiny cnn teacher and mlp student checkpoint on digits, as an image run saves them (spec and data set)."""
    from edgekd.checkpoints import save_checkpoint
    from edgekd.data import load_data
    from edgekd.models import create_model

    splits = load_data("digits")
    saved = []
    for role, family, params in (("teacher", "cnn", {"width": 8, "depth": 2, "hidden": 32}),
                                 ("student", "mlp", {"width": 16, "depth": 1})):
        model = create_model(family, in_shape=splits.input_shape, num_classes=splits.num_classes, **params)
        saved.append(save_checkpoint(model, folder / f"{role}.pt", role=role, run="tiny", data={"name": "digits"}))
    return saved[0], saved[1]


def test_layers_of_a_text_student_family_says_text_models_have_no_layer_listing(tmp_path: Path) -> None:
    """It said "unknown model family 'text_transformer'", though that is a registered (text) student family."""
    for args, family in ((["cnn", "text_transformer"], "text_transformer"), (["text_bag", "mlp"], "text_bag")):
        msg = assert_user_error(run_cli(tmp_path, "layers", *args))
        assert f"{family} is a text student family: text models have no feature-KD layer listing" in msg, msg
        assert "unknown model family" not in msg and "cnn, mlp, tiny_cnn" in msg, msg


def test_layers_refuses_data_that_two_checkpoints_would_ignore(tmp_path: Path) -> None:
    """`--data nosuch` with two checkpoints exited 0, the option ignored in silence."""
    teacher, student = _image_checkpoints(tmp_path)
    msg = assert_user_error(run_cli(tmp_path, "layers", str(teacher), str(student), "--data", "nosuch"))
    assert "--data nosuch is not used: the teacher and the student are both checkpoints" in msg and \
           "leave --data out" in msg, msg
    listed = run_cli(tmp_path, "layers", str(teacher), str(student))  # without it, the two checkpoints' pairs
    assert listed.returncode == 0 and "head.1" in listed.stdout and "net.1" in listed.stdout, listed.stderr
    msg = assert_user_error(run_cli(tmp_path, "layers", str(teacher), "mlp", "--data", "nosuch"))  # sizes mlp
    assert "unknown data set 'nosuch'" in msg, msg


def test_layers_takes_a_family_name_over_a_folder_of_that_name(tmp_path: Path) -> None:
    """With a folder `cnn` in the current folder, `edgekd layers cnn mlp` said "checkpoint cnn is a directory";
    `./cnn` still names the folder."""
    (tmp_path / "cnn").mkdir()
    listed = run_cli(tmp_path, "layers", "cnn", "mlp")
    assert listed.returncode == 0 and "cnn → mlp" in listed.stdout, listed.stdout + listed.stderr
    msg = assert_user_error(run_cli(tmp_path, "layers", "./cnn", "mlp"))
    assert "checkpoint cnn is a directory" in msg, msg


def test_layers_sizes_a_family_as_the_checkpoint_beside_it(tmp_path: Path) -> None:
    """A checkpoint trained on 1×16×16 inputs beside `mlp`: the mlp was sized for digits (64 features) and the pairs
    were computed on an input the checkpoint's model never takes. A --data of another shape is refused."""
    from edgekd.checkpoints import save_checkpoint
    from edgekd.models import create_model

    model = create_model("cnn", in_shape=(1, 16, 16), num_classes=5, width=8, depth=2, hidden=32)
    teacher = save_checkpoint(model, tmp_path / "teacher.pt", role="teacher", run="big", data={"name": "mine"})
    listed = run_cli(tmp_path, "layers", str(teacher), "mlp")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "net.1" in listed.stdout and "head.1" in listed.stdout, listed.stdout
    msg = assert_user_error(run_cli(tmp_path, "layers", str(teacher), "mlp", "--data", "digits"))
    assert "--data digits has inputs of shape [64]; the checkpoint's model takes [1, 16, 16]" in msg, msg
