"""The dense labelled terms (``ops/dense_labelled.py``), whose backward is written out: values,
anchors and gradients against an explicit float64 loop of the formulas over the positive pairs
(autograd through the loop), for repeated labels, rows without a positive, a label without
negatives, one modality, both/one direction, cosine and dot, a learned temperature, and gradcheck."""

import math

import pytest
import torch
import torch.nn.functional as F

from tests.support.cases import NORM_IDS, NORM_KWARGS
from tests.support.reference import norm_of
from vse_losses.norms import Norm
from vse_losses.ops.dense_labelled import dense_labelled_terms

F64 = {"dtype": torch.float64}
NORMS = [Norm(**kw) for kw in NORM_KWARGS]
IDS = NORM_IDS


def loop_terms(x, y, labels, ref_labels, margin, norm, directions, cosine, tau=None):
    """The terms pair by pair and negative by negative (i2t terms first; the pairs row-major)."""
    self_ref = y is None
    y = x if self_ref else y
    if cosine:
        x = F.normalize(x, dim=1)
        y = x if self_ref else F.normalize(y, dim=1)
    B, M = x.shape[0], y.shape[0]
    tau = norm.temperature if tau is None else tau
    pairs = [(a, p) for a in range(B) for p in range(M) if labels[a] == ref_labels[p] and not (self_ref and a == p)]
    out, anchors = [], []
    for direction in ("i2t", "t2i"):
        if directions not in ("both", direction):
            continue
        for a, p in pairs:
            pos = x[a] @ y[p]
            if direction == "i2t":
                negs = [x[a] @ y[n] for n in range(M) if labels[a] != ref_labels[n] and not (self_ref and n == a)]
            else:
                negs = [x[n] @ y[p] for n in range(B) if labels[n] != ref_labels[p] and not (self_ref and n == p)]
            v = [margin - pos + s for s in negs]
            anchors.append(a)
            out.append(norm_of(v, norm.kind, k=norm.k, p=norm.p, mix=norm.mix, temperature=tau))
    return torch.stack(out), torch.tensor(anchors, dtype=torch.int64)


def _inputs(B, M, D, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g, **F64) * torch.logspace(-2, 2, B, **F64)[:, None]
    return x, torch.randn(M, D, generator=g, **F64)


# repeated labels, a row whose label no column has (no term), and label 7 on every column but one
LABELS = torch.tensor([0, 1, 1, 2, 3, 3, 3, 9, 7])
REF_LABELS = torch.tensor([3, 1, 0, 2, 1, 5, 3, 7, 7, 7, 4])


@pytest.mark.parametrize("norm", NORMS, ids=IDS)
@pytest.mark.parametrize("directions", ["both", "i2t", "t2i"])
@pytest.mark.parametrize("form", ["cross", "one modality", "dot"])
@pytest.mark.parametrize("margin", [0.2, -0.3])  # −0.3: most hinges are 0
def test_equals_the_explicit_loop(norm, directions, form, margin):
    self_ref = form == "one modality"
    cosine = form != "dot"
    x0, y0 = _inputs(9, 11, 5, seed=3)
    if not cosine:
        x0 = F.normalize(x0, dim=1) * 0.8  # dot products on the scale of the margin
    labels, ref_labels = (LABELS, LABELS) if self_ref else (LABELS, REF_LABELS)
    got_x, ref_x = x0.clone().requires_grad_(), x0.clone().requires_grad_()
    got_y = ref_y = None
    if not self_ref:
        got_y, ref_y = y0.clone().requires_grad_(), y0.clone().requires_grad_()
    got, anchors = dense_labelled_terms(got_x, got_y, labels, ref_labels, margin, norm, directions, cosine)
    ref, ref_anchors = loop_terms(ref_x, ref_y, labels, ref_labels, margin, norm, directions, cosine)
    assert torch.equal(anchors, ref_anchors)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    w = torch.linspace(0.5, 2.0, got.numel(), **F64)  # unequal output gradients
    (got * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(got_x.grad, ref_x.grad, rtol=1e-10, atol=1e-12)
    if not self_ref:
        torch.testing.assert_close(got_y.grad, ref_y.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("norm", NORMS, ids=IDS)
def test_gradcheck(norm):
    x, y = _inputs(6, 7, 4, seed=5)
    x.requires_grad_(), y.requires_grad_()
    labels, ref_labels = torch.tensor([0, 1, 1, 2, 3, 0]), torch.tensor([1, 0, 2, 2, 4, 1, 3])
    assert torch.autograd.gradcheck(
        lambda a, b: dense_labelled_terms(a, b, labels, ref_labels, 0.1, norm, "both", True)[0], (x, y)
    )


@pytest.mark.parametrize("kind", ["lse", "infonce"])
@pytest.mark.parametrize("form", ["cross", "one modality"])
def test_learned_temperature(kind, form):
    x0, y0 = _inputs(9, 11, 5, seed=7)
    self_ref = form == "one modality"
    labels, ref_labels = (LABELS, LABELS) if self_ref else (LABELS, REF_LABELS)
    grads = []
    for fn in ("got", "ref"):
        tau = torch.tensor(0.2, **F64, requires_grad=True)
        x = x0.clone().requires_grad_()
        y = None if self_ref else y0.clone().requires_grad_()
        if fn == "got":
            terms = dense_labelled_terms(x, y, labels, ref_labels, 0.1, Norm(kind, temperature=tau), "both", True)[0]
        else:
            terms = loop_terms(x, y, labels, ref_labels, 0.1, Norm(kind, temperature=0.2), "both", True, tau=tau)[0]
        (terms * torch.linspace(0.5, 2, terms.numel(), **F64)).sum().backward()
        grads.append((tau.grad, x.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert not math.isnan(grads[0][0].item())


@pytest.mark.parametrize("trained", ["x", "y"])
def test_one_input_trained(trained):
    x0, y0 = _inputs(9, 11, 5, seed=9)
    got, ref = [x0.clone(), y0.clone()], [x0.clone(), y0.clone()]
    i = 0 if trained == "x" else 1
    got[i].requires_grad_(), ref[i].requires_grad_()
    dense_labelled_terms(*got, LABELS, REF_LABELS, 0.2, Norm("sum"), "both", True)[0].sum().backward()
    loop_terms(*ref, LABELS, REF_LABELS, 0.2, Norm("sum"), "both", True)[0].sum().backward()
    torch.testing.assert_close(got[i].grad, ref[i].grad, rtol=1e-10, atol=1e-12)
    assert got[1 - i].grad is None


def test_no_positive_pair():
    x, y = torch.randn(4, 3, requires_grad=True), torch.randn(5, 3, requires_grad=True)
    terms, anchors = dense_labelled_terms(x, y, torch.arange(4), torch.arange(5) + 10, 0.2, Norm("max"), "both", True)
    assert terms.shape == (0,) and anchors.shape == (0,)
    (terms.sum() + 0 * x.sum() + 0 * y.sum()).backward()
    assert x.grad.abs().sum() == 0 and y.grad.abs().sum() == 0


def test_zero_row_as_f_normalize():
    x0, y0 = _inputs(9, 11, 5, seed=11)
    x0[2] = 0
    got_x, ref_x = x0.clone().requires_grad_(), x0.clone().requires_grad_()
    got_y, ref_y = y0.clone().requires_grad_(), y0.clone().requires_grad_()
    dense_labelled_terms(got_x, got_y, LABELS, REF_LABELS, 0.2, Norm("sum"), "both", True)[0].sum().backward()
    loop_terms(ref_x, ref_y, LABELS, REF_LABELS, 0.2, Norm("sum"), "both", True)[0].sum().backward()
    torch.testing.assert_close(got_x.grad, ref_x.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_y.grad, ref_y.grad, rtol=1e-10, atol=1e-12)


def test_inputs_are_not_modified():
    x, y = _inputs(9, 11, 5, seed=13)
    x_copy = x.clone()
    dense_labelled_terms(x, None, LABELS, LABELS, 0.2, Norm("sum"), "both", True)
    dense_labelled_terms(x, y, LABELS, REF_LABELS, 0.2, Norm("sum"), "both", True)
    assert torch.equal(x, x_copy)


@pytest.mark.parametrize("norm", NORMS, ids=IDS)
@pytest.mark.parametrize("where", ["x row without positive", "x row with positives", "y row", "one modality"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_nan_or_inf_input_reaches_a_term(norm, where, bad):
    """With the cosine and both directions the planner adds no NaN guard to these terms: a NaN/Inf
    anywhere in an input must make some term NaN by itself (its whole row/column of S is NaN). With
    one direction it need not (a row without positive is no i2t term's), and the guard stays."""
    directions = "both"
    x, y = _inputs(9, 11, 5, seed=17)
    row = {"x row without positive": 7, "x row with positives": 4, "y row": 6, "one modality": 2}[where]
    (y if where == "y row" else x)[row, 1] = bad
    self_ref = where == "one modality"
    labels, ref_labels = (LABELS, LABELS) if self_ref else (LABELS, REF_LABELS)
    terms, _ = dense_labelled_terms(x, None if self_ref else y, labels, ref_labels, 0.2, norm, directions, True)
    assert terms.numel() > 0 and torch.isnan(terms).any()


@pytest.mark.parametrize("directions", ["i2t", "t2i"])
def test_one_direction_keeps_the_guard(directions):
    """A NaN in a row that no term of the direction reads still gives a NaN loss (the planner's guard)."""
    import vse_losses

    x, y = _inputs(9, 11, 5, seed=19)
    if directions == "i2t":
        x[7, 0] = float("nan")  # label 9: no positive, so no i2t term reads its row
    else:
        y[5, 0] = float("nan")  # label 5: no positive, so no t2i term reads its column
    loss_fn = vse_losses.SumHingeLoss(directions=directions, impl="dense")
    terms, _ = dense_labelled_terms(x, y, LABELS, REF_LABELS, 0.2, Norm("sum"), directions, True)
    assert terms.numel() > 0 and not torch.isnan(terms).any()  # the terms alone miss it
    assert torch.isnan(loss_fn(x, LABELS, ref_emb=y, ref_labels=REF_LABELS))


def test_half_inputs_and_autocast():
    """16-bit inputs are computed in float32; under autocast the product is not cast down."""
    x, y = _inputs(9, 11, 16, seed=23)
    xb, yb = x.bfloat16().requires_grad_(), y.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = dense_labelled_terms(xb, yb, LABELS, REF_LABELS, 0.2, Norm("lse", temperature=0.1), "both", True)
    assert got.dtype == torch.float32
    got.sum().backward()
    assert xb.grad.dtype == torch.bfloat16 and yb.grad.dtype == torch.bfloat16
    assert torch.isfinite(xb.grad.float()).all() and torch.isfinite(yb.grad.float()).all()
    exact, _ = dense_labelled_terms(
        xb.detach().double(), yb.detach().double(), LABELS, REF_LABELS, 0.2, Norm("lse", temperature=0.1), "both", True
    )
    torch.testing.assert_close(got.double(), exact, rtol=1e-5, atol=1e-6)  # float32 arithmetic
