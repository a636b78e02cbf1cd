"""impl="triton" gives the losses and gradients of dense (CPU: triton's interpreter, small sizes):
in float32 to float32 rounding; in float16 by the tolerance rule, no further from float64 than
torch's own dense computation on the same float16 inputs."""

import pytest
import torch

from tests.support.cases import LOSS_CASES, loss_and_grads
from tests.support.tolerance import assert_as_close_as_torch, half_rtol
from vse_losses.ops import triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton not importable")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("labelled", [False, True])
@pytest.mark.parametrize("name,kwargs,norm", LOSS_CASES)
def test_triton_matches_dense(name, kwargs, norm, labelled, dtype):
    B, M, D = 19, (23 if labelled else 19), 12
    x0 = torch.randn(B, D, device=DEVICE).to(dtype)
    y0 = torch.randn(M, D, device=DEVICE).to(dtype)
    labels = torch.randint(0, 9, (B,), device=DEVICE) if labelled else None
    ref_labels = torch.randint(0, 9, (M,), device=DEVICE) if labelled else None
    triton = loss_and_grads(name, kwargs, "triton", x0, y0, labels, ref_labels)
    dense = loss_and_grads(name, kwargs, "dense", x0, y0, labels, ref_labels)
    if dtype == torch.float32:
        for got, ref in zip(triton, dense):
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        return
    # float16: judged against float64 of the same rounded inputs, beside dense's float16; the
    # triton backward rounds its weights to float16 before the products (as float16 autograd
    # would), a second rounding beside that of the gradient itself
    exact = loss_and_grads(name, kwargs, "dense", x0.double(), y0.double(), labels, ref_labels)
    for what, got, e, ref in zip(("loss", "grad x", "grad y"), triton, exact, dense):
        assert_as_close_as_torch(got, e, ref, atol=1e-5, rtol=2 * half_rtol(dtype), what=what)
