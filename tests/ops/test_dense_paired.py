"""The dense paired terms (``ops/dense_paired.py``), whose backward is written out: values and
gradients against an explicit float64 loop of the formulas (autograd through the loop), gradcheck,
sparse violations (most hinges 0, where a norm's gradient must vanish), a learned temperature,
F.normalize's behaviour at a zero row, and autocast."""

import math

import pytest
import torch
import torch.nn.functional as F

from tests.support.cases import NORM_IDS, NORM_KWARGS
from tests.support.reference import norm_of
from vse_losses.norms import Norm
from vse_losses.ops.dense_paired import dense_paired_terms

F64 = {"dtype": torch.float64}
NORMS = [Norm(**kw) for kw in NORM_KWARGS]
IDS = NORM_IDS


def loop_terms(x, y, margin, norm, directions, cosine, tau=None):
    """The paper's terms, pair by pair and negative by negative (i2t terms first)."""
    if cosine:
        x, y = F.normalize(x, dim=1), F.normalize(y, dim=1)
    B = x.shape[0]
    tau = norm.temperature if tau is None else tau
    out = []
    for direction in ("i2t", "t2i"):
        if directions not in ("both", direction):
            continue
        for j in range(B):
            pos = x[j] @ y[j]
            negs = [(x[j] @ y[n]) if direction == "i2t" else (x[n] @ y[j]) for n in range(B) if n != j]
            v = [margin - pos + s for s in negs]
            out.append(norm_of(v, norm.kind, k=norm.k, p=norm.p, mix=norm.mix, temperature=tau))
    return torch.stack(out)


def _inputs(B, D, seed, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g, **F64) * torch.logspace(-2, 2, B, **F64)[:, None] * spread
    return x, torch.randn(B, D, generator=g, **F64)


@pytest.mark.parametrize("norm", NORMS, ids=IDS)
@pytest.mark.parametrize("directions", ["both", "i2t", "t2i"])
@pytest.mark.parametrize("cosine", [True, False])
@pytest.mark.parametrize("margin", [0.2, -0.3])  # −0.3: most hinges are 0, some rows have none
def test_equals_the_explicit_loop(norm, directions, cosine, margin):
    x0, y0 = _inputs(9, 5, seed=3)
    if not cosine:
        x0 = F.normalize(x0, dim=1) * 0.8  # dot products on the scale of the margin
    got_x, got_y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
    ref_x, ref_y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
    got = dense_paired_terms(got_x, got_y, margin, norm, directions, cosine)
    ref = loop_terms(ref_x, ref_y, margin, norm, directions, cosine)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    w = torch.linspace(0.5, 2.0, got.numel(), **F64)  # unequal output gradients
    (got * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(got_x.grad, ref_x.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_y.grad, ref_y.grad, rtol=1e-10, atol=1e-12)
    if margin < 0 and norm.kind not in ("lse", "infonce"):
        assert (got == 0).any() and (got > 0).any()  # the case is sparse, not empty


@pytest.mark.parametrize("norm", NORMS, ids=IDS)
@pytest.mark.parametrize("trained", ["x", "y"])
@pytest.mark.parametrize("directions", ["both", "t2i"])
def test_one_input_trained(norm, trained, directions):
    """A frozen tower (one input without gradient) gets none, the other the loop's gradient."""
    x0, y0 = _inputs(7, 4, seed=11)
    got = [x0.clone(), y0.clone()]
    ref = [x0.clone(), y0.clone()]
    i = 0 if trained == "x" else 1
    got[i].requires_grad_(), ref[i].requires_grad_()
    dense_paired_terms(*got, 0.2, norm, directions, True).sum().backward()
    loop_terms(*ref, 0.2, norm, directions, True).sum().backward()
    torch.testing.assert_close(got[i].grad, ref[i].grad, rtol=1e-10, atol=1e-12)
    assert got[1 - i].grad is None


def test_mixed_input_dtypes():
    """x in float32 and y in float64: terms in float64, each gradient in its input's dtype."""
    x0, y0 = _inputs(6, 4, seed=13)
    x, y = x0.float().requires_grad_(), y0.clone().requires_grad_()
    rx, ry = x0.float().double().requires_grad_(), y0.clone().requires_grad_()
    got = dense_paired_terms(x, y, 0.2, Norm("sum"), "both", True)
    ref = loop_terms(rx, ry, 0.2, Norm("sum"), "both", True)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    got.sum().backward(), ref.sum().backward()
    assert x.grad.dtype == torch.float32 and y.grad.dtype == torch.float64
    torch.testing.assert_close(x.grad, rx.grad.float())
    torch.testing.assert_close(y.grad, ry.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("norm", NORMS, ids=IDS)
def test_gradcheck(norm):
    x, y = _inputs(6, 4, seed=5)
    x.requires_grad_(), y.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: dense_paired_terms(a, b, 0.1, norm, "both", True), (x, y))


@pytest.mark.parametrize("kind", ["lse", "infonce"])
@pytest.mark.parametrize("directions", ["both", "t2i"])
def test_learned_temperature(kind, directions):
    x0, y0 = _inputs(7, 4, seed=7)
    margin = 0.2 if kind == "lse" else 0.0
    grads = []
    for fn in (dense_paired_terms, loop_terms):
        logit_scale = torch.tensor(math.log(1 / 0.07), **F64, requires_grad=True)
        tau = 1 / logit_scale.exp()
        x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
        if fn is dense_paired_terms:
            terms = fn(x, y, margin, Norm(kind, temperature=tau), directions, True)
        else:
            terms = fn(x, y, margin, Norm(kind, temperature=0.07), directions, True, tau=tau)
        (terms * torch.arange(1, terms.numel() + 1, **F64)).sum().backward()
        grads.append((logit_scale.grad, x.grad, y.grad))
    for got, ref in zip(*grads):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    tau = torch.tensor(0.2, **F64, requires_grad=True)
    x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b, t: dense_paired_terms(a, b, margin, Norm(kind, temperature=t), directions, True), (x, y, tau)
    )


def test_zero_row_as_f_normalize():
    # a row of norm below ε: F.normalize divides by ε and its gradient has no projection
    x0, y0 = _inputs(5, 3, seed=11)
    x0[2] = 0.0
    y0[4] = 1e-14
    out = []
    for ref in (False, True):
        x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
        norm = Norm("lp", p=2.0)
        terms = loop_terms(x, y, 0.2, norm, "both", True) if ref else dense_paired_terms(x, y, 0.2, norm, "both", True)
        terms.sum().backward()
        out.append((terms, x.grad, y.grad))
    for got, ref in zip(*out):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("B", [0, 1])
def test_no_negative(B):
    x, y = torch.randn(B, 3, requires_grad=True), torch.randn(B, 3, requires_grad=True)
    for norm in NORMS:
        terms = dense_paired_terms(x, y, 0.2, norm, "both", True)
        assert terms.shape == (2 * B,) and (terms == 0).all()
        terms.sum().backward()
        assert (x.grad == 0).all() and (y.grad == 0).all()
        x.grad = y.grad = None


def test_half_inputs_and_autocast():
    # 16-bit inputs are computed in float32; under autocast the product is not cast down
    x, y = _inputs(8, 16, seed=2)
    ref = dense_paired_terms(x, y, 0.2, Norm("max"), "both", True)
    xb, yb = x.bfloat16().requires_grad_(), y.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = dense_paired_terms(xb, yb, 0.2, Norm("max"), "both", True)
    assert got.dtype == torch.float32
    got.sum().backward()
    assert xb.grad.dtype == torch.bfloat16 and torch.isfinite(xb.grad.float()).all()
    exact = dense_paired_terms(xb.detach().double(), yb.detach().double(), 0.2, Norm("max"), "both", True)
    torch.testing.assert_close(got.double(), exact, rtol=1e-5, atol=1e-6)  # float32 arithmetic
    assert (ref - exact).abs().max() < 0.05  # bf16 rounding of the inputs only
