"""row_dots against the explicit gather in float64 (values, gradients, gradcheck), in one chunk
and in several."""

import pytest
import torch

from vse_losses.ops import chunked_row_dots as rd


def _case(seed=0, Bq=11, Bk=9, D=5, N=14):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(Bq, D, dtype=torch.float64, generator=g, requires_grad=True)
    k = torch.randn(Bk, D, dtype=torch.float64, generator=g, requires_grad=True)
    qi = torch.randint(0, Bq, (N,), generator=g)
    ki = torch.randint(0, Bk, (N,), generator=g)  # repeated rows: gradients accumulate
    w = torch.randn(N, dtype=torch.float64, generator=g)
    return q, k, qi, ki, w


@pytest.mark.parametrize("tile", [1 << 22, 10])  # one chunk; chunks of 2 rows (D = 5)
@pytest.mark.parametrize("aligned", ["none", "q", "both"])
def test_matches_gather(monkeypatch, tile, aligned):
    monkeypatch.setattr(rd, "TILE_ELEMENTS", tile)
    q, k, qi, ki, w = _case(Bq=14 if aligned != "none" else 11, Bk=14 if aligned == "both" else 9)
    qi = None if aligned in ("q", "both") else qi
    ki = None if aligned == "both" else ki
    ref = ((q if qi is None else q[qi]) * (k if ki is None else k[ki])).sum(-1)
    got = rd.row_dots_chunked(q, k, qi, ki)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)
    ref_grads = torch.autograd.grad((ref * w).sum(), (q, k))
    got_grads = torch.autograd.grad((got * w).sum(), (q, k))
    for a, b in zip(got_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert torch.autograd.gradcheck(lambda a, b: rd.row_dots_chunked(a, b, qi, ki), (q, k))


def test_half_inputs_keep_their_dtype_and_accumulate_wide():
    q, k, qi, ki, w = _case(seed=1, D=64)
    qh, kh = q.detach().half().requires_grad_(), k.detach().half().requires_grad_()
    got = rd.row_dots_chunked(qh, kh, qi, ki)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), (qh.double()[qi] * kh.double()[ki]).sum(-1), rtol=1e-6, atol=1e-6)
    (got * w.float()).sum().backward()
    assert qh.grad.dtype == torch.float16 and kh.grad.dtype == torch.float16


def test_no_pairs():
    # a rank of a distributed batch can hold no pair at all
    q, k, _, _, _ = _case()
    none = torch.zeros(0, dtype=torch.long)
    out = rd.row_dots_chunked(q, k, none, none)
    assert out.shape == (0,)
    out.sum().backward()
    assert q.grad.abs().max() == 0 and k.grad.abs().max() == 0
