"""The one-launch small-batch max violation against float64 autograd of the explicit formula
(CPU: triton's interpreter)."""

import pytest
import torch

from tests.support.reference import paired_max_violation
from vse_losses.ops import triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton not importable")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def reference(x, y, margin, cosine):
    return torch.cat(paired_max_violation(x, y, margin, cosine))


def run(x0, y0, margin, cosine, w):
    from vse_losses.ops.triton_max_violation_small import max_violation_small

    x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
    got, anchors = max_violation_small(x, y, margin, cosine)
    assert torch.equal(anchors.cpu(), torch.arange(len(x0)).repeat(2))
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
    margin = 0.2 if cosine else 0.5 * D**0.5
    got, ref = run(x, y, margin, cosine, w)
    for name, a, b in zip(("terms", "grad x", "grad y"), got, ref):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


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


def test_guard_makes_nan_and_inf_inputs_give_nan_terms():
    from vse_losses.ops.triton_max_violation_small import max_violation_small

    for cosine in (True, False):
        for bad in (float("nan"), float("inf"), float("-inf")):
            for side in (0, 1):
                xy = [torch.randn(6, 10).to(DEVICE), torch.randn(6, 10).to(DEVICE)]
                clean = max_violation_small(*xy, 0.2, cosine, guard=True)[0]
                assert torch.isfinite(clean).all()
                xy[side][3, 7] = bad
                terms = max_violation_small(*xy, 0.2, cosine, guard=True)[0]
                assert torch.isnan(terms).all(), (cosine, bad, side)


def test_broadcast_output_gradient_is_read_in_place():
    # a reducer's backward may hand over a stride-0 gradient: the kernel reads it through its stride
    from vse_losses.ops.triton_max_violation_small import max_violation_small

    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(12, 20, generator=g).to(DEVICE)
    y0 = torch.randn(12, 20, generator=g).to(DEVICE)
    x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
    w = torch.tensor(0.3, device=DEVICE).expand(24)
    assert w.stride(0) == 0
    gx, gy = torch.autograd.grad(max_violation_small(x, y, 0.2, True, guard=True)[0], (x, y), w)
    xr, yr = x0.double().requires_grad_(), y0.double().requires_grad_()
    rx, ry = torch.autograd.grad(reference(xr, yr, 0.2, True), (xr, yr), w.double())
    torch.testing.assert_close(gx.double(), rx, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gy.double(), ry, rtol=1e-4, atol=1e-6)


def test_the_loss_around_the_two_launches_is_a_handful_of_torch_operations(monkeypatch):
    # at B = 128 the loss is bound by launches (the target: 0.15 ms forward+backward on a GPU,
    # where each torch operation costs microseconds of host time): around its two kernels,
    # MaxViolationLoss may add only the allocations, PML's mean reduction and its backward
    from torch.profiler import ProfilerActivity, profile

    import vse_losses.ops.triton_max_violation_small as small
    from vse_losses import MaxViolationLoss

    def launch(x, y, margin, cosine, g=None, guard=False):  # the kernels' own allocations only
        B = x.shape[0]
        if g is None:
            return torch.empty(2 * B, device=x.device), torch.empty(2 * B, device=x.device, dtype=torch.int64)
        return torch.empty_like(x), torch.empty_like(y)

    monkeypatch.setattr(small, "_launch", launch)
    x = torch.randn(128, 32, device=DEVICE, requires_grad=True)
    y = torch.randn(128, 32, device=DEVICE, requires_grad=True)
    loss = MaxViolationLoss(impl="triton")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        loss(x, y).backward()

    def nested(e):
        p = e.cpu_parent
        while p is not None:
            if p.name.startswith("aten::"):
                return True
            p = p.cpu_parent
        return False

    ops = [e.name for e in prof.events() if e.name.startswith("aten::") and not nested(e)]
    # besides views and no-op casts (no kernel): empty ×2, mean; ones_like, div (the mean's
    # backward), empty_like ×2
    work = [op for op in ops if op not in ("aten::detach", "aten::expand", "aten::to")]
    assert len(work) <= 7, str(ops)
