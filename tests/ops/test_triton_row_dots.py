"""The one-pass Triton row dot products against float64 (CPU: triton's interpreter): aligned
and gathered rows, sizes that are not block multiples, half inputs, no pair at all."""

import pytest
import torch

from vse_losses.ops import triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton not importable")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("gather", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("n,D", [(1, 3), (9, 37), (20, 16)])
def test_matches_float64(dtype, gather, n, D):
    from vse_losses.ops.triton_row_dots import row_dots_forward_triton

    g = torch.Generator().manual_seed(n * 31 + D)
    q = torch.randn(max(n, 6), D, generator=g).to(DEVICE, dtype)
    k = torch.randn(max(n, 6), D, generator=g).to(DEVICE, dtype)
    qi = torch.randint(0, q.shape[0], (n,), generator=g).to(DEVICE) if gather[0] else None
    ki = torch.randint(0, k.shape[0], (n,), generator=g).to(DEVICE) if gather[1] else None
    got = row_dots_forward_triton(q, k, qi, ki, n)
    qr = q.double()[qi] if qi is not None else q.double()[:n]
    kr = k.double()[ki] if ki is not None else k.double()[:n]
    assert got.dtype == torch.float32 and got.shape == (n,)
    torch.testing.assert_close(got.double(), (qr * kr).sum(1), rtol=1e-5, atol=1e-5)


def test_no_pair():
    from vse_losses.ops.triton_row_dots import row_dots_forward_triton

    q = torch.randn(4, 8, device=DEVICE)
    assert row_dots_forward_triton(q, q, torch.zeros(0, dtype=torch.long, device=DEVICE), None, 0).shape == (0,)


def test_gpu_tiles(monkeypatch):
    # the GPU's tiles (8 rows × up to 512 columns) in the interpreter
    from vse_losses.ops import triton_row_dots as rd

    gpu = rd._config
    monkeypatch.setattr(rd, "_config", lambda D, interpret: gpu(D, False))
    g = torch.Generator().manual_seed(9)
    q, k = torch.randn(50, 700, generator=g).to(DEVICE), torch.randn(60, 700, generator=g).to(DEVICE)
    ki = torch.randint(0, 60, (50,), generator=g).to(DEVICE)
    got = rd.row_dots_forward_triton(q, k, None, ki, 50)
    torch.testing.assert_close(got.double(), (q.double() * k.double()[ki]).sum(1), rtol=1e-5, atol=1e-4)
