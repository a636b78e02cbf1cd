"""hinge_norm_rows_triton (forward and backward) against a dense float64 autograd reference.

Without CUDA the kernels run in triton's CPU interpreter (TRITON_INTERPRET=1, set before the
kernel module is first used; the module jits lazily). Interpreted sizes stay small.
"""

import pytest
import torch

triton = pytest.importorskip("triton")

from vse_losses.ops.triton_hinge_norm import (  # noqa: E402
    TRITON_AVAILABLE,
    HingeNormRowsTriton,
    hinge_norm_rows_triton,
)

pytestmark = pytest.mark.skipif(not TRITON_AVAILABLE, reason="triton not importable")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def dense_reference(q, keys, t, ql, kl, qs, p):
    """Explicit float64 N x M computation, differentiable through torch autograd."""
    s = q @ keys.T
    M = keys.shape[0]
    valid = (ql[:, None] != kl[None, :]) & (torch.arange(M, device=q.device)[None, :] != qs[:, None])
    h = torch.where(valid, (s - t[:, None]).clamp_min(0), torch.zeros((), dtype=s.dtype, device=s.device))
    m = h.detach().amax(dim=1, keepdim=True) if M else h.new_zeros((h.shape[0], 1))
    safe = torch.where(m > 0, m, torch.ones_like(m))
    norm = safe[:, 0] * ((h / safe) ** p).sum(dim=1) ** (1.0 / p)
    return torch.where(m[:, 0] > 0, norm, torch.zeros_like(norm))


def make_inputs(N, M, D, dtype, n_labels=None, self_ref=False, seed=0, t_shift=0.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(N, D, generator=g) / D**0.5
    keys = q.clone() if self_ref else torch.randn(M, D, generator=g) / D**0.5
    # thresholds around the score scale: a mix of active and inactive hinges
    t = 0.3 * torch.randn(N, generator=g) + t_shift
    if n_labels is None:
        ql = torch.arange(N)
        kl = ql.clone() if self_ref else torch.arange(M)  # (i, i) is the positive pair
    else:
        ql = torch.randint(0, n_labels, (N,), generator=g)
        kl = ql.clone() if self_ref else torch.randint(0, n_labels, (M,), generator=g)
    if self_ref:
        qs = torch.arange(N)
    else:
        qs = torch.where(torch.rand(N, generator=g) < 0.5, torch.randint(0, M, (N,), generator=g), torch.full((N,), -1))
    gout = torch.randn(N, generator=g)
    q, keys = q.to(dtype), keys.to(dtype)
    return [v.to(DEVICE) for v in (q, keys, t, ql, kl, qs, gout)]


def run_both(q, keys, t, ql, kl, qs, gout, p, self_ref=False):
    # triton
    qa = q.clone().requires_grad_(True)
    ka = qa if self_ref else keys.clone().requires_grad_(True)
    ta = t.clone().requires_grad_(True)
    T = hinge_norm_rows_triton(qa, ka, ta, ql, kl, qs, p)
    (T * gout).sum().backward()
    got = (T.detach(), qa.grad, None if self_ref else ka.grad, ta.grad)
    # float64 reference
    qr = q.double().requires_grad_(True)
    kr = qr if self_ref else keys.double().requires_grad_(True)
    tr = t.double().requires_grad_(True)
    R = dense_reference(qr, kr, tr, ql, kl, qs, p)
    (R * gout.double()).sum().backward()
    ref = (R.detach(), qr.grad, None if self_ref else kr.grad, tr.grad)
    return got, ref


def assert_close(got, ref, atol, rtol):
    names = ("T", "grad_q", "grad_keys", "grad_t")
    for name, a, b in zip(names, got, ref):
        if b is None:
            continue
        assert a is not None, name
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a.double(), b, atol=atol, rtol=rtol, msg=lambda m, name=name: f"{name}: {m}")


SHAPES = [(1, 1, 8), (1, 7, 8), (2, 2, 5), (2, 37, 19), (37, 3, 19), (45, 29, 33), (64, 48, 32)]


@pytest.mark.parametrize("N,M,D", SHAPES)
@pytest.mark.parametrize("p", [1.0, 2.0, 3.5])
def test_fp32(N, M, D, p):
    q, keys, t, ql, kl, qs, gout = make_inputs(N, M, D, torch.float32, 4 if N > 2 else None, seed=N * 31 + M * 7 + D)
    got, ref = run_both(q, keys, t, ql, kl, qs, gout, p)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
    assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.5])
@pytest.mark.parametrize("n_labels", [None, 3])
def test_fp32_self_ref_labels(p, n_labels):
    q, keys, t, ql, kl, qs, gout = make_inputs(50, 50, 20, torch.float32, n_labels, self_ref=True, seed=5)
    got, ref = run_both(q, keys, t, ql, kl, qs, gout, p, self_ref=True)
    assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_odd_large_p_and_d_chunks():
    # D spans several K blocks with a ragged end; p large (close to max)
    q, keys, t, ql, kl, qs, gout = make_inputs(23, 41, 70, torch.float32, 5, seed=2, t_shift=-0.3)
    for p in (1.5, 12.0):
        got, ref = run_both(q, keys, t, ql, kl, qs, gout, p)
        assert_close(got, ref, atol=2e-5, rtol=2e-5)


def test_all_inactive_rows_give_zero_and_zero_grad():
    N, M, D = 20, 30, 16
    q, keys, t, ql, kl, qs, gout = make_inputs(N, M, D, torch.float32, None, seed=3)
    t = t.clone()
    t[::2] = 100.0  # no hinge active on even rows
    for p in (1.0, 2.0, 3.5):
        got, ref = run_both(q, keys, t, ql, kl, qs, gout, p)
        assert (got[0][::2] == 0).all()
        assert (got[1][::2] == 0).all() and (got[3][::2] == 0).all()
        assert_close(got, ref, atol=1e-5, rtol=1e-5)
    # nothing valid at all (single label): T = 0, zero (not NaN) gradients
    one = torch.zeros(N, dtype=torch.long, device=DEVICE)
    got, ref = run_both(q, keys, t, one, torch.zeros(M, dtype=torch.long, device=DEVICE), qs, gout, 3.5)
    assert (got[0] == 0).all() and (got[1] == 0).all() and (got[2] == 0).all() and (got[3] == 0).all()


def test_scale_stability():
    # very large and very small hinges: the online max keeps sum (h/m)^p finite
    N, M, D = 18, 40, 16
    q, keys, t, ql, kl, qs, gout = make_inputs(N, M, D, torch.float32, None, seed=4)
    for scale in (1e15, 1e-15):
        qq, kk, tt = q * scale**0.5, keys * scale**0.5, t * scale
        got, ref = run_both(qq, kk, tt, ql, kl, qs, gout, 3.5)
        assert torch.isfinite(got[0]).all()
        torch.testing.assert_close(got[0].double() / scale, ref[0] / scale, atol=1e-5, rtol=1e-5)


def test_p1_equals_sum_of_hinges_and_deterministic():
    q, keys, t, ql, kl, qs, gout = make_inputs(33, 27, 24, torch.float32, 4, seed=6)
    got1, _ = run_both(q, keys, t, ql, kl, qs, gout, 1.0)
    got2, _ = run_both(q, keys, t, ql, kl, qs, gout, 1.0)
    for a, b in zip(got1, got2):
        assert torch.equal(a, b)  # bitwise identical on a rerun
    s = q.double() @ keys.double().T
    valid = (ql[:, None] != kl[None, :]) & (torch.arange(27, device=DEVICE)[None, :] != qs[:, None])
    sh = torch.where(
        valid, (s - t.double()[:, None]).clamp_min(0), torch.zeros((), dtype=torch.float64, device=DEVICE)
    ).sum(1)
    torch.testing.assert_close(got1[0].double(), sh, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.5])
def test_fp16(p):
    # fp16 inputs, fp32 accumulation; W is rounded to fp16 for the backward products,
    # as the dense fp16 autograd would: tolerance stated in units of the grad scale
    q, keys, t, ql, kl, qs, gout = make_inputs(40, 35, 24, torch.float16, 4, seed=8)
    got, ref = run_both(q, keys, t, ql, kl, qs, gout, p)
    assert got[1].dtype == torch.float16 and got[2].dtype == torch.float16
    assert got[3].dtype == torch.float32
    assert_close(got, ref, atol=3e-3, rtol=3e-3)


def test_only_some_inputs_need_grad():
    q, keys, t, ql, kl, qs, gout = make_inputs(20, 25, 16, torch.float32, 3, seed=9)
    ka = keys.clone().requires_grad_(True)
    T = hinge_norm_rows_triton(q, ka, t, ql, kl, qs, 2.0)
    (T * gout).sum().backward()
    kr = keys.double().requires_grad_(True)
    R = dense_reference(q.double(), kr, t.double(), ql, kl, qs, 2.0)
    (R * gout.double()).sum().backward()
    torch.testing.assert_close(ka.grad.double(), kr.grad, atol=1e-5, rtol=1e-5)
    ta = t.clone().requires_grad_(True)
    T = hinge_norm_rows_triton(q, keys, ta, ql, kl, qs, 3.5)
    (T * gout).sum().backward()
    tr = t.double().requires_grad_(True)
    R = dense_reference(q.double(), keys.double(), tr, ql, kl, qs, 3.5)
    (R * gout.double()).sum().backward()
    torch.testing.assert_close(ta.grad.double(), tr.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("p", [1.0, 3.5])
def test_backward_in_chunks(monkeypatch, p):
    # the backward's weights in chunks of 16 rows (of q, then of keys), ragged last chunks
    from vse_losses.ops import triton_hinge_norm

    monkeypatch.setattr(triton_hinge_norm, "W_CHUNK_ELEMENTS", 16)
    q, keys, t, ql, kl, qs, gout = make_inputs(45, 37, 20, torch.float32, 4, seed=11)
    got, ref = run_both(q, keys, t, ql, kl, qs, gout, p)
    assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_bad_p():
    q, keys, t, ql, kl, qs, _ = make_inputs(4, 4, 8, torch.float32, None)
    for p in (0.5, float("inf"), float("nan")):
        with pytest.raises(ValueError):
            hinge_norm_rows_triton(q, keys, t, ql, kl, qs, p)
        with pytest.raises(ValueError):
            HingeNormRowsTriton.apply(q, keys, t, ql, kl, qs, p)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 tl.dot needs a GPU")
@pytest.mark.parametrize("p", [1.0, 3.5])
def test_bf16_gpu(p):
    q, keys, t, ql, kl, qs, gout = make_inputs(300, 257, 96, torch.bfloat16, 10, seed=5)
    got, ref = run_both(q, keys, t, ql, kl, qs, gout, p)
    assert_close(got, ref, atol=2e-2, rtol=2e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU-size check with default tiles")
@pytest.mark.parametrize("D", [96, 1000])
def test_gpu_default_tiles(D):
    q, keys, t, ql, kl, qs, gout = make_inputs(700, 513, D, torch.float32, 50, seed=1)
    got, ref = run_both(q, keys, t, ql, kl, qs, gout, 3.5)
    assert_close(got, ref, atol=1e-5, rtol=1e-4)


def test_weight_grid_has_room_for_millions_of_keys():
    """The backward's weight kernels launch one grid axis of row tiles × column tiles: CUDA caps
    axis 1 at 65,535 blocks, which column tiles alone reach at M ≈ 4M keys of 64."""
    from vse_losses.ops.triton_common import chunk_grid

    grid = chunk_grid(256, 5_000_000, {"BLOCK_M": 64, "BLOCK_N": 64})
    assert grid == (4 * 78_125,)
    assert grid[0] <= 2**31 - 1
