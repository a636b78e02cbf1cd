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


def test_out_of_memory_is_the_callers_and_keeps_the_fp32_output_products(monkeypatch):
    """An OOM in an fp32-output product must propagate, and must not be taken for a torch without
    ``out_dtype`` (which would widen every later product of the process). No GPU here: the
    device-side choice is forced, and torch.mm / torch.addmm raise CUDA's OOM."""
    monkeypatch.setattr(Matmul, "_native_ok", True)
    monkeypatch.setattr(Matmul, "_native_add_ok", True)

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(torch, "mm", oom)
    monkeypatch.setattr(torch, "addmm", oom)
    mm = Matmul(torch.bfloat16, torch.device("cpu"))
    mm.native = True  # as on CUDA
    a, b = torch.ones(2, 3, dtype=torch.bfloat16), torch.ones(3, 2, dtype=torch.bfloat16)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        mm(a, b)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        mm.add_product(torch.zeros(2, 2), a, b)
    assert Matmul._native_ok and Matmul._native_add_ok and mm.native
