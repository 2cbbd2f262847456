"""Every distillation strategy end to end on tiny models: from a recipe, through training, to an
exported ONNX student that passes parity; plus the lineage guard and bad inputs."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml

import edgekd
from edgekd.errors import FeatureError, LineageError, RecipeError, TeacherOutputError

from edgekd.recipe import builtin_recipe_path

TINY = yaml.safe_load((Path(__file__).parent / "recipes" / "tiny.yaml").read_text())
EXAMPLES = ["kd_hint", "kd_attention", "kd_relation", "kd_dkd", "ensemble", "progressive", "self_born_again",
            "self_deep_supervision", "mutual", "blackbox"]


@pytest.fixture(scope="session")
def demo_teacher(tmp_path_factory) -> Path:
    """The demo's teacher architecture, briefly trained (the example recipes name its layers)."""
    from edgekd.checkpoints import save_checkpoint
    from edgekd.data import load_data
    from edgekd.distill.losses import LOSSES
    from edgekd.distill.trainer import fit
    from edgekd.models import create_model

    demo = yaml.safe_load(builtin_recipe_path("demo").read_text())
    splits = load_data("digits", label_fraction=0.1)
    model = create_model("cnn", in_shape=splits.input_shape, num_classes=10, **demo["teacher"]["model"]["params"])
    fit(model, splits.x_train, splits.y_train, loss_fn=LOSSES["ce"], steps=60, batch_size=64, lr=3e-3,
        weight_decay=1e-4, seed=0)
    return save_checkpoint(model, tmp_path_factory.mktemp("teacher") / "teacher.pt", role="teacher", generation=0)


def _shrink(r: dict, name: str, teacher: Path | str) -> dict:
    """A recipe cut to test size: the given teacher, a short budget, ONNX FP32 export, no bench or scratch."""
    r = copy.deepcopy(r)
    r["name"] = name
    r["teacher"]["checkpoint"] = str(teacher)
    r["teacher"]["train"] = {"epochs": 2}  # ensemble members train like the teacher
    r.setdefault("distill", {})["train"] = {"epochs": 10}  # training steps are cheap; exports dominate
    r["export"] = {"formats": ["onnx"], "targets": {"teacher": [], "student": ["fp32"], "scratch": []},
                   "parity": {"min_agreement": 0.99}}
    r["scratch"] = {"enabled": False}
    r["bench"] = {"enabled": False}
    return r


def _recipe(tiny_run, name: str, distill: dict, *, teacher_checkpoint=None) -> dict:
    """The tiny recipe with the tiny run's trained teacher (or `teacher_checkpoint`), cut to test size."""
    r = _shrink(TINY, name, teacher_checkpoint or tiny_run.rundir.checkpoints / "teacher.pt")
    r["distill"].update(distill)
    return r


def _run(recipe: dict, out: Path):
    return edgekd.run(edgekd.load_recipe(recipe), output_dir=out)


def _student_metrics(result) -> dict:
    return result.rundir.load_manifest()["stages"]["distill"]["metrics"]


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_recipe_trains_and_exports(example, demo_teacher, tiny_run, tmp_path):
    """Each family's example recipe (edgekd/recipes/), cut to test size, trains and exports a verified student."""
    recipe = _shrink(yaml.safe_load(builtin_recipe_path(example).read_text()), f"x-{example}", demo_teacher)
    if example == "blackbox":  # the example reads the demo's teacher artifact; use the tiny run's
        recipe["distill"]["blackbox"]["source"] = str(tiny_run.rundir.artifacts / "teacher-onnx-fp32")
    result = _run(recipe, tmp_path)
    metrics = _student_metrics(result)
    assert metrics["strategy"] == recipe["distill"].get("strategy", "standard")
    assert metrics["test_accuracy"] > 0.25, metrics  # learned something in a few epochs (chance is 0.1)
    [artifact] = [a for a in result.artifacts if a.role == "student"]
    assert artifact.parity.passed and artifact.parity.agreement >= 0.99
    assert artifact.lineage["generation"] == metrics["generation"]


def test_born_again_generations_and_lineage(tiny_run, tmp_path):
    result = _run(_recipe(tiny_run, "ban", {"strategy": "self", "self_distill": {"generations": 2}}), tmp_path)
    details = result.rundir.load_manifest()["stages"]["distill"]["details"]
    assert [g["generation"] for g in details["generations"]] == [0, 1, 2]
    assert _student_metrics(result)["generation"] == 2


def test_teacher_of_generation_two_needs_allow_generation(tiny_run, tmp_path):
    born_again = _run(_recipe(tiny_run, "gen2", {"strategy": "self", "self_distill": {"generations": 2}}), tmp_path)
    gen2 = born_again.rundir.checkpoints / "student.pt"
    recipe = _recipe(tiny_run, "from-gen2", {}, teacher_checkpoint=gen2)
    recipe["teacher"]["model"] = TINY["student"]["model"]
    with pytest.raises(LineageError, match="generation 2"):
        _run(recipe, tmp_path)
    recipe["distill"]["allow_generation"] = True
    result = _run(recipe, tmp_path)
    metrics = _student_metrics(result)
    assert metrics["generation"] == 3 and "generation 2" in metrics["generation_warning"]


def test_blackbox_from_an_onnx_artifact_and_from_a_file(tiny_run, tmp_path):
    teacher_dir = next(p.parent for p in tiny_run.rundir.artifacts.glob("teacher-onnx-fp32/model.onnx"))
    result = _run(_recipe(tiny_run, "bb", {"strategy": "blackbox", "blackbox": {"source": str(teacher_dir)}}), tmp_path)
    assert _student_metrics(result)["test_accuracy"] > 0.5

    splits = edgekd.load_recipe(TINY)  # the same data split as the run
    from edgekd.data import load_data

    d = splits.data
    x_train = load_data(d.name, seed=d.seed, val_fraction=d.val_fraction, test_fraction=d.test_fraction,
                        label_fraction=d.label_fraction).x_train
    bad = tmp_path / "teacher.npy"
    np.save(bad, np.zeros((len(x_train) - 1, 10), dtype=np.float32))
    with pytest.raises(TeacherOutputError, match=str(len(x_train))):
        _run(_recipe(tiny_run, "bb-bad", {"strategy": "blackbox", "blackbox": {"source": str(bad)}}), tmp_path)
    nan = np.zeros((len(x_train), 10), dtype=np.float32)
    nan[3, 2] = np.nan
    np.save(bad, nan)
    with pytest.raises(TeacherOutputError, match="NaN"):
        _run(_recipe(tiny_run, "bb-nan", {"strategy": "blackbox", "blackbox": {"source": str(bad)}}), tmp_path)


def test_wrong_feature_path_lists_valid_ones(tiny_run, tmp_path):
    recipe = _recipe(tiny_run, "badpath", {"features": [{"loss": "hint", "student": "net.9", "teacher": "head.1"}]})
    with pytest.raises(FeatureError) as info:
        _run(recipe, tmp_path)
    assert "net.9" in str(info.value) and "net.1" in str(info.value)


def test_incompatible_teacher_and_student_outputs(tiny_run, tmp_path):
    """A teacher checkpoint with 7 outputs for a 10-class recipe: refused by name, before any distillation."""
    import torch

    from edgekd.models import create_model

    path = tmp_path / "seven.pt"
    torch.save(create_model("mlp", in_shape=(64,), num_classes=7, width=16).state_dict(), path)
    recipe = _recipe(tiny_run, "mismatch", {}, teacher_checkpoint=path)
    recipe["teacher"]["model"] = {"family": "mlp", "params": {"width": 16}}
    with pytest.raises(edgekd.errors.CheckpointError, match="does not fit"):
        _run(recipe, tmp_path)


def test_strategy_without_its_section_is_a_recipe_error():
    with pytest.raises(RecipeError, match="progressive.pairs"):
        edgekd.load_recipe({"distill": {"strategy": "progressive"}})


@pytest.mark.parametrize("example", ["progressive", "kd_hint"])
def test_a_teacher_handed_over_in_train_mode_is_left_as_it_was_trained(example, demo_teacher, tmp_path):
    """The hint stages, and the feature terms when the teacher's logits came from the cache, ran a teacher
    given in train mode as it was: its BatchNorm running statistics moved with every student batch, and its
    feature maps used batch statistics."""
    import torch

    from edgekd.checkpoints import load_weights
    from edgekd.distill.api import distill, load_splits, new_model

    r = yaml.safe_load(builtin_recipe_path(example).read_text())
    r["distill"]["train"]["epochs"] = 1
    recipe = edgekd.load_recipe(r)
    splits = load_splits(recipe)
    teacher = new_model(recipe, splits, "teacher")
    load_weights(teacher, demo_teacher, role="teacher")
    distill(recipe, splits, teacher=copy.deepcopy(teacher), cache_root=tmp_path)  # the next call's logits: a hit
    teacher.train()  # as a user's freshly trained model would be
    before = copy.deepcopy(teacher.state_dict())
    distill(recipe, splits, teacher=teacher, cache_root=tmp_path)
    changed = [k for k, v in teacher.state_dict().items() if not torch.equal(v, before[k])]
    assert changed == [] and not teacher.training


def test_progressive_stages_spend_the_whole_budget():
    """The hint stages' floor division left up to (stages - 1) steps of the scratch baseline's budget unspent."""
    from hypothesis import given, strategies as st

    from edgekd.distill.strategies import progressive_budgets

    @given(total=st.integers(1, 5000), fraction=st.floats(0.05, 0.95), stages=st.integers(1, 8))
    def check(total, fraction, stages):
        hints, final = progressive_budgets(total, fraction, stages)
        assert len(hints) == stages and min(hints) >= 1 and final >= 1
        assert max(hints) - min(hints) <= 1
        if total >= stages + max(1, round(total * fraction)):
            assert sum(hints) + final == total

    check()
    assert progressive_budgets(9, 0.25, 2) == ([4, 3], 2)  # was [3, 3] + 2 = 8
