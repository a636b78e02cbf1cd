"""The Triton both-direction hinge norms of the diagonal pairs against float64 autograd of the
explicit formula (CPU: triton's interpreter, small sizes)."""

import pytest
import torch

from vse_losses.ops import hinge_norm_pairs, triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton not importable")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def dense(x, y, t, labels, ref_labels, self_ref, p):
    S = x @ y.t()
    neg = labels[:, None] != ref_labels[None, :]
    if self_ref:
        neg &= ~torch.eye(len(x), dtype=torch.bool, device=x.device)
    h1 = torch.relu(S - t[:, None]) * neg
    h2 = torch.relu(S.t() - t[:, None]) * neg.t()
    return h1.pow(p).sum(1).pow(1 / p), h2.pow(p).sum(1).pow(1 / p)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.5])
@pytest.mark.parametrize("case", ["plain", "labels", "self_ref", "one direction", "chunks"])
def test_matches_float64_autograd(case, p, monkeypatch):
    if case == "chunks":  # weights in chunks of 16 rows, ragged last chunk
        from vse_losses.ops import triton_hinge_norm

        monkeypatch.setattr(triton_hinge_norm, "W_CHUNK_ELEMENTS", 16)
    B, D = 37, 20
    g = torch.Generator().manual_seed(3)
    x = torch.randn(B, D, generator=g) / D**0.5
    self_ref = case == "self_ref"
    y = x.clone() if self_ref else torch.randn(B, D, generator=g) / D**0.5
    labels = torch.arange(B)
    ref_labels = labels.clone()
    if case in ("labels", "self_ref"):  # same-label entries off the diagonal are not negatives
        labels = torch.randint(0, 6, (B,), generator=g)
        ref_labels = labels.clone() if self_ref else torch.randint(0, 6, (B,), generator=g)
    t = 0.3 * torch.randn(B, generator=g) - 0.1
    w1, w2 = torch.randn(B, generator=g), torch.randn(B, generator=g)
    do_t2i = case != "one direction"
    x, y, t, labels, ref_labels, w1, w2 = (v.to(DEVICE) for v in (x, y, t, labels, ref_labels, w1, w2))

    ref_in = [v.double().requires_grad_() for v in (x, y, t)]
    r1, r2 = dense(ref_in[0], ref_in[0] if self_ref else ref_in[1], ref_in[2], labels, ref_labels, self_ref, p)
    ref_out = (r1 * w1.double()).sum() + ((r2 * w2.double()).sum() if do_t2i else 0)
    ref_grads = torch.autograd.grad(ref_out, ref_in, allow_unused=True)

    got_in = [v.clone().requires_grad_() for v in (x, y, t)]
    idx = torch.arange(B, device=DEVICE)
    T1, T2 = hinge_norm_pairs(
        got_in[0],
        got_in[0] if self_ref else got_in[1],
        got_in[2],
        idx,
        idx,
        labels,
        ref_labels,
        self_ref,
        p,
        do_t2i=do_t2i,
        impl="triton",
    )
    got_out = (T1 * w1).sum() + (T2 * w2).sum()
    got_grads = torch.autograd.grad(got_out, got_in, allow_unused=True)

    torch.testing.assert_close(T1.double(), r1, rtol=1e-5, atol=1e-5)
    if do_t2i:
        torch.testing.assert_close(T2.double(), r2, rtol=1e-5, atol=1e-5)
    else:
        assert T2.abs().max() == 0
    for name, got, ref in zip(("x", "y", "t"), got_grads, ref_grads):
        if ref is None:
            assert got is None or got.abs().max() == 0, name
        else:
            torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def test_deterministic():
    g = torch.Generator().manual_seed(4)
    x, y = (torch.randn(30, 16, generator=g).to(DEVICE) for _ in range(2))
    t, idx = torch.zeros(30, device=DEVICE), torch.arange(30, device=DEVICE)
    runs = []
    for _ in range(2):
        xi, yi = x.clone().requires_grad_(), y.clone().requires_grad_()
        T1, T2 = hinge_norm_pairs(xi, yi, t, idx, idx, idx, idx, False, 2.0, impl="triton")
        (T1.sum() + 2 * T2.sum()).backward()
        runs.append((T1, T2, xi.grad, yi.grad))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_zero_dimensional_embeddings():
    # D = 0: every score is 0; the labels make rows and columns differ
    x = torch.zeros(5, 0, device=DEVICE, requires_grad=True)
    y = torch.zeros(5, 0, device=DEVICE, requires_grad=True)
    t = torch.tensor([-0.5, 0.2, -1.0, -0.1, 0.0], device=DEVICE)
    labels = torch.tensor([0, 0, 1, 2, 3], device=DEVICE)
    ref_labels = torch.tensor([0, 1, 1, 2, 4], device=DEVICE)
    idx = torch.arange(5, device=DEVICE)
    T1, T2 = hinge_norm_pairs(x, y, t, idx, idx, labels, ref_labels, False, 2.0, impl="triton")
    r1, r2 = dense(x.double(), y.double(), t.double(), labels, ref_labels, False, 2.0)
    torch.testing.assert_close(T1.double(), r1)
    torch.testing.assert_close(T2.double(), r2)
