"""The chunked hardest-negative search against a dense float64 search."""

import pytest
import torch

from vse_losses.ops import negative_topk, tiling


def dense_topk(x, y, xl, yl, self_ref, k):
    S = x.double() @ y.double().t()
    neg = xl[:, None] != yl[None, :]
    if self_ref:
        neg &= ~torch.eye(len(x), dtype=torch.bool)
    S = S.masked_fill(~neg, float("-inf"))
    kk = min(k, S.shape[1]), min(k, S.shape[0])
    rv = torch.topk(S, kk[0], dim=1).values
    cv = torch.topk(S, kk[1], dim=0).values.t()
    return rv, cv, S


@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("self_ref", [False, True])
@pytest.mark.parametrize("tile", [1, 3, 1000])
def test_matches_dense(k, self_ref, tile, monkeypatch):
    monkeypatch.setattr(tiling, "MIN_TILE_ROWS", 1)
    monkeypatch.setattr(tiling, "TILE_ELEMENTS", tile * 11)  # force tiles of `tile` rows
    x = torch.randn(11, 6)
    y = x if self_ref else torch.randn(11, 6)
    xl = torch.tensor([0, 1, 1, 2, 3, 3, 3, 4, 5, 6, 6])
    yl = xl if self_ref else torch.tensor([0, 0, 1, 2, 2, 3, 4, 5, 6, 7, 7])
    rv, ri, cv, ci = negative_topk(x, y, xl, yl, self_ref, k)
    erv, ecv, S = dense_topk(x, y, xl, yl, self_ref, k)
    torch.testing.assert_close(rv[:, : erv.shape[1]].double(), erv, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cv[:, : ecv.shape[1]].double(), ecv, rtol=1e-5, atol=1e-5)
    # the indices point at the values they claim, and only at negatives
    finite = torch.isfinite(rv)
    torch.testing.assert_close(S.gather(1, ri)[finite], rv[finite].double(), rtol=1e-5, atol=1e-5)
    finite = torch.isfinite(cv)
    torch.testing.assert_close(S.t().gather(1, ci)[finite], cv[finite].double(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tile", [1, 2, 1000])
def test_ties_pick_the_lowest_index(tile, monkeypatch):
    monkeypatch.setattr(tiling, "MIN_TILE_ROWS", 1)
    monkeypatch.setattr(tiling, "TILE_ELEMENTS", tile * 6)
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    xl, yl = torch.arange(4), torch.arange(10, 16)  # everything is a negative
    rv, ri, cv, ci = negative_topk(x, y, xl, yl, False, 1)
    assert ri[:3, 0].tolist() == [1, 1, 1] and ri[3, 0].item() == 0
    assert ci[:, 0].tolist() == [3, 0, 0, 0, 3, 0]


def test_fewer_negatives_than_k_are_minus_inf():
    x = torch.randn(3, 2)
    rv, ri, cv, ci = negative_topk(x, x, torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1]), True, 3)
    assert torch.isinf(rv[0, 1:]).all() and torch.isfinite(rv[0, 0])
    assert torch.isfinite(rv[2, :2]).all() and torch.isinf(rv[2, 2])
