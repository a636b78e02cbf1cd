"""float32/float16/bfloat16 inputs: the loss and its gradients no further from float64 than torch's
own dense computation in the same dtype, plus a stated tolerance (the tolerance rule)."""

import pytest
import torch

import vse_losses
from tests.support.cases import FAST_IMPLS, LOSS_CASES
from tests.support.tolerance import assert_as_close_as_torch, dense_paired_terms, half_rtol

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ATOL = 1e-6  # beyond torch's own error: float32 accumulation, and one rounding to a half dtype


def value_and_grads(fn, x0, y0):
    x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
    loss = fn(x, y)
    gx, gy = torch.autograd.grad(loss, (x, y))
    return loss, gx, gy


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("name,kwargs,norm", LOSS_CASES)
def test_low_precision_as_close_as_torch(name, kwargs, norm, impl, dtype):
    x64, y64 = torch.randn(32, 16, dtype=torch.float64), torch.randn(32, 16, dtype=torch.float64)
    x, y = x64.to(dtype), y64.to(dtype)
    loss_fn = getattr(vse_losses, name)(**{**kwargs, "impl": impl, "margin": 0.5})
    got = value_and_grads(loss_fn, x, y)
    assert got[0].dtype == torch.float32 and got[1].dtype == dtype and got[2].dtype == dtype
    # float64 of the rounded inputs: what remains is the computation's error, not the rounding's
    exact = value_and_grads(lambda a, b: dense_paired_terms(a, b, 0.5, **norm).mean(), x.double(), y.double())
    same_dtype = value_and_grads(lambda a, b: dense_paired_terms(a, b, 0.5, **norm).float().mean(), x, y)
    for what, g, e, t in zip(("loss", "grad x", "grad y"), got, exact, same_dtype):
        assert_as_close_as_torch(g, e, t, atol=ATOL, rtol=half_rtol(dtype), what=what)


def test_the_rule_can_fail():
    # a result off by more than torch's own error and the tolerance is caught
    exact = torch.tensor([1.0], dtype=torch.float64)
    with pytest.raises(AssertionError, match="further from float64"):
        assert_as_close_as_torch(exact + 1e-3, exact, exact + 1e-4, atol=1e-6, rtol=0)
