"""impl="triton" gives the same losses and gradients as dense (CPU: triton's interpreter, small sizes)."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from cases import LOSS_CASES  # noqa: E402
from pytorch_metric_learning.reducers import SumReducer  # noqa: E402

import vse_losses  # noqa: E402
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
    results = {}
    for impl in ("dense", "triton"):
        x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
        loss_fn = getattr(vse_losses, name)(impl=impl, margin=0.5, reducer=SumReducer(), **kwargs)
        loss = loss_fn(x, labels, ref_emb=y, ref_labels=ref_labels) if labelled else loss_fn(x, y)
        loss.backward()
        results[impl] = (loss.detach(), x.grad, y.grad)
    # fp16: the triton backward rounds its weights to fp16 before the products (as fp16 autograd
    # would), dense keeps them in fp32: gradients differ by a few fp16 ulps of their sums
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    for got, ref in zip(results["triton"], results["dense"]):
        torch.testing.assert_close(got.float(), ref.float(), **tol)
