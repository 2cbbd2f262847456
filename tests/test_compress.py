"""Pruning with torch-pruning on the real model families, KD recovery, the compress stage and its artifacts."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml
from torch import nn

import edgekd
from edgekd.compress.prune import count_parameters, prune, prune_to_budget, rebuild
from edgekd.errors import CompressionError, FeatureError, RecipeError
from edgekd.models import create_model

FAMILIES = [("cnn", {"width": 32, "depth": 3, "hidden": 128}), ("mlp", {"width": 64}), ("tiny_cnn", {"width": 8})]


def _model(family: str, params: dict) -> nn.Module:
    torch.manual_seed(0)
    return create_model(family, in_shape=(64,), num_classes=10, **params).eval()


@pytest.mark.parametrize("family,params", FAMILIES)
def test_structured_pruning_removes_channels_and_rebuilds(family, params):
    model = _model(family, params)
    result = prune(copy.deepcopy(model), (64,), "structured", 0.5)
    assert result.parameters_after < 0.6 * result.parameters_before
    for m in result.model.modules():  # hardware-friendly widths: multiples of 8 (the classifier keeps 10)
        if isinstance(m, nn.Conv2d):
            assert m.out_channels % 8 == 0
    x = torch.randn(5, 64)
    assert result.model(x).shape == (5, 10)
    fresh = rebuild(_model(family, params), (64,), result.plan)
    fresh.load_state_dict(result.model.state_dict())
    torch.testing.assert_close(fresh.eval()(x), result.model(x))


def test_unstructured_and_nm_zero_weights_without_changing_shapes():
    model = _model("mlp", {"width": 64})
    sparse = prune(copy.deepcopy(model), (64,), "unstructured", 0.75)
    assert sparse.parameters_after == sparse.parameters_before
    assert 0.74 <= sparse.plan["sparsity"] <= 0.76
    assert any("do not" in n or "latency" in n for n in sparse.notes)
    nm = prune(copy.deepcopy(model), (64,), "nm")
    hidden = nm.model.net[1].weight.reshape(64, -1, 4)
    assert bool(((hidden == 0).sum(-1) >= 2).all())  # every group of 4 inputs keeps at most 2


def test_nm_groups_a_conv_along_its_input_channels_at_each_kernel_position():
    from torch import nn

    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(8, 16, 3), nn.Flatten(), nn.Linear(16 * 4 * 4, 10))  # the classifier is skipped
    nm = prune(copy.deepcopy(conv), (8, 6, 6), "nm").model[0].weight  # (O, Cin, kh, kw)
    by_input_channel = nm.permute(0, 2, 3, 1).reshape(-1, 2, 4)  # sparse tensor cores' groups: 4 Cin in a row
    assert bool(((by_input_channel == 0).sum(-1) == 2).all())
    assert float((nm == 0).float().mean()) == 0.5


def test_budget_is_met_or_says_by_how_much():
    model = _model("cnn", {"width": 32, "depth": 3, "hidden": 128})
    fitted = prune_to_budget(copy.deepcopy(model), (64,), 60_000)
    assert fitted.parameters_after <= 60_000
    with pytest.raises(CompressionError, match=r"cannot be met.*over"):
        prune_to_budget(copy.deepcopy(model), (64,), 500)


def test_bad_ratio_unknown_layer_and_untraceable_model():
    model = _model("mlp", {"width": 64})
    for ratio in (0.0, 1.0, 1.5):
        with pytest.raises(CompressionError, match="outside"):
            prune(copy.deepcopy(model), (64,), "structured", ratio)
    with pytest.raises(FeatureError, match="net.1"):
        prune(copy.deepcopy(model), (64,), "structured", 0.5, skip=["net.9"])

    class LeavesAutograd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(64, 32), nn.Linear(32, 10)

        def forward(self, x):
            return self.b(torch.from_numpy(self.a(x).detach().numpy().copy()))

    with pytest.raises(CompressionError, match="no channels"):
        prune(LeavesAutograd(), (64,), "structured", 0.5)
    with pytest.raises(RecipeError, match="compress.prune.ratio"):
        edgekd.load_recipe({"compress": {"enabled": True, "prune": {"ratio": 1.2}}})


def test_compress_stage_prunes_recovers_and_exports_with_lineage(tiny_run, tmp_path):
    recipe = yaml.safe_load(open(tiny_run.rundir.recipe_path))
    recipe.update(name="compressed", output_dir=str(tmp_path))
    recipe["teacher"]["checkpoint"] = str(tiny_run.rundir.checkpoints / "teacher.pt")
    recipe["scratch"] = {"enabled": False}
    recipe["bench"]["enabled"] = False
    recipe["compress"] = {"enabled": True, "source": "student", "prune": {"method": "structured", "ratio": 0.5},
                          "recovery": {"epochs": 4}}
    recipe["export"]["formats"] = ["onnx"]
    recipe["export"]["targets"] = {"teacher": [], "student": ["fp32"], "scratch": [], "compressed": ["fp32", "int8_static"]}
    result = edgekd.run(edgekd.load_recipe(recipe))
    metrics = result.rundir.load_manifest()["stages"]["compress"]["metrics"]
    assert metrics["parameters_after"] < 0.6 * metrics["parameters_before"]
    assert "accuracy_after_prune" in metrics and "accuracy_after_recovery" in metrics
    arts = {a.name: a for a in result.artifacts}
    fp32, int8 = arts["compressed-onnx-fp32"], arts["compressed-onnx-int8_static"]
    assert fp32.parameters == metrics["parameters_after"]
    assert fp32.parity.passed and int8.parity is not None
    steps = fp32.lineage["steps"]
    assert steps[0] == "student checkpoint" and "structured pruning" in steps[1] and "KD recovery" in steps[2]
    assert fp32.size_bytes < 0.7 * arts["student-onnx-fp32"].size_bytes
    assert count_parameters(result.rundir and _reload(result)) == metrics["parameters_after"]


def _reload(result) -> nn.Module:
    from edgekd.pipeline import Context
    from edgekd.progress import SilentReporter

    return Context(recipe=result.recipe, rundir=result.rundir, reporter=SilentReporter()).trained("compressed")


def _widths(model: nn.Module) -> list[int]:
    return [m.out_channels if isinstance(m, nn.Conv2d) else m.out_features for m in model.modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_a_high_ratio_keeps_one_group_of_channels_in_every_layer():
    """torch-pruning rounds 32 · (1 − 0.9) kept channels down to zero, refuses that and leaves the layer whole:
    a 90% ratio must still prune every layer, down to one group of round_to, and more than 70% does."""
    model = _model("cnn", {"width": 32, "depth": 3, "hidden": 128})
    high = prune(copy.deepcopy(model), (64,), "structured", 0.9)
    assert _widths(high.model) == [8, 8, 8, 8, 10]
    assert high.parameters_after < prune(copy.deepcopy(model), (64,), "structured", 0.7).parameters_after
    mlp = _model("mlp", {"width": 32})
    assert _widths(prune(copy.deepcopy(mlp), (64,), "structured", 0.8).model) == [8, 10]
    # a budget just under the model's size is met (its grid tries 0.8 and 0.9, which used to remove nothing)
    fitted = prune_to_budget(copy.deepcopy(mlp), (64,), int(0.97 * count_parameters(mlp)))
    assert fitted.parameters_after <= 0.97 * count_parameters(mlp) and _widths(fitted.model) == [24, 10]


def test_the_pruning_step_reports_what_was_removed_not_what_was_asked():
    """Rounding to groups of 8 makes a 10% ratio remove a third of tiny_cnn's channels (8 + 16 → 8 + 8), and N:M
    leaves a first conv with one input channel dense: the lineage and metrics say the measured share."""
    from edgekd.compress.recovery import compress_and_recover
    from edgekd.data import load_data

    s = load_data("digits")
    torch.manual_seed(0)
    model = create_model("tiny_cnn", in_shape=s.input_shape, num_classes=10).eval()
    for prune_cfg, step, measured in [
            ({"method": "structured", "ratio": 0.1}, "structured pruning 10% of channels (multiples of 8; 33% removed)",
             ("channels_removed", 8 / 24)),
            ({"method": "nm"}, "2:4 sparsity (", ("sparsity", 0.5 * 16 * 8 * 9 / (8 * 9 + 16 * 8 * 9)))]:
        recipe = edgekd.load_recipe({"compress": {"enabled": True, "prune": prune_cfg, "recovery": {"epochs": 0}}})
        outcome = compress_and_recover(recipe, s, model, model)
        assert outcome.steps[1].startswith(step)
        key, value = measured
        assert outcome.metrics[key] == pytest.approx(value) and outcome.plan[key] == pytest.approx(value)


class _HeadDefinedFirst(nn.Module):
    """A model whose classifier is defined before its body: the last Linear defined is not the one that runs last."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(32, 10)
        self.body = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@pytest.mark.parametrize("method", ["structured", "unstructured", "nm"])
def test_the_classifier_is_the_layer_the_forward_runs_last(method):
    torch.manual_seed(0)
    result = prune(_HeadDefinedFirst().eval(), (64,), method, 0.5)
    assert result.model(torch.randn(3, 64)).shape == (3, 10)  # every class kept
    assert bool((result.model.head.weight != 0).all())  # and its weights are not pruned


@pytest.mark.parametrize("method", ["unstructured", "nm"])
def test_nothing_left_to_zero_is_a_clear_error(method):
    with pytest.raises(CompressionError, match="no weights to prune"):  # was a ValueError / ZeroDivisionError
        prune(_model("mlp", {"width": 32}), (64,), method, 0.5, skip=["net.1"])


@pytest.mark.parametrize("source, recovery_teacher, epochs, generation", [
    ("teacher", "teacher", 2, 1),        # a pruned teacher distilled from the teacher is a distilled model
    ("teacher", "teacher", 0, 0),        # pruned only: still trained on data
    ("student", "teacher", 2, 1),        # the student is generation 1 already
    ("student", "uncompressed", 2, 2),   # recovered from itself: a distilled student's student
])
def test_the_compressed_models_generation_follows_its_recovery_teacher(tiny_run, source, recovery_teacher, epochs,
                                                                       generation):
    from types import SimpleNamespace

    from edgekd.stages import compressed_generation

    recipe = tiny_run.recipe.model_copy(deep=True)
    recipe.compress.source, recipe.compress.recovery.teacher = source, recovery_teacher
    recipe.compress.recovery.epochs = epochs
    assert compressed_generation(SimpleNamespace(recipe=recipe, rundir=tiny_run.rundir)) == generation


def test_a_blackbox_run_recovers_from_the_blackbox_outputs_not_the_teacher_it_trains(tiny_run, tmp_path):
    """The student of a black-box run learned from the black-box outputs; KD recovery from "the teacher" must use
    them too (and count their generation), not the teacher the run trains for comparison, which it never saw."""
    import numpy as np

    from edgekd.compress.recovery import compress_and_recover, recovery_logits
    from edgekd.distill.api import load_splits, transfer_set

    recipe = tiny_run.recipe.model_copy(deep=True)
    splits = load_splits(recipe)
    # outputs no trained teacher would give: a fixed random class per training sample
    outputs = np.random.default_rng(0).normal(size=(len(splits.x_train), splits.num_classes)).astype(np.float32)
    np.save(tmp_path / "outputs.npy", outputs)
    recipe.distill.blackbox.source = str(tmp_path / "outputs.npy")
    recipe.distill.strategy = "blackbox"
    recipe.compress.enabled, recipe.compress.recovery.epochs = True, 1
    x, _, rows = transfer_set(recipe, splits)
    np.testing.assert_array_equal(recovery_logits(recipe, splits, None, x, rows), outputs[rows])
    outcome = compress_and_recover(recipe, splits, tiny_run_model(tiny_run, "student"), None)
    assert "black-box teacher's outputs" in outcome.steps[-1]


def tiny_run_model(run, role: str) -> nn.Module:
    from edgekd.pipeline import Context
    from edgekd.progress import SilentReporter

    return Context(recipe=run.recipe, rundir=run.rundir, reporter=SilentReporter()).trained(role)
