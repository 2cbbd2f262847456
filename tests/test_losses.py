"""The KD loss convention (α on the soft term, T² scaling) and the masked hard term."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from edgekd.distill.losses import LOSSES, UNLABELLED, soft_kl

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
