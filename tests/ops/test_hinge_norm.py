"""The chunked ℓp hinge norm and its recomputing backward against float64 autograd."""

import pytest
import torch

from vse_losses.ops import hinge_norm_rows, tiling


def dense(q, keys, t, ql, kl, qs, p):
    S = q @ keys.t()
    neg = (ql[:, None] != kl[None, :]) & (torch.arange(len(keys))[None, :] != qs[:, None])
    h = torch.relu(S - t[:, None]) * neg
    return h.pow(p).sum(1).pow(1 / p)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.5])
@pytest.mark.parametrize("tile", [1, 4, 1000])
def test_value_and_gradients_match_float64_autograd(p, tile, monkeypatch):
    monkeypatch.setattr(tiling, "MIN_TILE_ROWS", 1)
    monkeypatch.setattr(tiling, "TILE_ELEMENTS", tile * 9)
    g = torch.Generator().manual_seed(1)
    q = torch.randn(7, 5, dtype=torch.float64, generator=g)
    keys = torch.randn(9, 5, dtype=torch.float64, generator=g)
    t = torch.randn(7, dtype=torch.float64, generator=g) - 1.0  # every row has some violation
    ql = torch.tensor([0, 1, 2, 2, 3, 4, 5])
    kl = torch.tensor([0, 0, 1, 2, 3, 3, 4, 5, 6])
    qs = torch.tensor([-1, 2, -1, 3, -1, -1, 8])
    w = torch.randn(7, dtype=torch.float64, generator=g)
    ins = [v.clone().requires_grad_() for v in (q, keys, t)]
    ref = dense(*ins, ql, kl, qs, p)
    ref_grads = torch.autograd.grad((ref * w).sum(), ins)
    ins2 = [v.clone().requires_grad_() for v in (q, keys, t)]
    got = hinge_norm_rows(*ins2, ql, kl, qs, p)
    got_grads = torch.autograd.grad((got * w).sum(), ins2)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(got_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
