"""The order-embedding similarity: the score matrix against an explicit float64 loop of
−‖max(0, c − im)‖₂, gradcheck, chunked == dense (values, gradients, memory), every loss through
OrderSimilarity against the loop of the loss's terms, the functional form, and bad input."""

import math

import pytest
import torch
from pytorch_metric_learning.reducers import SumReducer

import vse_losses
from tests.support.cases import LOSS_CASES
from tests.support.reference import loop_terms
from vse_losses import OrderSimilarity
from vse_losses.functional import max_violation_loss, order_scores, sum_hinge_loss


def loop_order(x, y):
    """S[i, j] = −sqrt(Σ_d max(0, y[j, d] − x[i, d])²), element by element, float64."""
    B, M, D = x.shape[0], y.shape[0], x.shape[1]
    S = torch.zeros(B, M, dtype=torch.float64)
    for i in range(B):
        for j in range(M):
            total = 0.0
            for d in range(D):
                total += max(0.0, float(y[j, d]) - float(x[i, d])) ** 2
            S[i, j] = -math.sqrt(total)
    return S


def loop_order_autograd(x, y):
    """The same loop, differentiable (a stack of 0-d float64 tensors), for the loss gradients."""
    rows = []
    for i in range(x.shape[0]):
        row = []
        for j in range(y.shape[0]):
            r = torch.clamp(y[j] - x[i], min=0)
            sq = (r * r).sum()
            row.append(-torch.sqrt(sq) if float(sq.detach()) > 0 else sq * 0)
        rows.append(torch.stack(row))
    return torch.stack(rows)


IMPLS = [("dense", None), ("chunked", 1), ("chunked", 2), ("chunked", None), ("auto", None)]


@pytest.mark.parametrize("impl,chunk_rows", IMPLS)
@pytest.mark.parametrize("shape", [(5, 7, 3), (6, 4, 1), (1, 3, 5)])
def test_scores_equal_the_loop(impl, chunk_rows, shape):
    B, M, D = shape
    x, y = torch.randn(B, D, dtype=torch.float64), torch.randn(M, D, dtype=torch.float64)
    x[0] = 10.0  # a row above every caption: scores exactly 0
    S = order_scores(x, y, impl, chunk_rows)
    assert S.dtype == torch.float64 and S.shape == (B, M)
    torch.testing.assert_close(S, loop_order(x, y), rtol=1e-12, atol=1e-12)
    assert (S[0] == 0).all()


@pytest.mark.parametrize("impl,chunk_rows", IMPLS)
def test_gradcheck(impl, chunk_rows):
    # random inputs: no difference y − x within gradcheck's step of the clamp's kink
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: order_scores(a, b, impl, chunk_rows), (x, y))


@pytest.mark.parametrize("chunk_rows", [1, 3, None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunked_equals_dense_with_gradients(chunk_rows, dtype):
    x0, y0 = torch.randn(9, 6, dtype=dtype), torch.randn(11, 6, dtype=dtype)
    x0[2] = 5.0  # S = 0 on row 2: the gradient there is 0, not NaN
    g = torch.randn(9, 11, dtype=dtype)
    out = []
    for impl in ("dense", "chunked"):
        x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
        S = order_scores(x, y, impl, chunk_rows)
        (S * g).sum().backward()
        out.append((S.detach(), x.grad, y.grad))
    for a, b in zip(*out):
        torch.testing.assert_close(a, b)
    assert torch.isfinite(out[1][1]).all() and (out[1][1][2] == 0).all()


def test_half_inputs_give_float32_scores():
    x, y = torch.randn(3, 4).half(), torch.randn(5, 4).half()
    S = order_scores(x, y, "chunked")
    assert S.dtype == torch.float32
    torch.testing.assert_close(S.double(), loop_order(x.double(), y.double()), rtol=1e-6, atol=1e-6)


def _max_saved_numel(fn):
    """The largest tensor autograd saves for the backward while ``fn`` runs."""
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return max(sizes)


def test_chunked_never_saves_the_broadcast():
    B, M, D = 16, 12, 8
    x, y = torch.randn(B, D, requires_grad=True), torch.randn(M, D, requires_grad=True)
    labels, ref_labels = torch.arange(B) % 12, torch.arange(M)
    sizes = {}
    for impl in ("chunked", "dense"):
        loss_fn = vse_losses.SumHingeLoss(distance=OrderSimilarity(impl=impl))
        sizes[impl] = _max_saved_numel(lambda f=loss_fn: f(x, labels, ref_emb=y, ref_labels=ref_labels))
    # the dense terms' (pairs, B) and (pairs, M) blocks of the score matrix, nothing (B, M, D)
    assert sizes["chunked"] <= 16 * max(B, M) < B * M * D
    assert sizes["dense"] == B * M * D  # the test can fail: the dense formula saves the broadcast


@pytest.mark.parametrize("impl", ["dense", "chunked"])
@pytest.mark.parametrize("name,kwargs,norm", LOSS_CASES)
@pytest.mark.parametrize("form", ["paired", "labels"])
def test_every_loss_equals_the_loop(name, kwargs, norm, impl, form):
    x0 = torch.rand(6, 4, dtype=torch.float64)
    y0 = torch.rand(6 if form == "paired" else 7, 4, dtype=torch.float64) * 0.8
    labels = torch.tensor([0, 1, 1, 2, 3, 4]) if form == "labels" else None
    ref_labels = torch.tensor([1, 0, 2, 1, 4, 5, 3]) if form == "labels" else None
    loss_fn = getattr(vse_losses, name)(
        **{**kwargs, "margin": 0.3, "reducer": SumReducer()}, distance=OrderSimilarity(impl=impl, chunk_rows=2)
    )
    x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
    got = loss_fn(x, y) if form == "paired" else loss_fn(x, labels, ref_emb=y, ref_labels=ref_labels)
    got.backward()
    xr, yr = x0.clone().requires_grad_(), y0.clone().requires_grad_()
    want = loop_terms(loop_order_autograd(xr, yr), labels, ref_labels, margin=0.3, **norm).sum()
    want.backward()
    torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(y.grad, yr.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["SumHingeLoss", "MaxViolationLoss", "LogSumExpViolationLoss"])
def test_loss_gradcheck(name):
    kwargs = {"temperature": 0.5} if name == "LogSumExpViolationLoss" else {}
    loss_fn = getattr(vse_losses, name)(margin=2.0, distance=OrderSimilarity(impl="chunked", chunk_rows=2), **kwargs)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: loss_fn(a, b), (x, y))


@pytest.mark.parametrize("impl", ["auto", "dense", "chunked"])
def test_functional_equals_the_class(impl):
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 2, 3, 3])
    for fn, cls in ((sum_hinge_loss, vse_losses.SumHingeLoss), (max_violation_loss, vse_losses.MaxViolationLoss)):
        got = fn(x, y, labels=labels, similarity="order", impl=impl, reduction="sum")
        want = cls(distance=OrderSimilarity(), reducer=SumReducer())(x, labels, ref_emb=y)
        torch.testing.assert_close(got, want)
        # one modality: the embeddings against themselves, a sample not paired with itself
        got = fn(x, labels=labels, similarity="order", impl=impl, reduction="none")
        kind = "sum" if fn is sum_hinge_loss else "max"
        want = loop_terms(loop_order(x, x), labels, labels, self_ref=True, margin=0.2, kind=kind)
        torch.testing.assert_close(got, want)


def test_pml_distance_interface():
    d = OrderSimilarity()
    x, y = torch.rand(4, 3), torch.rand(4, 3)
    assert d.is_inverted and not d.normalize_embeddings
    torch.testing.assert_close(d(x, y), loop_order(x, y).float())
    torch.testing.assert_close(d.pairwise_distance(x, y), torch.diagonal(loop_order(x, y)).float())
    # with PML's normalisation asked for, the rows are l2-normalised first
    torch.testing.assert_close(
        OrderSimilarity(normalize_embeddings=True)(x, y),
        loop_order(torch.nn.functional.normalize(x), torch.nn.functional.normalize(y)).float(),
    )
    # a miner of this library with it: the hardest negative is the loop's argmax off the diagonal
    S = loop_order(x, y).masked_fill(torch.eye(4, dtype=torch.bool), -math.inf)
    a, p, n = vse_losses.HardestNegativeMiner(distance=OrderSimilarity())(x, y)
    assert torch.equal(n, S.argmax(1)[a])


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: OrderSimilarity(impl="triton"), "no Triton kernel"),
        (lambda: order_scores(torch.randn(2, 3), torch.randn(2, 3), "triton"), "no Triton kernel"),
        (lambda: max_violation_loss(torch.randn(2, 3), torch.randn(2, 3), similarity="order", impl="triton"), "Triton"),
        (lambda: OrderSimilarity(impl="fast"), "impl must be one of"),
        (lambda: OrderSimilarity(chunk_rows=0), "chunk_rows"),
        (lambda: order_scores(torch.randn(2, 3), torch.randn(2, 3), "chunked", 1.5), "chunk_rows"),
        (lambda: OrderSimilarity(is_inverted=False), "is_inverted"),
        (lambda: order_scores(torch.randn(2, 3), torch.randn(2, 4)), "different sizes"),
        (lambda: order_scores(torch.randn(2, 3, 1), torch.randn(2, 3)), "2-D"),
        (lambda: order_scores(torch.arange(6).view(2, 3), torch.randn(2, 3)), "floating-point"),
        (lambda: sum_hinge_loss(torch.randn(2, 3), torch.randn(2, 3), similarity="orders"), "similarity"),
    ],
)
def test_bad_input(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_nan_input_gives_nan_loss():
    x, y = torch.randn(3, 2), torch.randn(3, 2)
    x[1, 0] = float("nan")
    assert torch.isnan(vse_losses.MaxViolationLoss(distance=OrderSimilarity(impl="chunked"))(x, y))
    assert torch.isnan(max_violation_loss(x, y, similarity="order"))


def test_functional_order_with_distributed_points_to_the_class(monkeypatch):
    import vse_losses.functional as functional

    monkeypatch.setattr(functional._dist, "world_size", lambda: 2)  # as if in a 2-process group
    with pytest.raises(ValueError, match=r"distance=OrderSimilarity\(\), distributed=True"):
        max_violation_loss(torch.randn(2, 3), torch.randn(2, 3), similarity="order", distributed=True)
