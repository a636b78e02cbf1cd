"""The k hardest negatives of every row and column of ``x yᵀ``, in tiles of rows (torch)."""

from __future__ import annotations

import torch

from .tiling import Matmul, SameLabel, mask_non_negatives_, tile_rows
from .topk import topk_lowest

NEG_INF = float("-inf")


def _topk_desc(S: torch.Tensor, k: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k along ``dim``, padded with −inf/0 to k; ties go to the lowest index."""
    n = S.shape[dim]
    vals, idx = topk_lowest(S, min(k, n), dim=dim)
    if vals.shape[dim] < k:
        pad = list(vals.shape)
        pad[dim] = k - vals.shape[dim]
        vals = torch.cat([vals, vals.new_full(pad, NEG_INF)], dim)
        idx = torch.cat([idx, idx.new_zeros(pad)], dim)
    return vals, idx


def negative_topk_chunked(
    x: torch.Tensor,
    y: torch.Tensor,
    x_labels: torch.Tensor,
    y_labels: torch.Tensor,
    self_ref: bool,
    k: int,
    tile: int | None = None,
    paired: bool = False,
    scales=None,
):
    """See :func:`vse_losses.ops.negative_topk`. Peak extra memory: a (tile, M) score tile.

    Rows are complete within a tile; columns are merged across tiles in increasing row order,
    replacing only on a strictly larger score (k = 1; for more, :func:`.topk.topk_lowest` by row
    index), so ties keep the lowest row index.
    """
    B, M = x.shape[0], y.shape[0]
    mm = Matmul(x.dtype, x.device)
    wide, yt = mm.wide, mm.operand(y).t()
    tile = tile or tile_rows(B, M, x.device)
    row_val = x.new_full((B, k), NEG_INF, dtype=wide)
    row_idx = torch.zeros((B, k), dtype=torch.long, device=x.device)
    col_val = x.new_full((M, k), NEG_INF, dtype=wide)
    col_idx = torch.zeros((M, k), dtype=torch.long, device=x.device)
    same = SameLabel(y_labels, paired)
    for r0 in range(0, B, tile):
        r1 = min(B, r0 + tile)
        S = mm(x[r0:r1], yt)
        if scales is not None:  # cosine folded in: s_ij = c_i c_j x_i·y_j
            S.mul_(scales[0][r0:r1, None]).mul_(scales[1][None, :])
        own = torch.arange(r0, r1, device=x.device) if self_ref else None
        mask_non_negatives_(S, same, x_labels[r0:r1], own, NEG_INF)
        row_val[r0:r1], row_idx[r0:r1] = _topk_desc(S, k, 1)
        tv, ti = _topk_desc(S, k, 0)
        tv, ti = tv.t(), ti.t() + r0
        if k == 1:
            better = (tv > col_val) | (torch.isnan(tv) & ~torch.isnan(col_val))
            col_val = torch.where(better, tv, col_val)
            col_idx = torch.where(better, ti, col_idx)
        else:
            # ties by the rows' indices, whichever tile they came from
            col_val, col_idx = topk_lowest(torch.cat([col_val, tv], 1), k, dim=1, index=torch.cat([col_idx, ti], 1))
    return row_val, row_idx, col_val, col_idx
