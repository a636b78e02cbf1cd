"""Matmul: products with a wide (float32/float64) result, and accumulation into a wide buffer."""

import pytest
import torch

from vse_losses.ops.tiling import Matmul

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_add_product_accumulates_in_the_wide_dtype(dtype):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(7, 5, generator=g).to(DEVICE, dtype)
    b = torch.randn(6, 5, generator=g).to(DEVICE, dtype).t()  # a transposed operand, as W.t()
    mm = Matmul(dtype, torch.device(DEVICE))
    acc = torch.randn(7, 6, generator=g, dtype=torch.float64).to(DEVICE, mm.wide)
    expected = acc.double() + a.double() @ b.double()
    mm.add_product(acc, a, b)
    assert acc.dtype == mm.wide
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(acc.double(), expected, rtol=tol, atol=tol)
