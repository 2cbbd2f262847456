"""Distillation audit (helper-distill): recipe values that trained wrongly or were ignored in silence, and
mistakes that failed only after the teacher had trained, or as an internal error. Each test fails without
its fix."""

from __future__ import annotations

import numpy as np
import pytest

from edgekd.errors import RecipeError


def _recipe(distill: dict, **extra) -> dict:
    return {"name": "audit", "seed": 0, "data": {"name": "digits"},
            "teacher": {"model": {"family": "cnn", "params": {"width": 8, "depth": 2, "hidden": 32}}},
            "student": {"model": {"family": "mlp", "params": {"width": 64}}}, "distill": distill, **extra}


def _load(distill: dict, **extra):
    from edgekd.recipe import load_recipe

    return load_recipe(_recipe(distill, **extra))


_FEATURE = {"loss": "rkd", "student": "net.1", "teacher": "head.1"}


# --------------------------------------------------------------------------- loss parameters


@pytest.mark.parametrize("loss, path, said", [
    # kd's params.alpha went around alpha's [0, 1] check: α = 5 trained the student to *raise* its label CE
    ({"name": "kd", "params": {"alpha": 5.0}}, "distill.loss.params.alpha", "distill.loss.alpha"),
    ({"name": "kd", "params": {"temperature": 0.0}}, "distill.loss.params.temperature", "distill.loss.temperature"),
    ({"name": "dkd", "params": {"temperature": -1.0}}, "distill.loss.params.temperature", "distill.loss.temperature"),
    ({"name": "dkd", "params": {"beta": -8.0}}, "distill.loss.params.beta", ">= 0"),
    ({"name": "dkd", "params": {"ce_weight": float("inf")}}, "distill.loss.params.ce_weight", "finite"),
    ({"name": "ce", "params": {"label_smoothing": 0.1}}, "distill.loss.params.label_smoothing", "no parameter"),
])
def test_a_loss_parameter_that_would_train_wrongly_or_be_ignored_fails_at_load(loss, path, said):
    with pytest.raises(RecipeError) as err:
        _load({"loss": loss})
    text = f"{err.value.what} {err.value.why} {err.value.fix}"
    assert path in text and said in text


@pytest.mark.parametrize("params", [{"angle_weight": -2.0}, {"distance_weight": float("nan")}])
def test_a_negative_or_non_finite_feature_loss_weight_fails_at_load(params):
    with pytest.raises(RecipeError, match=r"distill\.features\.0\.params\."):
        _load({"features": [{**_FEATURE, "params": params}]})


def test_loss_parameters_in_their_ranges_still_load():
    _load({"loss": {"name": "dkd", "temperature": 2.0, "params": {"alpha": 1.0, "beta": 8.0, "ce_weight": 0.0}}})
    _load({"loss": {"name": "kd", "temperature": 2.0, "alpha": 0.5},
           "features": [{**_FEATURE, "params": {"distance_weight": 25.0, "angle_weight": 0.0}}]})


def test_an_infinite_temperature_fails_at_load():
    """T = inf passed `> 0`; every step's loss was then 0 · inf = NaN, reported as a learning rate too high."""
    with pytest.raises(RecipeError, match=r"distill\.loss\.temperature"):
        _load({"loss": {"name": "kd", "temperature": float("inf")}})


# --------------------------------------------------------------------------- ensemble weights


@pytest.mark.parametrize("weights", [[-1.0, 2.0], [0.0, 0.0], [float("nan"), 1.0], [float("inf"), 1.0]])
def test_bad_ensemble_weights_fail_at_load_not_as_an_internal_error_after_the_teachers_train(weights):
    with pytest.raises(RecipeError, match=r"distill\.ensemble\.weights"):
        _load({"strategy": "ensemble", "ensemble": {"members": [{"model": {"family": "mlp"}}], "weights": weights}})


def test_ensemble_weights_with_a_zero_still_load():
    _load({"strategy": "ensemble", "ensemble": {"members": [{"model": {"family": "mlp"}}], "weights": [1.0, 0.0]}})


# --------------------------------------------------------------------------- settings the strategy would ignore


def test_feature_terms_with_a_black_box_teacher_fail_at_load_not_after_the_teacher_trains(tmp_path):
    source = tmp_path / "teacher.npy"
    np.save(source, np.zeros((1257, 10), np.float32))
    with pytest.raises(RecipeError, match="distill.features cannot be used with strategy 'blackbox'"):
        _load({"strategy": "blackbox", "blackbox": {"source": str(source)}, "features": [_FEATURE]})


_MEMBERS = {"members": [{"model": {"family": "mlp"}}]}


@pytest.mark.parametrize("distill, section", [
    ({"ensemble": _MEMBERS}, "distill.ensemble"),  # strategy: ensemble forgotten: one teacher, no word said
    ({"progressive": {"pairs": [["net.1", "head.1"]]}}, "distill.progressive"),
    ({"self_distill": {"generations": 3}}, "distill.self_distill"),
    ({"mutual": {"peers": 3}}, "distill.mutual"),
    ({"blackbox": {"source": "teacher.npy"}}, "distill.blackbox"),
    ({"strategy": "mutual", "ensemble": {"mode": "confidence"}}, "distill.ensemble"),
    ({"strategy": "self", "self_distill": {"heads": ["net.1"]}}, "distill.self_distill.heads"),
    ({"strategy": "self", "self_distill": {"mode": "deep_supervision", "heads": ["net.1"], "generations": 3}},
     "distill.self_distill.generations"),
])
def test_a_section_of_another_strategy_fails_at_load(distill, section):
    with pytest.raises(RecipeError) as err:
        _load(distill)
    assert section in err.value.what and "distill.strategy" in f"{err.value.what} {err.value.fix}"


def test_the_sections_of_the_chosen_strategy_still_load():
    _load({"strategy": "ensemble", "ensemble": _MEMBERS})
    _load({"strategy": "progressive", "progressive": {"pairs": [["net.1", "head.1"]], "final_fraction": 0.3}})
    _load({"strategy": "self", "self_distill": {"mode": "born_again", "generations": 3}})
    _load({"strategy": "self", "self_distill": {"mode": "deep_supervision", "heads": ["net.1"]}})
    _load({"strategy": "mutual", "mutual": {"peers": 3}})


@pytest.mark.parametrize("distill", [
    {"cache": False, "cache_topk": 3},  # the teacher's full logits trained: top-k is applied only when caching
    {"strategy": "mutual", "cache_topk": 3},  # no teacher outputs are cached
])
def test_cache_topk_where_nothing_is_cached_fails_at_load(distill):
    with pytest.raises(RecipeError, match=r"distill\.cache_topk"):
        _load(distill)


# --------------------------------------------------------------------------- the plan check (before the teacher)


def _splits(n: int = 24):
    from edgekd.data import Splits

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 64)).astype(np.float32)
    y = np.arange(n) % 10
    return Splits("synthetic", x, y, x[:10], y[:10], x[:10], y[:10], np.arange(n) < n // 2, 10)


def test_cache_topk_above_the_number_of_classes_fails_in_the_plan_check():
    """It was a ValueError from the teacher cache (an internal error, exit 1) once the teacher had trained."""
    from edgekd.distill.plan import check_plan

    with pytest.raises(RecipeError, match=r"distill\.cache_topk: 20 .*10 classes"):
        check_plan(_load({"cache_topk": 20}), _splits())
    check_plan(_load({"cache_topk": 10}), _splits())


def test_a_black_box_teacher_function_that_cannot_be_imported_fails_in_the_plan_check():
    from edgekd.distill.plan import check_plan
    from edgekd.errors import TeacherOutputError

    recipe = _load({"strategy": "blackbox", "blackbox": {"source": "edgekd_no_such_module.sub:teacher"}})
    with pytest.raises(TeacherOutputError, match="cannot import the teacher function"):
        check_plan(recipe, _splits())


def test_an_ensemble_member_of_generation_two_fails_in_the_plan_check(tmp_path):
    """The guard ran only when the distill stage trained the members, after the teacher had trained."""
    from edgekd.checkpoints import save_checkpoint
    from edgekd.distill.plan import check_plan
    from edgekd.errors import LineageError
    from edgekd.models import create_model

    model = create_model("mlp", in_shape=(64,), num_classes=10, width=8)
    path = save_checkpoint(model, tmp_path / "member.pt", role="student", generation=2)
    member = {"model": {"family": "mlp", "params": {"width": 8}}, "checkpoint": str(path)}
    recipe = _load({"strategy": "ensemble", "ensemble": {"members": [member]}})
    with pytest.raises(LineageError, match="generation 2"):
        check_plan(recipe, _splits())
    check_plan(recipe.model_copy(update={"distill": recipe.distill.model_copy(update={"allow_generation": True})}),
               _splits())


# --------------------------------------------------------------------------- the progressive budget


@pytest.mark.parametrize("total, fraction, stages", [(10, 0.95, 2), (3, 0.9, 2), (40, 0.99, 3), (5, 0.8, 4)])
def test_progressive_spends_the_scratch_budget_when_the_logits_share_rounds_to_all_of_it(total, fraction, stages):
    """final_fraction 0.95 of 10 steps rounded to 10 for the logits stage, and each hint stage still took one:
    12 optimizer steps against the scratch baseline's 10."""
    from edgekd.distill.strategies import progressive_budgets

    hints, final = progressive_budgets(total, fraction, stages)
    assert sum(hints) + final == total and min(hints) >= 1 and final >= 1


# --------------------------------------------------------------------------- a run's recipe.yaml runs again


@pytest.mark.parametrize("loss", [{"name": "dkd", "params": {"beta": 4.0}}, {"name": "ce"}])
def test_a_dumped_dkd_or_ce_recipe_loads_again(loss, tmp_path):
    """A run folder's recipe.yaml (dump_recipe: every field, defaults too) of a dkd or ce run was refused:
    `distill.loss.alpha: the dkd loss does not read it`, for the default α the user never wrote."""
    import yaml

    from edgekd.recipe import dump_recipe, load_recipe

    recipe = _load({"loss": loss, "features": [_FEATURE]})
    assert load_recipe(yaml.safe_load(dump_recipe(recipe))) == recipe
    with pytest.raises(RecipeError, match=r"distill\.loss\.alpha: the .* loss does not read it"):
        _load({"loss": {**loss, "alpha": 0.5}, "features": [_FEATURE]})


@pytest.mark.parametrize("distill", [
    {"strategy": "blackbox", "blackbox": {"source": "SOURCE"}},  # the black-box outputs were never read
    {},  # standard: the teacher trained for nothing
    {"strategy": "self"},  # born-again: each generation learnt the labels again, not from the one before
])
def test_the_ce_loss_where_no_term_reads_the_teacher_fails_at_load(distill, tmp_path):
    source = tmp_path / "teacher.npy"
    np.save(source, np.zeros((1257, 10), np.float32))
    if "blackbox" in distill:
        distill = {**distill, "blackbox": {"source": str(source)}}
    with pytest.raises(RecipeError, match="distill.loss.name 'ce'") as err:
        _load({**distill, "loss": {"name": "ce"}})
    assert "kd" in err.value.fix


@pytest.mark.parametrize("distill", [
    {"features": [_FEATURE]},  # feature-only distillation
    {"strategy": "self", "features": [{"loss": "rkd", "student": "net.1", "teacher": "net.1"}]},
    {"strategy": "progressive", "progressive": {"pairs": [["net.1", "head.1"]]}},  # the hint stages read it
    {"strategy": "mutual"},  # refused for another reason below (kd only): not by this check
])
def test_the_ce_loss_beside_a_term_that_reads_the_teacher_still_loads(distill):
    if distill.get("strategy") == "mutual":
        with pytest.raises(RecipeError, match="cannot be used with strategy 'mutual'"):
            _load({**distill, "loss": {"name": "ce"}})
        return
    _load({**distill, "loss": {"name": "ce"}})


# --------------------------------------------------------------------------- relation terms need a batch


@pytest.mark.parametrize("term, batch_size", [
    ({"loss": "similarity", "student": "net.1", "teacher": "head.1"}, 1),
    (_FEATURE, 1),  # rkd: distances need 2 samples
    ({**_FEATURE, "params": {"distance_weight": 0.0}}, 2),  # angles need 3
])
def test_a_relation_term_that_its_batch_size_makes_zero_fails_at_load(term, batch_size):
    """A relation loss compares a batch's samples with each other: with too few it is exactly 0, and the term
    trained nothing without a word."""
    import torch

    from edgekd.distill.losses import LOSSES

    s, t = torch.randn(batch_size, 8, requires_grad=True), torch.randn(batch_size, 4)
    assert float(LOSSES[term["loss"]](s, t, **term.get("params", {}))) == 0.0
    with pytest.raises(RecipeError, match=r"distill\.features\.0: .*batch_size"):
        _load({"features": [term], "train": {"batch_size": batch_size}})
    _load({"features": [term], "train": {"batch_size": 3}})
