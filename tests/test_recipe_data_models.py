"""Recipe validation, registries, the digits splits and the model families."""

from __future__ import annotations

import numpy as np
import pytest

from edgekd.data import DATASETS, labelled_mask, load_data
from edgekd.errors import RecipeError, RegistryError
from edgekd.models import MODELS, count_parameters, create_model
from edgekd.recipe import Recipe, builtin_recipes, load_recipe


def test_an_empty_recipe_is_valid_and_the_demo_loads():
    assert isinstance(load_recipe({}), Recipe)
    demo = load_recipe("demo")
    assert demo.name == "demo" and demo.data.label_fraction == 0.1 and "demo" in builtin_recipes()


@pytest.mark.parametrize("patch, message", [
    ({"distill": {"loss": {"temperature": -1}}}, "distill.loss.temperature: must be > 0, got -1"),
    ({"distill": {"loss": {"alpha": 1.5}}}, "distill.loss.alpha: must be <= 1, got 1.5"),
    ({"data": {"label_fraction": 0}}, "data.label_fraction: must be > 0, got 0"),
    ({"bench": {"threads": "two"}}, "bench.threads:"),
    ({"name": "a/b"}, "name: must be letters"),
    ({"export": {"targets": {"student": ["int3"]}}}, "export.targets.student.0: must be one of"),
])
def test_bad_fields_name_their_yaml_path(patch, message):
    with pytest.raises(RecipeError) as err:
        load_recipe(patch)
    assert message in err.value.what and err.value.fix


def test_unknown_names_list_the_known_ones():
    with pytest.raises(RecipeError) as err:
        load_recipe({"student": {"model": {"family": "resnet"}}})
    assert "student.model.family" in err.value.what and "cnn, mlp, tiny_cnn" in err.value.why
    with pytest.raises(RecipeError) as err:
        load_recipe({"student": {"model": {"family": "mlp", "params": {"widht": 3}}}})
    assert "student.model.params.widht" in err.value.what and "width" in err.value.why
    # a loss field lists only the losses it takes: setting distill.loss to a feature loss it listed would fail next
    with pytest.raises(RecipeError) as err:
        load_recipe({"distill": {"loss": {"name": "kld"}}})
    assert "distill.loss.name: unknown loss 'kld'" in err.value.what and err.value.why == "known logits losses: ce, dkd, kd"
    with pytest.raises(RecipeError) as err:
        load_recipe({"distill": {"features": [{"loss": "hnt", "student": "net.1", "teacher": "head.1"}]}})
    assert "hint" in err.value.why and "kd" not in err.value.why.split(": ")[1].split(", ")
    with pytest.raises(RegistryError) as err:
        DATASETS["mnist"]
    assert "digits" in err.value.why


def test_digits_splits_are_stratified_fixed_and_flat():
    a = load_data("digits", seed=0, label_fraction=0.1)
    b = load_data("digits", seed=0, label_fraction=0.1)
    assert (len(a.y_train), len(a.y_val), len(a.y_test)) == (1257, 270, 270)
    assert a.input_shape == (64,) and a.x_train.dtype == np.float32 and 0 <= a.x_train.min() <= a.x_train.max() <= 1
    assert a.fingerprint() == b.fingerprint()
    assert np.bincount(a.y_test).min() >= 26  # every class in the test split, in proportion
    labelled = a.y_train[a.labelled]
    assert 120 <= len(labelled) <= 132 and set(labelled) == set(range(10))


def test_labelled_mask_keeps_each_class_in_proportion():
    y = np.repeat(np.arange(4), [100, 50, 10, 1])
    mask = labelled_mask(y, 0.2, seed=3)
    assert [int(mask[y == c].sum()) for c in range(4)] == [20, 10, 2, 1]
    assert labelled_mask(y, 1.0, seed=0).all()


def test_model_families_build_and_report_sizes():
    import torch

    sizes = {}
    for family in MODELS.names():
        model = create_model(family, in_shape=(64,), num_classes=10)
        assert model(torch.zeros(3, 64)).shape == (3, 10)
        sizes[family] = count_parameters(model)
    assert sizes["cnn"] > 30 * sizes["mlp"]
    assert create_model("mlp", in_shape=(64,), num_classes=10, width=64).edgekd_spec["params"] == {"width": 64}
    with pytest.raises(RecipeError):
        create_model("cnn", in_shape=(63,), num_classes=10)
