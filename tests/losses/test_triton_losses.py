"""impl="triton" gives the same losses and gradients as dense (CPU: triton's interpreter, small sizes)."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from cases import LOSS_CASES, loss_and_grads  # noqa: E402

from vse_losses.ops import triton_available  # noqa: E402

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
    results = {impl: loss_and_grads(name, kwargs, impl, x0, y0, labels, ref_labels) for impl in ("dense", "triton")}
    # fp16: the triton backward rounds its weights to fp16 before the products (as fp16 autograd
    # would), dense keeps them in fp32: gradients differ by a few fp16 ulps of their sums
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    for got, ref in zip(results["triton"], results["dense"]):
        torch.testing.assert_close(got.float(), ref.float(), **tol)
