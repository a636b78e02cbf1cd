"""float32/float16/bfloat16 inputs stay close to the float64 value (stated tolerances)."""

import pytest
import torch
from cases import FAST_IMPLS, LOSS_CASES
from reference import cosine, loop_terms

import vse_losses

# |value − float64 value| / |float64 value| allowed per input dtype; half inputs are rounded
# before the (float32) scores are formed, so their error is that of the rounding.
RTOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("dtype", list(RTOL))
@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("name,kwargs,norm", LOSS_CASES)
def test_low_precision_close_to_float64(name, kwargs, norm, impl, dtype):
    x64, y64 = torch.randn(32, 16, dtype=torch.float64), torch.randn(32, 16, dtype=torch.float64)
    x, y = x64.to(dtype).requires_grad_(), y64.to(dtype).requires_grad_()
    loss = getattr(vse_losses, name)(impl=impl, margin=0.5, **kwargs)(x, y)
    loss.backward()
    assert loss.dtype == torch.float32 and x.grad.dtype == dtype and y.grad.dtype == dtype
    # the float64 value of the rounded inputs: the loss itself adds only float32 error
    exact = loop_terms(cosine(x.detach().double(), y.detach().double()), margin=0.5, **norm).mean()
    torch.testing.assert_close(loss.double(), exact, rtol=RTOL[dtype], atol=1e-6)
