"""torch.compile does not break on the losses; autocast inputs work."""

import pytest
import torch

import vse_losses
from tests.support.cases import FAST_IMPLS, LOSS_CASES


@pytest.mark.parametrize("labelled", [False, True], ids=["paired", "labelled"])
@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("name,kwargs,norm", [LOSS_CASES[1], LOSS_CASES[3]])
def test_torch_compile_matches_eager(name, kwargs, norm, impl, labelled):
    torch._dynamo.reset()
    loss_fn = getattr(vse_losses, name)(impl=impl, **kwargs)
    compiled = torch.compile(loss_fn, backend="aot_eager")
    x0, y0 = torch.randn(12, 8), torch.randn(12, 8)
    ids = torch.tensor([0, 1, 2, 0, 3, 4, 5, 6, 7, 8, 9, 1])  # duplicates: several positives

    def call(fn, x, y):
        return fn(torch.cat([x, y]), torch.cat([ids, ids])) if labelled else fn(x, y)

    x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
    eager = call(loss_fn, x, y)
    eager.backward()
    xc, yc = x0.clone().requires_grad_(), y0.clone().requires_grad_()
    got = call(compiled, xc, yc)
    got.backward()
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(xc.grad, x.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_under_cpu_autocast(impl):
    lin = torch.nn.Linear(8, 8)
    x, y = torch.randn(16, 8), torch.randn(16, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = lin(x), lin(y)
        assert a.dtype == torch.bfloat16
        loss = vse_losses.MaxViolationLoss(impl=impl)(a, b)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(lin.weight.grad).all()
