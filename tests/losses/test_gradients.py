"""Gradients: torch.autograd.gradcheck in float64, and every impl against the explicit loops."""

import pytest
import torch
from pytorch_metric_learning.reducers import SumReducer

import vse_losses
from tests.support.cases import FAST_IMPLS, LOSS_CASES
from tests.support.reference import cosine, loop_terms


def make_loss(name, kwargs, **extra):
    return getattr(vse_losses, name)(**{**kwargs, **extra})


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("name,kwargs,norm", LOSS_CASES)
def test_gradcheck(name, kwargs, norm, impl):
    # a margin large enough that every hinge is active and away from its kink
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 1, 2, 3])
    loss_fn = make_loss(name, kwargs, margin=3.0, impl=impl)
    assert torch.autograd.gradcheck(lambda a, b: loss_fn(a, b), (x, y))
    assert torch.autograd.gradcheck(lambda a, b: loss_fn(a, labels, ref_emb=b), (x, y))


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("name,kwargs,norm", LOSS_CASES)
def test_gradient_equals_loop_gradient(name, kwargs, norm, impl):
    x0, y0 = torch.randn(8, 4, dtype=torch.float64), torch.randn(10, 4, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 2, 3, 4, 5, 6])
    ref_labels = torch.tensor([0, 0, 1, 2, 3, 4, 5, 6, 6, 7])
    x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
    loop_terms(cosine(x, y), labels, ref_labels, margin=0.5, **norm).sum().backward()
    xr, yr = x.grad, y.grad
    x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
    make_loss(name, kwargs, margin=0.5, impl=impl, reducer=SumReducer())(
        x, labels, ref_emb=y, ref_labels=ref_labels
    ).backward()
    torch.testing.assert_close(x.grad, xr, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(y.grad, yr, rtol=1e-8, atol=1e-10)


def test_lp_without_violation_has_zero_finite_gradient():
    # every hinge inactive: ‖0‖_p = 0 with a finite (zero) gradient, not NaN
    x = torch.eye(4, dtype=torch.float64, requires_grad=True)
    for impl in FAST_IMPLS:
        loss = vse_losses.LpViolationLoss(p=3.0, margin=0.1, impl=impl)(x, x.detach().clone())
        (g,) = torch.autograd.grad(loss, x)
        assert loss.item() == 0.0 and torch.isfinite(g).all() and g.abs().max() == 0
