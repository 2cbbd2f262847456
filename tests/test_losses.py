"""The KD loss convention (α on the soft term, T² scaling), the masked hard term, and the registry's contracts:
kinds, shape errors, and agreement with each paper's formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from edgekd.distill.losses import (LOSSES, UNLABELLED, ensemble_kd, ensemble_targets, is_relational, loss_kind,
                                   needs_same_shape, soft_kl)
from edgekd.errors import FeatureError, RegistryError

logits = st.integers(min_value=0, max_value=2**31 - 1).map(
    lambda seed: torch.randn(6, 5, generator=torch.Generator().manual_seed(seed)) * 3)


@settings(max_examples=40, deadline=None)
@given(logits, logits, st.floats(0.5, 10))
def test_soft_term_is_non_negative_and_zero_at_equality(s, t, temperature):
    assert soft_kl(s, t, temperature) >= -1e-6
    assert abs(float(soft_kl(t, t, temperature))) < 1e-5


@settings(max_examples=30, deadline=None)
@given(logits, logits)
def test_alpha_zero_is_cross_entropy_and_alpha_one_is_the_soft_term(s, t):
    y = torch.arange(6) % 5
    assert torch.allclose(LOSSES["kd"](s, t, y, temperature=4.0, alpha=0.0), F.cross_entropy(s, y), atol=1e-6)
    assert torch.allclose(LOSSES["kd"](s, t, y, temperature=4.0, alpha=1.0), soft_kl(s, t, 4.0), atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(logits, logits, st.floats(-20, 20))
def test_adding_a_constant_to_logits_changes_nothing(s, t, c):
    assert torch.allclose(soft_kl(s + c, t, 3.0), soft_kl(s, t - c, 3.0), atol=1e-4)


def test_t_squared_keeps_gradient_magnitude_comparable_across_temperatures():
    torch.manual_seed(0)
    t = torch.randn(64, 10) * 2
    norms = []
    for temperature in (2.0, 8.0):
        s = (torch.randn(64, 10) * 2).requires_grad_()
        soft_kl(s, t, temperature).backward()
        norms.append(float(s.grad.norm()))
    # Without T², the gradient shrinks like 1/T² (16× from T=2 to T=8); with it, it stays the same order.
    assert 0.25 < norms[1] / norms[0] < 4


def test_unlabelled_samples_only_feed_the_soft_term():
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    y = torch.tensor([0, UNLABELLED, 2, UNLABELLED])
    expected = 0.9 * soft_kl(s, t, 4.0) + 0.1 * F.cross_entropy(s[[0, 2]], y[[0, 2]])
    assert torch.allclose(LOSSES["kd"](s, t, y), expected)
    none = torch.full((4,), UNLABELLED)
    assert torch.allclose(LOSSES["kd"](s, t, none), 0.9 * soft_kl(s, t, 4.0))
    assert float(LOSSES["ce"](s, None, none)) == 0.0


def test_a_batch_without_labels_backpropagates_a_zero_hard_term():
    """A cross-entropy-only loss on a batch (or a distributed rank's share) with no labelled row used to have no
    autograd graph, so backward() failed."""
    s = torch.randn(4, 3, requires_grad=True)
    loss = LOSSES["ce"](s, None, torch.full((4,), UNLABELLED))
    loss.backward()
    assert float(loss) == 0.0 and torch.equal(s.grad, torch.zeros_like(s))


# --- the registry: kinds, shapes, errors ---------------------------------------------------------------------------

KINDS = {"kd": "logits", "ce": "logits", "dkd": "logits", "hint": "features", "mse": "features",
         "cosine": "features", "attention": "features", "similarity": "features", "rkd": "features"}


def test_every_loss_records_its_kind_and_whether_it_needs_equal_shapes():
    assert set(LOSSES.names()) == set(KINDS)
    for name, kind in KINDS.items():
        assert loss_kind(name) == kind == LOSSES[name].kind
        assert needs_same_shape(name) == (name in {"hint", "mse", "cosine"})
        assert is_relational(name) == (name in {"similarity", "rkd"})  # not a mean of per-sample terms
    with pytest.raises(RegistryError, match="unknown loss 'fitnet'"):
        loss_kind("fitnet")
    with pytest.raises(RegistryError):
        needs_same_shape("fitnet")


@pytest.mark.parametrize("name", ["hint", "mse", "cosine"])
def test_elementwise_losses_name_both_shapes_when_they_differ(name):
    with pytest.raises(FeatureError) as caught:
        LOSSES[name](torch.randn(4, 8, 3, 3), torch.randn(4, 16, 3, 3))
    err = caught.value
    assert "(4, 8, 3, 3)" in err.what and "(4, 16, 3, 3)" in err.what and name in err.what
    assert "element" in err.why and "adapter" in err.fix


@pytest.mark.parametrize("name", ["attention", "similarity", "rkd"])
def test_structural_losses_take_other_widths_but_not_other_batch_sizes(name):
    assert torch.isfinite(LOSSES[name](torch.randn(4, 8, 3, 3), torch.randn(4, 16, 3, 3)))
    with pytest.raises(FeatureError) as caught:
        LOSSES[name](torch.randn(4, 8, 3, 3), torch.randn(5, 8, 3, 3))
    assert "(4, 8, 3, 3)" in caught.value.what and "(5, 8, 3, 3)" in caught.value.what and caught.value.fix


def test_attention_needs_equal_ranks_and_equal_vector_sizes():
    with pytest.raises(FeatureError, match=r"\(2, 8, 4, 4\).*\(2, 8\)"):
        LOSSES["attention"](torch.randn(2, 8, 4, 4), torch.randn(2, 8))
    with pytest.raises(FeatureError, match=r"\(2, 6\).*\(2, 8\)"):
        LOSSES["attention"](torch.randn(2, 6), torch.randn(2, 8))


def _at(f):  # Zagoruyko & Komodakis' attention map, from their paper
    return F.normalize(f.pow(2).mean(1).flatten(1))


def test_attention_is_the_papers_squared_distance_and_pools_the_larger_map():
    torch.manual_seed(0)
    s, t = torch.randn(3, 4, 6, 6), torch.randn(3, 7, 6, 6)
    # the authors' code reports (Q_s − Q_t)².mean(); ours sums over positions: × H·W
    assert torch.allclose(LOSSES["attention"](s, t), (_at(s) - _at(t)).pow(2).mean() * 36, atol=1e-6)
    big = torch.randn(3, 4, 12, 6)
    pooled = F.normalize(F.adaptive_avg_pool2d(big.pow(2).mean(1, keepdim=True), (6, 6)).flatten(1))
    assert torch.allclose(LOSSES["attention"](big, t), (pooled - _at(t)).pow(2).sum(1).mean(), atol=1e-6)
    assert torch.allclose(LOSSES["attention"](t, big), LOSSES["attention"](big, t), atol=1e-6)


def test_cosine_of_an_all_zero_student_sample_has_a_finite_gradient_and_the_values_are_unchanged():
    """A dead layer's all-zero sample counts as cosine 0 (loss 1); its gradient used to be inf (1 / finfo.tiny),
    and a bias-free layer fed an all-zero input row then got NaN weight gradients (inf · 0)."""
    torch.manual_seed(0)
    t = torch.randn(4, 6)
    layer = torch.nn.Linear(3, 6, bias=False)
    x = torch.randn(4, 3)
    x[0] = 0
    loss = LOSSES["cosine"](layer(x), t)
    loss.backward()
    assert torch.isfinite(layer.weight.grad).all()
    reference = torch.nn.Linear(3, 6, bias=False)
    reference.load_state_dict(layer.state_dict())
    expected = (1 - F.cosine_similarity(reference(x), t, dim=1)).mean()
    expected.backward()
    assert torch.allclose(loss, expected, atol=1e-6)
    assert torch.allclose(layer.weight.grad, reference.weight.grad, atol=1e-6)
    s = torch.zeros(4, 6, requires_grad=True)  # every sample zero
    LOSSES["cosine"](s, t).backward()
    assert torch.isfinite(s.grad).all()


@pytest.mark.parametrize("name", ["cosine", "attention", "similarity", "rkd"])
def test_a_zero_student_sample_or_two_coincident_ones_get_gradients_of_ordinary_size(name):
    """Normalising a zero vector (a dead feature, or the difference of two coincident samples) used to give
    gradients of ~1e10 (1/eps), which blow up Adam's second moment; now they are as large as anywhere else."""
    torch.manual_seed(0)
    t = torch.randn(5, 6)

    def largest_gradient(s: torch.Tensor) -> float:
        s = s.clone().requires_grad_(True)
        LOSSES[name](s, t).backward()
        assert torch.isfinite(s.grad).all()
        return float(s.grad.abs().max())

    ordinary = largest_gradient(torch.randn(5, 6))
    zero, coincident = torch.randn(5, 6), torch.randn(5, 6)
    zero[0] = 0
    coincident[1] = coincident[0]
    assert largest_gradient(zero) < 100 * ordinary and largest_gradient(coincident) < 100 * ordinary


def test_similarity_is_tung_and_moris_formula():
    torch.manual_seed(0)
    s, t = torch.randn(5, 3, 2, 2), torch.randn(5, 9)
    g_s, g_t = (F.normalize(f.flatten(1) @ f.flatten(1).t()) for f in (s, t))
    assert torch.allclose(LOSSES["similarity"](s, t), ((g_s - g_t) ** 2).sum() / 25, atol=1e-6)


def _rkd_reference(s, t, wd, wa):  # Park et al.'s distance and angle potentials, written out
    def dist(e):
        d = torch.cdist(e, e)
        return d / d[d > 0].mean()

    def angle(e):
        v = F.normalize(e[None] - e[:, None], dim=2)
        return torch.bmm(v, v.transpose(1, 2)).flatten()

    return wd * F.smooth_l1_loss(dist(s), dist(t)) + wa * F.smooth_l1_loss(angle(s), angle(t))


def test_rkd_matches_the_reference_potentials_and_its_weights_scale_the_terms():
    torch.manual_seed(0)
    s, t = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 12, dtype=torch.float64)
    assert torch.allclose(LOSSES["rkd"](s, t), _rkd_reference(s, t, 1.0, 2.0))
    assert torch.allclose(LOSSES["rkd"](s, t, distance_weight=25, angle_weight=50), _rkd_reference(s, t, 25, 50))
    assert float(LOSSES["rkd"](s, t, distance_weight=0, angle_weight=0)) == 0.0


def _dkd_reference(s, t, y, alpha, beta, temperature):  # Zhao et al.'s masked-softmax formulation
    gt = F.one_hot(y, s.shape[1]).to(s.dtype)
    p_s, p_t = F.softmax(s / temperature, 1), F.softmax(t / temperature, 1)
    b_s = torch.stack([(p_s * gt).sum(1), (p_s * (1 - gt)).sum(1)], 1)
    b_t = torch.stack([(p_t * gt).sum(1), (p_t * (1 - gt)).sum(1)], 1)
    tckd = F.kl_div(b_s.log(), b_t, reduction="batchmean") * temperature ** 2
    nckd = F.kl_div(F.log_softmax(s / temperature - 1000 * gt, 1), F.softmax(t / temperature - 1000 * gt, 1),
                    reduction="batchmean") * temperature ** 2
    return alpha * tckd + beta * nckd


def test_dkd_matches_the_papers_formula_plus_the_hard_term():
    torch.manual_seed(0)
    s, t = torch.randn(8, 10, dtype=torch.float64) * 3, torch.randn(8, 10, dtype=torch.float64) * 3
    y = torch.randint(0, 10, (8,))
    expected = _dkd_reference(s, t, y, 1.0, 8.0, 4.0) + F.cross_entropy(s, y)
    assert torch.allclose(LOSSES["dkd"](s, t, y), expected)
    expected = _dkd_reference(s, t, y, 0.5, 2.0, 2.0) + 0.3 * F.cross_entropy(s, y)
    assert torch.allclose(LOSSES["dkd"](s, t, y, alpha=0.5, beta=2.0, temperature=2.0, ce_weight=0.3), expected)


def test_dkd_needs_a_teacher_and_a_target():
    s = torch.randn(2, 3)
    with pytest.raises(ValueError, match="teacher"):
        LOSSES["dkd"](s, None, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="target"):
        LOSSES["dkd"](s, s, None)


def test_confidence_mode_weights_each_sample_by_each_teachers_max_probability():
    teachers = torch.tensor([[[4.0, 0.0, 0.0], [0.0, 0.0, 0.0]],   # confident on sample 0, unsure on 1
                             [[0.0, 1.0, 0.0], [0.0, 0.0, 5.0]]])  # the opposite
    conf = F.softmax(teachers, -1).amax(-1, keepdim=True)
    w = conf / conf.sum(0, keepdim=True)
    expected = (w * F.softmax(teachers / 2.0, -1)).sum(0)
    assert torch.allclose(ensemble_targets(teachers, "confidence", None, 2.0).exp(), expected, atol=1e-6)
    static = torch.tensor([1.0, 3.0]).view(2, 1, 1) * conf  # static weights multiply the confidences
    expected = (static / static.sum(0) * F.softmax(teachers / 2.0, -1)).sum(0)
    assert torch.allclose(ensemble_targets(teachers, "confidence", [1, 3], 2.0).exp(), expected, atol=1e-6)
    s = torch.randn(2, 3)
    kd_to = 0.9 * 4.0 * F.kl_div(F.log_softmax(s / 2.0, -1), expected, reduction="batchmean")
    assert torch.allclose(ensemble_kd(s, teachers, mode="confidence", weights=[1, 3], temperature=2.0), kd_to,
                          atol=1e-6)


def test_ensemble_rejects_bad_modes_weights_and_shapes():
    s, teachers = torch.randn(4, 3), torch.randn(2, 4, 3)
    with pytest.raises(ValueError, match="mode"):
        ensemble_kd(s, teachers, mode="vote")
    for weights in ([1.0], [1.0, -1.0], [0.0, 0.0], [1.0, float("nan")]):
        with pytest.raises(ValueError, match="weights"):
            ensemble_kd(s, teachers, weights=weights)
    with pytest.raises(ValueError, match=r"\[K, N, C\]"):
        ensemble_kd(s, teachers[0])
    with pytest.raises(ValueError, match="do not match"):
        ensemble_kd(torch.randn(5, 3), teachers)
