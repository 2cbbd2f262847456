"""Property-based checks of the loss registry: the mathematical facts each loss must satisfy on any input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgekd.distill.losses import (LOSSES, UNLABELLED, ensemble_kd, ensemble_targets, loss_kind,
                                   soft_kl)

FAST = settings(max_examples=30, deadline=None)
BROAD = settings(max_examples=60, deadline=None)  # cheap examples; many losses to cover
MODES = ("soft_average", "loss_average", "confidence")
FEATURE_LOSSES = ("hint", "mse", "cosine", "attention", "similarity", "rkd")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread (conftest)


def _tensor(draw, shape, bound=10.0, dtype=np.float32, tiny=False) -> torch.Tensor:
    """A tensor of finite floats in [-bound, bound]; without `tiny`, each element is 0 or at least 1e-3 in size
    (scaling a subnormal loses its digits, which no scale-invariance can survive)."""
    width = 32 if dtype == np.float32 else 64
    bound = float(np.float32(bound)) if width == 32 else bound  # hypothesis wants bounds exact at the width
    if tiny:
        elements = st.floats(-bound, bound, width=width, allow_nan=False, allow_infinity=False)
    else:
        low = min(1e-3, bound)
        low = float(np.float32(low)) if width == 32 else low
        elements = st.one_of(st.just(0.0), st.floats(low, bound, width=width), st.floats(-bound, -low, width=width))
    return torch.from_numpy(draw(hnp.arrays(dtype, shape, elements=elements)))


@st.composite
def logit_pairs(draw, n=(1, 6), c=(2, 6), bound=10.0, dtype=np.float32, tiny=False):
    """(student, teacher, target) with some targets -1 (unlabelled)."""
    shape = (draw(st.integers(*n)), draw(st.integers(*c)))
    s, t = _tensor(draw, shape, bound, dtype, tiny), _tensor(draw, shape, bound, dtype, tiny)
    y = torch.tensor(draw(st.lists(st.integers(UNLABELLED, shape[1] - 1), min_size=shape[0], max_size=shape[0])))
    return s, t, y


@st.composite
def feature_batches(draw, n=(1, 5), shape=None, bound=10.0, dtype=np.float32, tiny=False):
    """A (N, D) or (N, C, H, W) feature batch."""
    if shape is None:
        rank = draw(st.sampled_from([2, 4]))
        shape = (draw(st.integers(2, 6)),) if rank == 2 else tuple(draw(st.integers(1, 3)) for _ in range(3))
    return _tensor(draw, (draw(st.integers(*n)), *shape), bound, dtype, tiny)


def _orthonormal_rows(d: int, d_out: int, seed: int) -> torch.Tensor:
    """A (d, d_out) matrix R with R Rᵀ = I (d ≤ d_out): an isometric embedding of R^d into R^d_out."""
    q, _ = torch.linalg.qr(torch.randn(d_out, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q.t()


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    return bool(torch.isclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                              rtol=rtol, atol=atol))


# --- kd ---------------------------------------------------------------------------------------------------------

@FAST
@given(logit_pairs(), st.floats(0.5, 20), st.floats(0, 1))
def test_kd_is_non_negative(pair, temperature, alpha):
    s, t, y = pair
    assert float(LOSSES["kd"](s, t, y, temperature=temperature, alpha=alpha)) >= -1e-5


@FAST
@given(logit_pairs(), st.floats(0.5, 20))
def test_kd_is_zero_when_the_student_copies_the_teacher_and_alpha_is_one(pair, temperature):
    _, t, y = pair
    assert abs(float(LOSSES["kd"](t.clone(), t, y, temperature=temperature, alpha=1.0))) < 1e-4


@FAST
@given(logit_pairs(), st.floats(0.5, 20))
def test_kd_with_alpha_zero_is_the_cross_entropy_of_the_labelled_rows(pair, temperature):
    s, t, y = pair
    labelled = y != UNLABELLED
    expected = F.cross_entropy(s[labelled], y[labelled]) if bool(labelled.any()) else torch.tensor(0.0)
    assert _close(LOSSES["kd"](s, t, y, temperature=temperature, alpha=0.0), expected)


@FAST
@given(logit_pairs(), st.data())
def test_kd_is_invariant_to_a_per_row_constant_on_either_side(pair, data):
    s, t, y = pair
    cs, ct = (_tensor(data.draw, (s.shape[0], 1), bound=50.0) for _ in range(2))
    base = LOSSES["kd"](s, t, y, temperature=3.0, alpha=0.7)
    assert _close(LOSSES["kd"](s + cs, t + ct, y, temperature=3.0, alpha=0.7), base, rtol=1e-3, atol=1e-3)


@FAST
@given(logit_pairs(bound=5.0, dtype=np.float64))
def test_large_temperature_limit_is_logit_matching(pair):
    # softmax(x/T) ≈ (1 + (x − x̄)/T) / C and KL(p‖q) ≈ ½ Σ (p − q)² / p, so per sample
    # T² · KL → T² · ½ · C · Σ ((t − t̄) − (s − s̄))² / (C T)² = Σ ((t − t̄) − (s − s̄))² / (2C)   (error O(|x|/T)).
    s, t, _ = pair
    c = s.shape[1]
    centred = (t - t.mean(1, keepdim=True)) - (s - s.mean(1, keepdim=True))
    limit = (centred ** 2).sum(1).mean() / (2 * c)
    assert _close(soft_kl(s, t, 1000.0), limit, rtol=3e-2, atol=1e-8)


@FAST
@given(logit_pairs(bound=2.0, dtype=np.float64), st.floats(8.0, 1000.0))
def test_t_squared_makes_the_student_gradient_temperature_independent(pair, temperature):
    # ∂/∂s of T²·KL = (T/N)(softmax(s/T) − softmax(t/T)) = (1/N) J̄ (s − t), J̄ the softmax Jacobian averaged on the
    # segment t/T → s/T. With |x| ≤ M every probability satisfies C·p ∈ [e^−r, e^r], r = 2M/T, hence
    # e^−r J₀ ⪯ J̄ ⪯ e^r J₀ with J₀ = (I − 11ᵀ/C)/C, so ‖grad‖ · N · C / ‖zero-mean part of (s − t)‖ ∈ [e^−r, e^r]:
    # a band around 1 for every T (without T² it would shrink like 1/T², with T alone like 1/T).
    s, t, _ = pair
    n, c = s.shape
    delta = s - t
    delta0 = delta - delta.mean(1, keepdim=True)
    assume(float(delta0.norm()) > 1e-6)
    x = s.clone().requires_grad_()
    soft_kl(x, t, temperature).backward()
    scaled = x.grad * n * c
    r = 2 * 2.0 / temperature
    ratio = float(scaled.norm() / delta0.norm())
    assert math.exp(-r) - 1e-9 <= ratio <= math.exp(r) + 1e-9
    # and J̄ − J₀ has norm ≤ (e^r − 1)/C there, so the gradient converges to the zero-mean (s − t) / (N C)
    assert float((scaled - delta0).norm()) <= (math.exp(r) - 1) * float(delta0.norm()) + 1e-9


# --- dkd --------------------------------------------------------------------------------------------------------

@FAST
@given(logit_pairs(), st.floats(0.5, 10), st.floats(0, 4), st.floats(0, 10))
def test_dkd_is_non_negative_and_zero_at_equality(pair, temperature, alpha, beta):
    s, t, y = pair
    params = dict(temperature=temperature, alpha=alpha, beta=beta, ce_weight=0.0)
    assert float(LOSSES["dkd"](s, t, y, **params)) >= -1e-4
    assert abs(float(LOSSES["dkd"](t.clone(), t, y, **params))) < 1e-4


@FAST
@given(logit_pairs(n=(1, 1), bound=6.0, dtype=np.float64), st.floats(1, 10))
def test_dkd_recombines_into_kd(pair, temperature):
    # Zhao et al., Eq. 2: KL = TCKD + (1 − p_target(teacher)) · NCKD, per sample.
    s, t, y = pair
    gt = int(t.argmax()) if int(y) == UNLABELLED else int(y)
    p_gt = float(F.softmax(t / temperature, dim=1)[0, gt])
    dkd = LOSSES["dkd"](s, t, y, temperature=temperature, alpha=1.0, beta=1.0 - p_gt, ce_weight=0.0)
    assert _close(dkd, soft_kl(s, t, temperature), rtol=1e-8, atol=1e-10)


@FAST
@given(logit_pairs())
def test_dkd_decouples_unlabelled_rows_at_the_teacher_argmax_and_gives_them_no_hard_term(pair):
    s, t, y = pair
    filled = torch.where(y == UNLABELLED, t.argmax(1), y)
    assert _close(LOSSES["dkd"](s, t, y, ce_weight=0.0), LOSSES["dkd"](s, t, filled, ce_weight=0.0))
    hard_only = LOSSES["dkd"](s, t, y, alpha=0.0, beta=0.0, ce_weight=1.0)
    assert _close(hard_only, LOSSES["ce"](s, t, y))


# --- the hard term ------------------------------------------------------------------------------------------------

@FAST
@given(logit_pairs(n=(2, 6)), st.sampled_from(["kd", "dkd", *MODES]))
def test_unlabelled_rows_get_no_gradient_from_the_hard_term(pair, which):
    s, t, y = pair
    y[0] = UNLABELLED  # at least one unlabelled row
    x = s.clone().requires_grad_()
    if which == "kd":
        loss = LOSSES["kd"](x, t, y, alpha=0.0)
    elif which == "dkd":
        loss = LOSSES["dkd"](x, t, y, alpha=0.0, beta=0.0, ce_weight=1.0)
    else:
        loss = ensemble_kd(x, torch.stack([t, -t]), y, mode=which, alpha=0.0)
    if loss.requires_grad:
        loss.backward()
        grad = x.grad if x.grad is not None else torch.zeros_like(x)
    else:
        grad = torch.zeros_like(x)
    unlabelled = y == UNLABELLED
    assert float(grad[unlabelled].abs().max()) == 0.0
    if bool((~unlabelled).any()):  # the labelled rows do learn (a CE gradient row sums to 0 but is never all 0)
        assert float(grad[~unlabelled].abs().max()) > 0.0


# --- element-wise feature losses ---------------------------------------------------------------------------------

@FAST
@given(st.sampled_from(["hint", "mse", "cosine"]), st.data())
def test_elementwise_feature_losses_are_non_negative_and_zero_at_equality(name, data):
    s = data.draw(feature_batches())
    t = _tensor(data.draw, tuple(s.shape))
    assert float(LOSSES[name](s, t)) >= -1e-6
    nonzero = t.flatten(1).abs().amax(1) > 0  # the cosine of a zero vector is undefined (loss 1 by convention)
    assume(name != "cosine" or bool(nonzero.all()))
    assert abs(float(LOSSES[name](t.clone(), t))) < 1e-5


@FAST
@given(feature_batches(), st.data())
def test_cosine_is_invariant_to_a_positive_scale_per_sample(s, data):
    t = _tensor(data.draw, tuple(s.shape))
    scale = torch.tensor(data.draw(st.lists(st.floats(1e-3, 1e3), min_size=len(s), max_size=len(s))))
    scaled = s * scale.view(-1, *([1] * (s.dim() - 1)))
    assert _close(LOSSES["cosine"](scaled, t), LOSSES["cosine"](s, t), rtol=1e-4, atol=1e-5)


# --- structural feature losses -------------------------------------------------------------------------------------

@FAST
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 3), st.data())
def test_attention_ignores_positive_scale_channel_count_and_channel_order(n, c, copies, data):
    h, w = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    s, t = _tensor(data.draw, (n, c, h, w)), _tensor(data.draw, (n, c + 2, h, w))
    scale = torch.tensor(data.draw(st.lists(st.floats(1e-3, 1e3), min_size=n, max_size=n))).view(n, 1, 1, 1)
    base = LOSSES["attention"](s, t)
    assert _close(LOSSES["attention"](s * scale, t), base, rtol=1e-4, atol=1e-5)
    assert _close(LOSSES["attention"](s, t * scale), base, rtol=1e-4, atol=1e-5)
    order = torch.randperm(c, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 99))))
    assert _close(LOSSES["attention"](s[:, order], t), base, rtol=1e-4, atol=1e-5)
    # the student repeating the teacher's channels (a different count) has the same energy map: loss 0
    assert float(LOSSES["attention"](s.repeat(1, copies, 1, 1), s)) < 1e-5
    # ... and so has one with extra silent (zero) channels: only the spatial distribution of energy counts
    assert float(LOSSES["attention"](torch.cat([s, torch.zeros_like(s).repeat(1, copies, 1, 1)], 1), s)) < 1e-5
    assert 0.0 <= float(base) <= 2.0 + 1e-5  # ‖a − b‖² = 2 − 2a·b for unit vectors, and a·b ≥ 0 (entries ≥ 0)
    # a student map at twice the resolution (each teacher cell repeated 2×2) is pooled back onto the teacher's grid
    upsampled = s.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert float(LOSSES["attention"](upsampled, s)) < 1e-5


@FAST
@given(feature_batches(n=(1, 6), shape=(4,), dtype=np.float64), st.integers(1, 4), st.floats(1e-3, 1e3),
       st.integers(0, 99))
def test_similarity_is_zero_for_an_isometric_student_of_any_width_and_ignores_scale(t, width, scale, seed):
    s = t @ _orthonormal_rows(4, 4 + width, seed)  # same Gram matrix, more channels
    assert abs(float(LOSSES["similarity"](s, t))) < 1e-8
    assert abs(float(LOSSES["similarity"](t.clone(), t))) == 0.0
    other = torch.randn(t.shape[0], width, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    base = LOSSES["similarity"](other, t)
    assert float(base) >= 0.0
    assert _close(LOSSES["similarity"](other * scale, t), base, rtol=1e-6, atol=1e-9)
    assert _close(LOSSES["similarity"](other, t * scale), base, rtol=1e-6, atol=1e-9)


@FAST
@given(feature_batches(n=(1, 6), shape=(4,), dtype=np.float64), st.integers(0, 4), st.floats(1e-2, 1e2),
       st.integers(0, 99))
def test_rkd_is_invariant_to_scale_rotation_and_permutation_of_the_student(t, extra, scale, seed):
    # angles between near-coincident points are ill-conditioned (undefined in the limit): keep points apart or equal
    gaps = torch.cdist(t, t)
    assume(bool(((gaps == 0) | (gaps > 1e-3 * (1 + float(t.abs().max())))).all()))
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(t.shape[0], 3 + extra, generator=gen, dtype=torch.float64)
    base = LOSSES["rkd"](s, t)
    assert float(base) >= 0.0
    perm = torch.randperm(s.shape[1], generator=gen)
    assert _close(LOSSES["rkd"](scale * s[:, perm], t), base, rtol=1e-6, atol=1e-9)
    # an isometric embedding (rotation into more dimensions), uniformly scaled, keeps all relations: loss 0
    embedded = scale * (t @ _orthonormal_rows(4, 4 + extra, seed))
    assert abs(float(LOSSES["rkd"](embedded, t))) < 1e-8


# --- ensembles --------------------------------------------------------------------------------------------------------

@FAST
@given(logit_pairs(), st.integers(1, 4), st.sampled_from(MODES), st.floats(1, 8), st.floats(0, 1))
def test_an_ensemble_of_identical_teachers_is_one_teacher(pair, k, mode, temperature, alpha):
    s, t, y = pair
    single = LOSSES["kd"](s, t, y, temperature=temperature, alpha=alpha)
    ensemble = ensemble_kd(s, t.expand(k, *t.shape), y, mode=mode, temperature=temperature, alpha=alpha)
    assert _close(ensemble, single, rtol=1e-4, atol=1e-4)


@FAST
@given(logit_pairs(), st.integers(2, 4), st.sampled_from(MODES), st.data())
def test_all_weight_on_teacher_zero_is_kd_against_teacher_zero(pair, k, mode, data):
    s, t, y = pair
    others = torch.stack([_tensor(data.draw, tuple(t.shape)) for _ in range(k - 1)])
    teachers = torch.cat([t[None], others])
    weights = [data.draw(st.floats(0.1, 10))] + [0.0] * (k - 1)
    ensemble = ensemble_kd(s, teachers, y, mode=mode, weights=weights, temperature=3.0, alpha=0.8)
    assert _close(ensemble, LOSSES["kd"](s, t, y, temperature=3.0, alpha=0.8), rtol=1e-4, atol=1e-4)


@FAST
@given(logit_pairs(), st.integers(2, 4), st.sampled_from(MODES), st.data())
def test_ensemble_target_is_a_mixture_of_the_teachers_and_ignores_their_order(pair, k, mode, data):
    s, t, y = pair
    teachers = torch.stack([t] + [_tensor(data.draw, tuple(t.shape)) for _ in range(k - 1)])
    weights = data.draw(st.lists(st.floats(0.1, 10), min_size=k, max_size=k))
    probs = ensemble_targets(teachers, mode, weights, 2.0).exp()
    each = F.softmax(teachers / 2.0, dim=-1)
    assert torch.allclose(probs.sum(-1), torch.ones(len(s)), atol=1e-5)
    assert bool((probs >= each.amin(0) - 1e-6).all() and (probs <= each.amax(0) + 1e-6).all())
    order = torch.randperm(k, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 99))))
    loss = ensemble_kd(s, teachers, y, mode=mode, weights=weights)
    swapped = ensemble_kd(s, teachers[order], y, mode=mode, weights=[weights[i] for i in order.tolist()])
    assert _close(swapped, loss, rtol=1e-4, atol=1e-4)


@FAST
@given(logit_pairs(dtype=np.float64), st.integers(2, 4), st.data())
def test_loss_average_has_the_gradient_of_kd_against_its_ensemble_target(pair, k, data):
    # Σ_k w_k KL(p_k ‖ q) = Σ_k w_k Σ p_k log p_k − Σ (Σ_k w_k p_k) log q: the student sees the mixture only.
    s, t, y = pair
    teachers = torch.stack([t] + [_tensor(data.draw, tuple(t.shape), dtype=np.float64) for _ in range(k - 1)])
    weights = data.draw(st.lists(st.floats(0.1, 10), min_size=k, max_size=k))
    a, b = s.clone().requires_grad_(), s.clone().requires_grad_()
    ensemble_kd(a, teachers, y, mode="loss_average", weights=weights, temperature=2.0, alpha=1.0).backward()
    target = ensemble_targets(teachers, "loss_average", weights, 2.0)
    (F.kl_div(F.log_softmax(b / 2.0, -1), target, reduction="batchmean", log_target=True) * 4.0).backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-9)


# --- a distributed rank's share of a batch ---------------------------------------------------------------------------

@FAST
@given(logit_pairs(n=(2, 9), dtype=np.float64), st.integers(2, 4), st.sampled_from(["kd", "dkd", "ce", "ensemble"]))
def test_the_ranks_parts_of_a_batch_add_up_to_the_whole_batch_loss(pair, world, name):
    """Under DDP each rank returns its rows' part of the batch's loss × world (DDP divides by world again): the
    parts must add up to the whole batch's loss whatever the shares' sizes and labelled rows."""
    from edgekd.distill.batch_share import Share, batch_share

    s, t, y = pair
    assume(len(s) >= world)
    teachers = torch.stack([t, t.flip(0)])

    def loss(rows: torch.Tensor) -> torch.Tensor:
        if name == "ensemble":
            return ensemble_kd(s[rows], teachers[:, rows], y[rows], mode="confidence", alpha=0.5)
        return LOSSES[name](s[rows], t[rows], y[rows], **({"alpha": 0.5} if name == "kd" else {}))

    rows = torch.arange(len(s))
    sizes = tuple(len(rows[r::world]) for r in range(world))
    parts = []
    for rank in range(world):
        with batch_share(Share(rank, sizes, int((y != UNLABELLED).sum()))):
            parts.append(loss(rows[rank::world]))
    assert _close(sum(parts) / world, loss(rows), rtol=1e-9, atol=1e-9)


# --- robustness -----------------------------------------------------------------------------------------------------

@BROAD
@given(st.sampled_from(sorted(LOSSES.names())), st.floats(1e-30, 1e30), st.data())
def test_no_nan_in_value_or_gradient_for_any_finite_input(name, bound, data):
    logits = loss_kind(name) == "logits"
    x = (data.draw(logit_pairs(n=(1, 5), bound=bound, tiny=True))[0] if logits
         else data.draw(feature_batches(bound=bound, tiny=True)))
    t = _tensor(data.draw, tuple(x.shape), bound, tiny=True)
    x = x.clone().requires_grad_()
    if logits:
        y = torch.tensor(data.draw(st.lists(st.integers(UNLABELLED, x.shape[1] - 1), min_size=len(x),
                                            max_size=len(x))))
        loss = LOSSES[name](x, t, y)
        for mode in MODES:
            assert not bool(torch.isnan(ensemble_kd(x.detach(), torch.stack([t, x.detach()]), y, mode=mode)))
    else:
        loss = LOSSES[name](x, t)
    assert not bool(torch.isnan(loss))
    if loss.requires_grad:
        loss.backward()
        assert x.grad is None or not bool(torch.isnan(x.grad).any())


@pytest.mark.parametrize("n", [1, 2, 3])
def test_rkd_on_tiny_batches_is_finite_and_differentiable(n):
    s = torch.randn(n, 4, requires_grad=True)
    loss = LOSSES["rkd"](s, torch.randn(n, 6))
    loss.backward()
    assert torch.isfinite(loss) and bool(torch.isfinite(s.grad).all())
    if n == 1:
        assert float(loss.detach()) == 0.0
