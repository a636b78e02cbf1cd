"""The one-launch small-batch max violation against float64 autograd of the explicit formula
(CPU: triton's interpreter)."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from vse_losses.ops import triton_available  # noqa: E402

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton not importable")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def reference(x, y, margin, cosine):
    if cosine:
        x, y = F.normalize(x, dim=1), F.normalize(y, dim=1)
    S = x @ y.t()
    d = S.diagonal()
    neg = S.masked_fill(torch.eye(len(x), dtype=torch.bool, device=S.device), float("-inf"))
    return torch.cat([torch.relu(margin - d + neg.max(1).values), torch.relu(margin - d + neg.max(0).values)])


def run(x0, y0, margin, cosine, w):
    from vse_losses.ops.triton_max_violation_small import max_violation_small

    x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
    got = max_violation_small(x, y, margin, cosine)
    (got * w).sum().backward()
    xr, yr = x0.double().requires_grad_(), y0.double().requires_grad_()
    ref = reference(xr, yr, margin, cosine)
    (ref * w.double()).sum().backward()
    return (got.detach(), x.grad, y.grad), (ref.detach(), xr.grad, yr.grad)


@pytest.mark.parametrize("cosine", [True, False])
@pytest.mark.parametrize("B,D", [(1, 8), (2, 5), (5, 33), (16, 16), (37, 70), (128, 24)])
def test_matches_float64(cosine, B, D):
    g = torch.Generator().manual_seed(B * 7 + D)
    x = torch.randn(B, D, generator=g).to(DEVICE)
    y = torch.randn(B, D, generator=g).to(DEVICE)
    w = torch.randn(2 * B, generator=g).to(DEVICE)
    margin = 0.2 if cosine else 0.5 * D ** 0.5
    got, ref = run(x, y, margin, cosine, w)
    for name, a, b in zip(("terms", "grad x", "grad y"), got, ref):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_exact_ties_go_to_the_lowest_index():
    # integer entries: every score is exact in any summation order, and identical captions tie
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-3, 4, (9, 12), generator=g).float()
    y = torch.randint(-3, 4, (1, 12), generator=g).float().expand(9, 12).contiguous()
    w = torch.rand(18, generator=g)
    got, ref = run(x.to(DEVICE), y.to(DEVICE), 5.0, False, w.to(DEVICE))
    for a, b in zip(got, ref):
        torch.testing.assert_close(a.double(), b, rtol=1e-6, atol=1e-6)


def test_zero_rows():
    # a zero row: normalisation divides by ε, with no projection term
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 12, generator=g)
    x[4] = 0.0
    y = torch.randn(9, 12, generator=g)
    got, ref = run(x.to(DEVICE), y.to(DEVICE), 0.2, True, torch.rand(18, generator=g).to(DEVICE))
    for a, b in zip(got, ref):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)


def test_half_inputs_return_half_gradients():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(20, 32, generator=g).half().to(DEVICE)
    y = torch.randn(20, 32, generator=g).half().to(DEVICE)
    got, ref = run(x, y, 0.2, True, torch.ones(40, device=DEVICE))
    assert got[1].dtype == torch.float16 and got[2].dtype == torch.float16
    for a, b in zip(got, ref):
        torch.testing.assert_close(a.double(), b, rtol=2e-2, atol=2e-3)
