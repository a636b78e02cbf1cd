"""Hypothesis properties of the continuum: ends, monotonicity, equivariance, invariances."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pytorch_metric_learning.reducers import SumReducer

from vse_losses import LpViolationLoss, MaxViolationLoss, MixedViolationLoss, SumHingeLoss, TopKViolationLoss

SETTINGS = settings(max_examples=25, deadline=None)


@st.composite
def batches(draw, min_b=2, max_b=7):
    B = draw(st.integers(min_b, max_b))
    D = draw(st.integers(2, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    y = torch.randn(B, D, generator=g, dtype=torch.float64)
    labels = None
    if draw(st.booleans()):
        labels = torch.randint(0, max(1, B - 1), (B,), generator=g)
    margin = draw(st.sampled_from([0.0, 0.2, 0.5, 2.0]))
    impl = draw(st.sampled_from(["dense", "chunked"]))
    return x, y, labels, margin, impl


def value(loss_fn, x, y, labels):
    if labels is None:
        return loss_fn(x, y)
    return loss_fn(x, labels, ref_emb=y, ref_labels=labels)


@SETTINGS
@given(batches())
def test_continuum_ends_are_sh_and_mh(batch):
    x, y, labels, margin, impl = batch
    kw = dict(margin=margin, impl=impl, reducer=SumReducer())
    sh = value(SumHingeLoss(**kw), x, y, labels)
    mh = value(MaxViolationLoss(**kw), x, y, labels)
    B = x.shape[0]
    torch.testing.assert_close(value(TopKViolationLoss(k=1, **kw), x, y, labels), mh, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(value(TopKViolationLoss(k=B, **kw), x, y, labels), sh, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(value(LpViolationLoss(p=1, **kw), x, y, labels), sh, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(value(LpViolationLoss(p=math.inf, **kw), x, y, labels), mh, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(value(LpViolationLoss(p=200.0, **kw), x, y, labels), mh, rtol=0.05, atol=1e-9)
    torch.testing.assert_close(value(MixedViolationLoss(mix=0.0, **kw), x, y, labels), sh, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(value(MixedViolationLoss(mix=1.0, **kw), x, y, labels), mh, rtol=1e-10, atol=1e-12)
    assert mh <= sh + 1e-12


@SETTINGS
@given(batches())
def test_monotone_in_k_and_p(batch):
    x, y, labels, margin, impl = batch
    kw = dict(margin=margin, impl=impl, reducer=SumReducer())
    by_k = [value(TopKViolationLoss(k=k, **kw), x, y, labels).item() for k in range(1, x.shape[0] + 1)]
    assert all(a <= b + 1e-12 for a, b in zip(by_k, by_k[1:]))
    by_p = [value(LpViolationLoss(p=p, **kw), x, y, labels).item() for p in (1.0, 1.5, 2.0, 3.0, 8.0, math.inf)]
    assert all(a >= b - 1e-12 for a, b in zip(by_p, by_p[1:]))


@SETTINGS
@given(batches(), st.sampled_from(["sum", "max", "topk", "lp"]))
def test_equivariant_under_permuting_pairs(batch, kind):
    x, y, labels, margin, impl = batch
    loss_fn = {
        "sum": SumHingeLoss(),
        "max": MaxViolationLoss(),
        "topk": TopKViolationLoss(k=2),
        "lp": LpViolationLoss(p=3.0),
    }[kind]
    loss_fn.margin, loss_fn.impl = margin, impl
    perm = torch.randperm(x.shape[0])
    perm_labels = None if labels is None else labels[perm]
    torch.testing.assert_close(
        value(loss_fn, x[perm], y[perm], perm_labels), value(loss_fn, x, y, labels), rtol=1e-10, atol=1e-12
    )


@SETTINGS
@given(batches(), st.floats(0.01, 100.0))
def test_invariant_to_rescaling_under_cosine(batch, scale):
    x, y, labels, margin, impl = batch
    for loss_fn in (
        SumHingeLoss(margin=margin, impl=impl),
        MaxViolationLoss(margin=margin, impl=impl),
        LpViolationLoss(p=2.0, margin=margin, impl=impl),
    ):
        torch.testing.assert_close(
            value(loss_fn, x * scale, y / scale, labels), value(loss_fn, x, y, labels), rtol=1e-9, atol=1e-12
        )
