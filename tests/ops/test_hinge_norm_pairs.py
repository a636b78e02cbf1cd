"""The one-pass, both-direction hinge norms against float64 autograd of the explicit formula."""

import pytest
import torch

from vse_losses.functional import positive_pairs
from vse_losses.ops import hinge_norm_pairs, tiling


def dense(x, y, t, a, p_idx, labels, ref_labels, self_ref, p):
    S = x @ y.t()
    neg = labels[:, None] != ref_labels[None, :]
    if self_ref:
        neg &= ~torch.eye(len(x), dtype=torch.bool)
    h1 = torch.relu(S[a] - t[:, None]) * neg[a]
    h2 = torch.relu(S[:, p_idx].t() - t[:, None]) * neg[:, p_idx].t()
    return h1.pow(p).sum(1).pow(1 / p), h2.pow(p).sum(1).pow(1 / p)


CASES = {
    "diagonal": (torch.arange(9), torch.arange(9), False),
    "permuted": (torch.arange(9), torch.tensor([3, 1, 0, 2, 4, 8, 5, 6, 7]), False),
    "duplicates": (torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 5]), torch.tensor([0, 1, 1, 2, 3, 3, 4, 5, 5]), False),
    "one modality": (torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 5]), None, True),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("p", [1.0, 2.0, 3.5])
@pytest.mark.parametrize("tile", [1, 4, 1000])
def test_matches_float64_autograd(case, p, tile, monkeypatch):
    monkeypatch.setattr(tiling, "MIN_TILE_ROWS", 1)
    monkeypatch.setattr(tiling, "TILE_ELEMENTS", tile * 30)
    labels, ref_labels, self_ref = CASES[case]
    ref_labels = labels if ref_labels is None else ref_labels
    g = torch.Generator().manual_seed(2)
    x = torch.randn(9, 4, dtype=torch.float64, generator=g)
    y = x.clone() if self_ref else torch.randn(9, 4, dtype=torch.float64, generator=g)
    a, p_idx = positive_pairs(labels, ref_labels, self_ref)
    t = torch.randn(len(a), dtype=torch.float64, generator=g) - 3.0  # violations everywhere: finite reference gradients
    w1, w2 = (
        torch.randn(len(a), dtype=torch.float64, generator=g),
        torch.randn(len(a), dtype=torch.float64, generator=g),
    )
    ins = [v.clone().requires_grad_() for v in (x, y, t)]
    r1, r2 = dense(ins[0], ins[0] if self_ref else ins[1], ins[2], a, p_idx, labels, ref_labels, self_ref, p)
    ref_grads = torch.autograd.grad((r1 * w1).sum() + (r2 * w2).sum(), ins, allow_unused=True)
    ins2 = [v.clone().requires_grad_() for v in (x, y, t)]
    T1, T2 = hinge_norm_pairs(
        ins2[0], ins2[0] if self_ref else ins2[1], ins2[2], a, p_idx, labels, ref_labels, self_ref, p
    )
    got_grads = torch.autograd.grad((T1 * w1).sum() + (T2 * w2).sum(), ins2, allow_unused=True)
    torch.testing.assert_close(T1, r1, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(T2, r2, rtol=1e-10, atol=1e-12)
    for got, ref in zip(got_grads, ref_grads):
        if ref is None:
            assert got is None or got.abs().max() == 0
        else:
            torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_one_direction_only():
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    idx = torch.arange(5)
    t = torch.zeros(5, dtype=torch.float64)
    T1, T2 = hinge_norm_pairs(x, y, t, idx, idx, idx, idx, False, 2.0, do_i2t=True, do_t2i=False)
    r1, _ = dense(x, y, t, idx, idx, idx, idx, False, 2.0)
    torch.testing.assert_close(T1, r1)
    assert T2.abs().max() == 0
