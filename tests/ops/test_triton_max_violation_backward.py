"""The one-pass Triton backward of the paired max violation against float64 autograd of the
explicit formula (CPU: triton's interpreter): several column blocks, ties, a collapsed batch
(every column's hardest row the same), zero rows, inactive hinges, B = 1 and 2, half inputs."""

import pytest
import torch

from tests.support.reference import paired_max_violation as reference
from vse_losses.ops import _triton_backend, triton_available
from vse_losses.ops import max_violation_paired as mvp

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton not importable")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def check(x0, y0, margin, cosine, w1, w2, rtol=1e-4, atol=1e-5):
    x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
    i2t, t2i = mvp.max_violation_paired(x, y, margin, cosine, _triton_backend())
    gx, gy = torch.autograd.grad((i2t * w1).sum() + (t2i * w2).sum(), (x, y))
    assert gx.dtype == x0.dtype and gy.dtype == y0.dtype
    xr, yr = x0.double().requires_grad_(), y0.double().requires_grad_()
    r1, r2 = reference(xr, yr, margin, cosine)
    rx, ry = torch.autograd.grad((r1 * w1.double()).sum() + (r2 * w2.double()).sum(), (xr, yr))
    for name, a, b in (("i2t", i2t, r1), ("t2i", t2i, r2), ("grad x", gx, rx), ("grad y", gy, ry)):
        torch.testing.assert_close(
            a.detach().double(), b.detach(), rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}"
        )


@pytest.mark.parametrize("cosine", [True, False])
@pytest.mark.parametrize("B,D", [(1, 5), (2, 7), (9, 16), (40, 37)])
def test_matches_float64(cosine, B, D):
    g = torch.Generator().manual_seed(B * 13 + D)
    x = (torch.randn(B, D, generator=g) * 2).to(DEVICE)
    y = (torch.randn(B, D, generator=g) * 2).to(DEVICE)
    w1 = torch.randn(B, generator=g).to(DEVICE)
    w2 = torch.randn(B, generator=g).to(DEVICE)
    w1[::3] = 0.0  # no gradient for some terms: their rows are not read
    check(x, y, 0.2 if cosine else 0.5 * D, cosine, w1, w2)


def test_collapse_and_ties_go_to_the_lowest_index():
    # identical captions with integer entries (every score exact, in any order): every column
    # ties, the lowest one is every row's hardest and receives all their gradients (a segment
    # longer than the kernel's block of senders)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-3, 4, (23, 20), generator=g).float()
    y = torch.randint(-3, 4, (1, 20), generator=g).float().expand(23, 20).contiguous()
    w1, w2 = torch.rand(23, generator=g), torch.rand(23, generator=g)
    check(x.to(DEVICE), y.to(DEVICE), 40.0, False, w1.to(DEVICE), w2.to(DEVICE))


def test_zero_rows():
    # normalisation divides a zero row by ε, which has no projection term
    g = torch.Generator().manual_seed(1)
    x = torch.randn(11, 20, generator=g)
    x[3] = 0.0
    y = torch.randn(11, 20, generator=g)
    y[7] = 0.0
    w1, w2 = torch.rand(11, generator=g), torch.rand(11, generator=g)
    check(x.to(DEVICE), y.to(DEVICE), 0.2, True, w1.to(DEVICE), w2.to(DEVICE))


def test_half_inputs_get_half_gradients():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(30, 24, generator=g).half().to(DEVICE)
    y = torch.randn(30, 24, generator=g).half().to(DEVICE)
    w = torch.ones(30, device=DEVICE)
    check(x, y, 0.2, True, w, w, rtol=2e-2, atol=2e-3)


def test_senders_sorted_by_destination():
    from vse_losses.ops.triton_max_violation_backward import senders_by_destination

    hard = torch.tensor([3, 0, 3, 3, 1, 0])
    order, offsets = senders_by_destination(hard, 5)
    assert order.tolist() == [1, 5, 4, 0, 2, 3]  # by row, then by sender
    assert offsets.tolist() == [0, 2, 3, 3, 6, 6]
