"""ℓp norms of both directions' violation vectors of every positive pair, in one pass over row
tiles of ``S = x yᵀ`` (torch).

For a positive pair ``(a_j, p_j)`` with threshold ``t_j`` (= s(a_j, p_j) − α):

    i2t:  T¹_j = (Σ_n [S[a_j, n] − t_j]_+^p)^{1/p}   over the negatives n of row a_j,
    t2i:  T²_j = (Σ_n [S[n, p_j] − t_j]_+^p)^{1/p}   over the negatives n of column p_j.

A row tile holds whole rows, so T¹ of its pairs is complete; T² is accumulated over the tiles
online (running max and rescaled sum, as flash-attention's softmax). One score product serves both
directions. The backward recomputes each tile and turns it into ``dS = Σ weights`` scattered
into rows (i2t) and columns (t2i), then ``∂x = dS y``, ``∂y = dSᵀ x``, ``∂t_j = −Σ_n W_jn``:
four products in all against the dense formula's three, and nothing B×M outlives a tile.
"""

from __future__ import annotations

import torch

from .lp_norm import lp_finish, lp_merge, lp_norm, lp_stats, lp_weights
from .tiling import PairTiles


def _weights(h: torch.Tensor, T: torch.Tensor, g: torch.Tensor, p: float) -> torch.Tensor:
    """∂T/∂h · g for h ≥ 0, T and g broadcast against h."""
    return lp_weights(h, T, p).mul_(g)


class HingeNormPairsChunked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, t, a, p_idx, labels, ref_labels, self_ref, p, do_i2t, do_t2i, paired):
        tiles = PairTiles(x, y, a, p_idx, labels, ref_labels, self_ref, paired)
        tw = t.to(tiles.wide)
        P = a.shape[0]
        T1 = torch.zeros(P, dtype=tiles.wide, device=x.device)
        m2 = torch.zeros(P, dtype=tiles.wide, device=x.device)  # the t2i norms' running statistics
        s2 = torch.zeros(P, dtype=tiles.wide, device=x.device)  # (ops/lp_norm.py)
        for r0, _r1, j0, j1, S in tiles:
            if do_i2t and j1 > j0:
                H = tiles.rows_of_pairs(S, r0, j0, j1)
                H = (H - tw[j0:j1, None]).clamp_(min=0.0)
                T1[j0:j1] = lp_norm(H, p, dim=1)
            if do_t2i:
                H = S if tiles.diagonal else S[:, p_idx]
                H = (H - tw[None, :]).clamp_(min=0.0)
                mt, st = lp_stats(H, p, dim=0)
                m2, s2 = lp_merge(torch.stack([m2, mt.expand_as(m2)]), torch.stack([s2, st]), p)
        T2 = lp_finish(m2, s2, p)
        ctx.save_for_backward(x, y, t, a, p_idx, labels, ref_labels, T1, T2)
        ctx.self_ref, ctx.p, ctx.do_i2t, ctx.do_t2i, ctx.paired = self_ref, p, do_i2t, do_t2i, paired
        return T1, T2

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g1, g2):
        x, y, t, a, p_idx, labels, ref_labels, T1, T2 = ctx.saved_tensors
        p = ctx.p
        tiles = PairTiles(x, y, a, p_idx, labels, ref_labels, ctx.self_ref, ctx.paired)
        wide, tw = tiles.wide, t.to(tiles.wide)
        gx = torch.empty(x.shape, dtype=wide, device=x.device)
        gy = torch.zeros(y.shape, dtype=wide, device=x.device)
        gt = torch.zeros(t.shape, dtype=wide, device=x.device)
        do_i2t = ctx.do_i2t and g1 is not None
        do_t2i = ctx.do_t2i and g2 is not None
        for r0, r1, j0, j1, S in tiles:
            dS = None
            if do_i2t and j1 > j0:
                H = (tiles.rows_of_pairs(S, r0, j0, j1) - tw[j0:j1, None]).clamp_(min=0.0)
                W = _weights(H, T1[j0:j1, None], g1[j0:j1, None].to(wide), p)
                gt[j0:j1] -= W.sum(1)
                dS = tiles.scatter_rows(dS, W, r0, r1, j0, j1)
            if do_t2i:
                H = ((S if tiles.diagonal else S[:, p_idx]) - tw[None, :]).clamp_(min=0.0)
                W = _weights(H, T2[None, :], g2[None, :].to(wide), p)
                gt -= W.sum(0)
                dS = tiles.scatter_cols(dS, W, p_idx)
            tiles.backprop(dS, r0, r1, gx, gy)
        return gx.to(x.dtype), gy.to(y.dtype), gt.to(t.dtype), None, None, None, None, None, None, None, None, None


def hinge_norm_pairs_chunked(
    x,
    y,
    t,
    a,
    p_idx,
    labels,
    ref_labels,
    self_ref: bool,
    p: float,
    do_i2t: bool = True,
    do_t2i: bool = True,
    paired: bool = False,
):
    """See :func:`vse_losses.ops.hinge_norm_pairs`."""
    return HingeNormPairsChunked.apply(
        x, y, t, a, p_idx, labels, ref_labels, bool(self_ref), float(p), bool(do_i2t), bool(do_t2i), bool(paired)
    )
