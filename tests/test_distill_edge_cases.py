"""Distillation edge cases an audit found: settings that were silently ignored or could not train, and
teacher outputs taken for what they are not. Each test fails without its fix."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

# Imported before any test patches trainer.fit: strategies binds `fit` by name when first imported, and a first
# import under a test's patch kept that test's spy for every test after it.
import edgekd.distill.strategies  # noqa: F401
from edgekd.errors import CompressionError, FeatureError, RecipeError

# --------------------------------------------------------------------------- black-box ONNX artifacts

D, C, N = 4, 5, 16


def _onnx_teacher(path, tail: str) -> tuple[np.ndarray, np.ndarray]:
    """A real ONNX classifier x @ W followed by `tail` (none, softmax, softmax_qdq, log_softmax) saved at
    `path`; returns (inputs, the teacher's true logits on them)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((D, C)) * 3).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["z"])]
    inits = [numpy_helper.from_array(w, "W")]
    if tail == "softmax":
        nodes.append(helper.make_node("Softmax", ["z"], ["out"], axis=1))
    elif tail == "log_softmax":
        nodes.append(helper.make_node("LogSoftmax", ["z"], ["out"], axis=1))
    elif tail == "softmax_qdq":  # a quantized deployment: probabilities on a uint8 grid of 1/255
        nodes += [helper.make_node("Softmax", ["z"], ["p"], axis=1),
                  helper.make_node("QuantizeLinear", ["p", "s", "zp"], ["q"]),
                  helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["out"])]
        inits += [numpy_helper.from_array(np.array(1 / 255, np.float32), "s"),
                  numpy_helper.from_array(np.array(0, np.uint8), "zp")]
    else:
        nodes.append(helper.make_node("Identity", ["z"], ["out"]))
    graph = helper.make_graph(nodes, "teacher", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", D])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", C])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    x = rng.standard_normal((N, D)).astype(np.float32)
    return x, x @ w


def _soft_targets(logits: np.ndarray, temperature: float = 4.0) -> np.ndarray:
    return torch.softmax(torch.from_numpy(np.asarray(logits, np.float32)) / temperature, dim=1).numpy()


def test_an_onnx_teacher_ending_in_softmax_gives_its_soft_targets_not_near_uniform_ones(tmp_path):
    pytest.importorskip("onnxruntime")
    from edgekd.distill.blackbox import load_teacher_outputs

    x, logits = _onnx_teacher(tmp_path / "model.onnx", "softmax")
    out = load_teacher_outputs(tmp_path / "model.onnx", x=x, num_samples=N, num_classes=C)  # kind="auto"
    np.testing.assert_allclose(_soft_targets(out), _soft_targets(logits), atol=1e-5)
    # an explicit kind still wins: kind="logits" takes the numbers as they are
    raw = load_teacher_outputs(tmp_path / "model.onnx", x=x, num_samples=N, num_classes=C, kind="logits")
    np.testing.assert_allclose(raw.sum(axis=1), 1.0, atol=1e-5)


def test_a_quantized_softmax_output_is_probabilities_although_its_rows_miss_one_by_more_than_auto_allows(tmp_path):
    pytest.importorskip("onnxruntime")
    from edgekd.distill.blackbox import AUTO_PROBS_ATOL, load_teacher_outputs

    x, _ = _onnx_teacher(tmp_path / "model.onnx", "softmax_qdq")
    raw = load_teacher_outputs(tmp_path / "model.onnx", x=x, num_samples=N, num_classes=C, kind="logits")
    assert (np.abs(raw.sum(axis=1) - 1) > AUTO_PROBS_ATOL).any()  # the values alone would say "logits"
    auto = load_teacher_outputs(tmp_path / "model.onnx", x=x, num_samples=N, num_classes=C)
    probs = load_teacher_outputs(tmp_path / "model.onnx", x=x, num_samples=N, num_classes=C, kind="probs")
    np.testing.assert_array_equal(auto, probs)


@pytest.mark.parametrize("tail", ["none", "log_softmax"])
def test_onnx_logits_and_log_probabilities_are_used_as_they_are(tmp_path, tail):
    pytest.importorskip("onnxruntime")
    from edgekd.distill.blackbox import load_teacher_outputs

    x, logits = _onnx_teacher(tmp_path / "model.onnx", tail)
    out = load_teacher_outputs(tmp_path / "model.onnx", x=x, num_samples=N, num_classes=C)
    expected = logits if tail == "none" else torch.log_softmax(torch.from_numpy(logits), 1).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- born-again with feature terms


def _net(width: int = 4) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(width * 4, 3))


def _job(config: dict, made: list[nn.Module] | None = None):
    """A DistillJob on 12 random 6×6 images (3 classes) with tiny conv nets, built by hand."""
    from edgekd.distill.strategies import DistillJob
    from edgekd.distill.trainer import predict_logits
    from edgekd.progress import SilentReporter
    from edgekd.recipe import DistillConfig

    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 1, 6, 6)).astype(np.float32)
    y = rng.integers(0, 3, 12)
    teacher = _net(8).eval()

    def make_student(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        model = _net()
        if made is not None:
            made.append(model)
        return model

    return DistillJob(config=DistillConfig(**config), make_student=make_student, teacher=lambda: teacher,
                      teacher_logits=lambda t, name: predict_logits(t, x), extra_teachers=lambda: [_net(8).eval()],
                      blackbox_logits=lambda: predict_logits(teacher, x), x=x, target=y, labelled_x=x, labelled_y=y,
                      in_shape=(1, 6, 6), num_classes=3, steps=2, val=(x, y), seed=0, reporter=SilentReporter())


def test_born_again_with_feature_terms_distils_each_generation_from_the_previous_one(monkeypatch):
    import edgekd.distill.strategies as strategies

    made: list[nn.Module] = []
    teachers: list[nn.Module | None] = []
    real = strategies.feature_terms

    def spy(job, teacher, student, pairs):
        teachers.append(teacher)
        return real(job, teacher, student, pairs)

    monkeypatch.setattr(strategies, "feature_terms", spy)
    job = _job({"strategy": "self", "self_distill": {"generations": 2},
                "features": [{"loss": "attention", "student": "0", "teacher": "0"},
                             {"loss": "mse", "student": "logits", "teacher": "logits"}]}, made)
    outcome = strategies.STRATEGIES["self"](job)
    assert [g["generation"] for g in outcome.details["generations"]] == [0, 1, 2]
    assert outcome.steps == 6 and outcome.student is made[2]
    assert len(teachers) == 2 and teachers[0] is made[0] and teachers[1] is made[1]


def _splits(n: int = 24):
    from edgekd.data import Splits

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 64)).astype(np.float32)
    y = np.arange(n) % 10
    return Splits("synthetic", x, y, x[:10], y[:10], x[:10], y[:10], np.arange(n) < n // 2, 10)


def _recipe(distill: dict, **extra) -> dict:
    return {"name": "edge", "seed": 0, "data": {"name": "digits"},
            "teacher": {"model": {"family": "cnn", "params": {"width": 8, "depth": 2, "hidden": 32}}},
            "student": {"model": {"family": "mlp", "params": {"width": 64}}}, "distill": distill, **extra}


def test_plan_check_matches_born_again_feature_paths_against_the_student_architecture():
    import edgekd
    from edgekd.distill.plan import check_plan

    born_again = {"strategy": "self", "features": [{"loss": "hint", "student": "net.1", "teacher": "net.1"}]}
    check_plan(edgekd.load_recipe(_recipe(born_again)), _splits())  # the previous generation has net.1
    standard = {"features": [{"loss": "hint", "student": "net.1", "teacher": "net.1"}]}
    with pytest.raises(FeatureError, match="teacher model has no module named 'net.1'"):
        check_plan(edgekd.load_recipe(_recipe(standard)), _splits())


def test_plan_check_resolves_the_layers_kept_from_pruning_before_any_training():
    """compress.prune.skip was resolved by the compress stage, after the teacher, student and baseline trained."""
    import edgekd
    from edgekd.distill.plan import check_plan

    compress = {"enabled": True, "prune": {"method": "structured", "ratio": 0.5, "skip": ["net.1", "net.9"]}}
    with pytest.raises(FeatureError, match="the pruned model has no module named 'net.9'"):
        check_plan(edgekd.load_recipe(_recipe({}, compress=compress)), _splits())
    compress["prune"]["skip"] = ["net.1"]
    deeper = {"model": {"family": "mlp", "params": {"width": 64, "depth": 2}}}  # net.3 left to prune
    check_plan(edgekd.load_recipe(_recipe({}, compress=compress, student=deeper)), _splits())
    with pytest.raises(CompressionError, match="found no channels it could remove"):  # the one layer skipped
        check_plan(edgekd.load_recipe(_recipe({}, compress=compress)), _splits())
    compress.update(source="teacher")  # named in the model compressed
    with pytest.raises(FeatureError, match="the pruned model has no module named 'net.1'"):
        check_plan(edgekd.load_recipe(_recipe({}, compress=compress)), _splits())


@pytest.mark.parametrize("term, problem", [
    ({"loss": "hint", "student": "net.1", "teacher": "logits"}, "student 'net.1' (64) and the teacher's logits (10)"),
    ({"loss": "mse", "student": "net.1"}, "student 'net.1' (64) and the teacher's logits (10)"),  # no teacher: logits
    ({"loss": "cosine", "student": "logits", "teacher": "head.1"}, "teacher 'head.1' (32) and the student's logits"),
    ({"loss": "hint", "student": "net.3", "teacher": "logits"}, None),  # the student's last Linear: logits' shape
    ({"loss": "similarity", "student": "net.1", "teacher": "logits"}, None),  # relations take any shape
])
def test_an_element_wise_term_against_the_logits_needs_their_shape_up_front(term, problem):
    """No adapter is made to the logits: such a term passed the plan check and failed at the first training
    step, after the teacher had trained ("hint loss: feature shapes differ")."""
    import edgekd
    from edgekd.distill.plan import check_plan
    from edgekd.distill.strategies import feature_terms

    recipe, splits = edgekd.load_recipe(_recipe({"features": [term]})), _splits()
    if problem is None:
        check_plan(recipe, splits)
        return
    with pytest.raises(FeatureError, match=re.escape(problem)):
        check_plan(recipe, splits)
    from edgekd.distill.api import new_model

    teacher, student = (new_model(recipe, splits, role) for role in ("teacher", "student"))
    job = SimpleNamespace(in_shape=splits.input_shape)
    with pytest.raises(FeatureError, match=re.escape(problem)):  # the Python API says the same before training
        feature_terms(job, teacher, student, [(term["loss"], term["student"], term.get("teacher") or "logits",
                                               1.0, {})])


# --------------------------------------------------------------------------- attention transfer needs p ≥ 1


@pytest.mark.parametrize("p", [0.5, 0.9, 0.0, -1.0, float("nan")])
def test_attention_with_p_below_one_is_refused_by_the_loss_and_at_recipe_load(p):
    import edgekd
    from edgekd.distill.losses import LOSSES

    s, t = torch.relu(torch.randn(2, 3, 4, 4)), torch.relu(torch.randn(2, 5, 4, 4))
    with pytest.raises(FeatureError, match="p must be a number ≥ 1"):
        LOSSES["attention"](s, t, p=p)
    with pytest.raises(RecipeError, match=r"distill\.features\.0\.params\.p") as info:
        edgekd.load_recipe(_recipe({"features": [{"loss": "attention", "student": "net.1", "teacher": "head.1",
                                                  "params": {"p": p}}]}))
    assert "NaN gradients" in str(info.value) and "params.p to 2" in str(info.value)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_attention_with_p_at_least_one_has_finite_gradients_on_relu_maps(p):
    from edgekd.distill.losses import LOSSES

    s = torch.relu(torch.randn(2, 3, 4, 4)).requires_grad_(True)  # many exact zeros
    LOSSES["attention"](s, torch.relu(torch.randn(2, 5, 4, 4)), p=p).backward()
    assert torch.isfinite(s.grad).all()


# --------------------------------------------------------------------------- the recipe's response loss is used


def test_kd_recovery_trains_with_the_recipes_response_loss_and_its_parameters(monkeypatch):
    import edgekd
    import edgekd.distill.trainer as trainer
    from edgekd.compress.recovery import compress_and_recover
    from edgekd.distill.api import new_model
    from edgekd.distill.losses import LOSSES

    seen: dict = {}
    real = trainer.fit

    def spy(model, x, target, **kw):
        seen.update(loss_fn=kw["loss_fn"], params=kw["loss_params"])
        return real(model, x, target, **{**kw, "steps": 1})

    monkeypatch.setattr(trainer, "fit", spy)
    recipe = edgekd.load_recipe(_recipe({"loss": {"name": "dkd", "temperature": 2.0,
                                                  "params": {"alpha": 1.0, "beta": 4.0}}},
                                        compress={"enabled": True, "prune": {"method": "unstructured", "ratio": 0.5},
                                                  "recovery": {"epochs": 1}}))
    splits = _splits()
    student = new_model(recipe, splits, "student")
    out = compress_and_recover(recipe, splits, student, new_model(recipe, splits, "student"))
    assert seen == {"loss_fn": LOSSES["dkd"], "params": {"temperature": 2.0, "alpha": 1.0, "beta": 4.0}}
    assert out.steps[-1] == "KD recovery: 1 epochs from the teacher (dkd, temperature=2.0, alpha=1.0, beta=4.0)"


def test_kd_recovery_with_kd_keeps_its_lineage_text(monkeypatch):
    import edgekd
    import edgekd.distill.trainer as trainer
    from edgekd.compress.recovery import compress_and_recover
    from edgekd.distill.api import new_model

    real = trainer.fit
    monkeypatch.setattr(trainer, "fit", lambda model, x, target, **kw: real(model, x, target, **{**kw, "steps": 1}))
    recipe = edgekd.load_recipe(_recipe({"loss": {"name": "kd", "temperature": 3.0, "alpha": 0.5}},
                                        compress={"enabled": True, "prune": {"method": "unstructured", "ratio": 0.5},
                                                  "recovery": {"epochs": 1}}))
    splits = _splits()
    student = new_model(recipe, splits, "student")
    out = compress_and_recover(recipe, splits, student, new_model(recipe, splits, "student"))
    assert out.steps[-1] == "KD recovery: 1 epochs from the teacher (T=3.0, α=0.5)"


class _Stop(Exception):
    pass


def test_qat_fallback_passes_the_recipes_response_loss_to_quantization_aware_distillation(monkeypatch, tmp_path):
    import edgekd
    import edgekd.compress.qat as qat
    from edgekd.compress.qat_fallback import QatDecision, QatTeacher, qat_artifact
    from edgekd.distill.api import new_model

    seen: dict = {}

    def spy(model, teacher, x, target, **kw):
        seen.update(kw)
        raise _Stop

    monkeypatch.setattr(qat, "qat_distill", spy)
    recipe = edgekd.load_recipe(_recipe({"loss": {"name": "dkd", "temperature": 2.0, "params": {"beta": 4.0}}}))
    splits = _splits()
    student = new_model(recipe, splits, "student")
    with pytest.raises(_Stop):
        qat_artifact(recipe, splits, role="student", model=student,
                     teacher=QatTeacher("itself", lambda x, rows: np.zeros((len(x), 10), np.float32)),
                     decision=QatDecision(True, "test"), out_root=tmp_path,
                     options=SimpleNamespace(int8_reduce_range=False, int8_targets=(), calibration=None),
                     lineage={})
    assert seen["loss"] == "dkd" and seen["loss_params"] == {"temperature": 2.0, "beta": 4.0}


def test_quantization_aware_distillation_trains_with_the_loss_it_is_given(monkeypatch):
    import edgekd.distill.trainer as trainer
    from edgekd.compress.qat import qat_distill
    from edgekd.distill.losses import LOSSES

    seen: dict = {}
    monkeypatch.setattr(trainer, "fit", lambda model, x, target, **kw: seen.update(objective=kw["objective"]))
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x, y = _splits().x_train, _splits().y_train
    logits = np.random.default_rng(0).standard_normal((len(x), 10)).astype(np.float32)
    qat_distill(model, logits, x, y, steps=1, batch_size=8, lr=1e-3, loss="dkd",
                loss_params={"temperature": 2.0, "beta": 4.0})
    assert seen["objective"].loss_fn is LOSSES["dkd"] and seen["objective"].params == {"temperature": 2.0, "beta": 4.0}
    qat_distill(model, logits, x, y, steps=1, batch_size=8, lr=1e-3, temperature=3.0, alpha=0.5)  # the default: kd
    assert seen["objective"].loss_fn is LOSSES["kd"] and seen["objective"].params == {"temperature": 3.0, "alpha": 0.5}


def test_ensemble_uses_the_recipes_kd_parameters(monkeypatch):
    import edgekd.distill.objectives as objectives
    import edgekd.distill.strategies as strategies

    seen: dict = {}
    real = objectives.ensemble_kd

    def spy(*args, **kw):
        seen.update(kw)
        return real(*args, **kw)

    monkeypatch.setattr(objectives, "ensemble_kd", spy)
    job = _job({"strategy": "ensemble", "loss": {"name": "kd", "temperature": 2.5, "alpha": 0.7},
                "ensemble": {"members": [{"model": {"family": "cnn"}}], "mode": "confidence"}})
    strategies.STRATEGIES["ensemble"](job)
    assert seen == {"mode": "confidence", "weights": None, "temperature": 2.5, "alpha": 0.7}


_MEMBERS = {"members": [{"model": {"family": "cnn"}}]}
_FEATURE = [{"loss": "hint", "student": "net.1", "teacher": "net.1"}]


@pytest.mark.parametrize("distill, field", [
    ({"strategy": "ensemble", "ensemble": _MEMBERS, "loss": {"name": "dkd"}}, "distill.loss.name 'dkd'"),
    ({"strategy": "ensemble", "ensemble": _MEMBERS, "loss": {"name": "ce"}}, "distill.loss.name 'ce'"),
    ({"strategy": "mutual", "loss": {"name": "dkd"}}, "distill.loss.name 'dkd'"),
    ({"strategy": "mutual", "features": _FEATURE}, "distill.features"),
    ({"strategy": "self", "self_distill": {"mode": "deep_supervision", "heads": ["net.1"]}, "loss": {"name": "ce"}},
     "distill.loss.name 'ce'"),
    ({"strategy": "self", "self_distill": {"mode": "deep_supervision", "heads": ["net.1"]}, "features": _FEATURE},
     "distill.features"),
])
def test_a_loss_or_feature_term_the_strategy_would_ignore_fails_at_recipe_load(distill, field):
    import edgekd

    with pytest.raises(RecipeError) as info:
        edgekd.load_recipe(_recipe(distill))
    message = str(info.value)
    assert field in message and f"strategy '{distill['strategy']}" in message
    assert ("set distill.loss.name to kd" if "loss" in distill else "remove distill.features") in message


@pytest.mark.parametrize("distill", [
    {"strategy": "ensemble", "ensemble": _MEMBERS, "features": _FEATURE},
    {"strategy": "mutual"},
    {"strategy": "self", "loss": {"name": "dkd"}, "features": _FEATURE},  # born-again honours both
    {"strategy": "progressive", "progressive": {"pairs": [["net.1", "head.1"]]}, "loss": {"name": "dkd"}},
])
def test_combinations_the_strategies_honour_still_load(distill):
    import edgekd

    edgekd.load_recipe(_recipe(distill))


# --------------------------------------------------------------------------- a distributed rank's share of a batch


def _shares_gradient(loss_of, s: torch.Tensor, y: torch.Tensor, world: int) -> torch.Tensor:
    """The gradient DDP would apply: each rank's loss on rows r::world inside its batch share, averaged."""
    from edgekd.distill.batch_share import Share, batch_share

    rows = torch.arange(len(s))
    sizes = tuple(len(rows[r::world]) for r in range(world))
    total = torch.zeros_like(s)
    for rank in range(world):
        mine = rows[rank::world]
        x = s.detach().clone().requires_grad_(True)
        with batch_share(Share(rank, sizes, int((y != -1).sum()))):
            loss_of(x[mine], mine).backward()
        total += x.grad
    return total / world


class _Lookup(nn.Module):
    """A 'teacher' whose output for row numbers is a fixed table's rows (FeatureTerms runs it on the inputs)."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.table[rows]


@pytest.mark.parametrize("name", ["kd", "dkd", "ce", "ensemble", "hint", "cosine", "attention"])
def test_a_rank_share_adds_its_part_of_the_whole_batch_loss(name):
    """Shares of 5, 4 and 4 rows, and all labelled rows in one share: averaged per-rank gradients equal the
    whole batch's (each rank's plain mean over its own rows would not). Feature terms run as in training."""
    from edgekd.distill.losses import LOSSES, ensemble_kd
    from edgekd.distill.objectives import LOGITS, FeatureTerm, FeatureTerms

    torch.manual_seed(0)
    s, t = torch.randn(13, 5, dtype=torch.float64), torch.randn(13, 5, dtype=torch.float64) * 2
    teachers = torch.randn(2, 13, 5, dtype=torch.float64)
    y = torch.full((13,), -1)
    y[[0, 3, 9]] = torch.tensor([1, 4, 2])  # rows of rank 0's share (0::3)

    def feature(z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        terms = FeatureTerms([FeatureTerm(name, LOGITS, LOGITS, 1.0, {}, "id")], _Lookup(t),
                             nn.ModuleDict({"id": nn.Identity()}))
        return terms.loss(rows, z)

    losses = {"kd": lambda z, i: LOSSES["kd"](z, t[i], y[i], alpha=0.6),
              "dkd": lambda z, i: LOSSES["dkd"](z, t[i], y[i]),
              "ce": lambda z, i: LOSSES["ce"](z, None, y[i]),
              "ensemble": lambda z, i: ensemble_kd(z, teachers[:, i], y[i], mode="loss_average", alpha=0.6)}
    loss_of = losses.get(name, feature)
    whole = s.clone().requires_grad_(True)
    loss_of(whole, torch.arange(13)).backward()
    assert torch.allclose(_shares_gradient(loss_of, s, y, 3), whole.grad, atol=1e-12)


def test_a_deep_cnn_builds_and_trains_when_a_pass_leaves_one_sample_over():
    """A cnn of depth 5 on digits pools its maps to 1×1: its shape probe (one sample through batch norm in
    training mode) and a pass's last batch of one sample both failed as internal errors ("Expected more than 1
    value per channel when training")."""
    import numpy as np

    from edgekd.distill.trainer import batches_per_pass, fit
    from edgekd.models import create_model

    model = create_model("cnn", in_shape=(64,), num_classes=3, width=4, depth=5, hidden=8)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(9, 64)).astype(np.float32), rng.integers(0, 3, 9)
    assert batches_per_pass(9, 4) == 2  # 4 + 5: the ninth sample joins the last batch
    from edgekd.distill.losses import ce_loss

    result = fit(model, x, y, steps=4, batch_size=4, lr=1e-2, weight_decay=0.0, seed=0, loss_fn=ce_loss)
    assert result.steps == 4
