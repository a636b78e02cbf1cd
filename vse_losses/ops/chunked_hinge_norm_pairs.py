"""ℓp norms of both directions' violation vectors of every positive pair, in one pass over row
tiles of ``S = x yᵀ`` (torch).

For a positive pair ``(a_j, p_j)`` with threshold ``t_j = S[a_j, p_j] − α_j`` (α: the margin):

    i2t:  T¹_j = (Σ_n [S[a_j, n] − t_j]_+^p)^{1/p}   over the negatives n of row a_j,
    t2i:  T²_j = (Σ_n [S[n, p_j] − t_j]_+^p)^{1/p}   over the negatives n of column p_j.

A row tile holds whole rows, so T¹ of its pairs is complete; T² is accumulated over the tiles
online (running max and rescaled sum, as flash-attention's softmax). One score product serves both
directions. The backward recomputes each tile and turns it into ``dS = Σ weights`` scattered
into rows (i2t) and columns (t2i), then ``∂x = dS y``, ``∂y = dSᵀ x``, ``∂t_j = −Σ_n W_jn``:
four products in all against the dense formula's three, and nothing B×M outlives a tile. The
thresholds' ``∂t`` reaches x and y through the pairs' scores
(:class:`~vse_losses.ops.tiling.PairScores`, in place: no gradient-sized buffer of its own) and
``∂α = −∂t``.

Cosine (``cosine=True``): the scores are ``S_in = c_i c_n x_i·y_n`` with ``c = 1/max(‖·‖, ε)``
(as F.normalize), the scales applied to each score tile and to the pairs' scores; no normalised
copy of x or y is made. The backward scales each tile's dS as ``W̃ = c_x dS c_y`` and removes the
normalisation's share:

    ∂x_i = (W̃ y)_i − c_i² A_i x_i,   A_i = x_i·(W̃ y)_i = Σ_n dS_in S_in,

and ∂y likewise from ``W̃ᵀ x`` once it is complete (:meth:`~vse_losses.ops.tiling.PairTiles.finish`),
as :mod:`~vse_losses.ops.chunked_lse_pairs` does.
"""

from __future__ import annotations

import torch

from .chunked_row_dots import row_dots_forward_chunked
from .lp_norm import lp_finish, lp_merge, lp_norm, lp_stats, lp_weights
from .tiling import PairScores, PairTiles, cosine_scale_pair


def _weights(h: torch.Tensor, T: torch.Tensor, g: torch.Tensor, p: float) -> torch.Tensor:
    """∂T/∂h · g for h ≥ 0, T and g broadcast against h."""
    return lp_weights(h, T, p).mul_(g)


class HingeNormPairsChunked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, margin, a, p_idx, labels, ref_labels, self_ref, p, do_i2t, do_t2i, paired, cosine):
        scales = cosine_scale_pair(x, y, cosine)
        tiles = PairTiles(x, y, a, p_idx, labels, ref_labels, self_ref, paired, scales)
        pairs = PairScores.computed(x, y, a, p_idx, scales, tiles.diagonal, row_dots_forward_chunked, tiles.wide)
        tw = (pairs.s - margin).to(tiles.wide)  # the thresholds
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
        ctx.save_for_backward(x, y, tw, a, p_idx, labels, ref_labels, T1, T2, pairs.s, *(scales or ()))
        ctx.self_ref, ctx.p, ctx.do_i2t, ctx.do_t2i, ctx.paired = self_ref, p, do_i2t, do_t2i, paired
        ctx.margin = (margin.dtype, margin.shape) if torch.is_tensor(margin) else None
        return T1, T2

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g1, g2):
        x, y, tw, a, p_idx, labels, ref_labels, T1, T2, s, *scales = ctx.saved_tensors
        p = ctx.p
        tiles = PairTiles(x, y, a, p_idx, labels, ref_labels, ctx.self_ref, ctx.paired, scales or None)
        wide = tiles.wide
        gx = torch.empty(x.shape, dtype=wide, device=x.device)
        gy = torch.zeros(y.shape, dtype=wide, device=x.device)
        gt = torch.zeros(tw.shape, dtype=wide, device=x.device)
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
        tiles.finish(gy)
        # t = s(a, p) − α: the pairs' scores pass ∂t on to x and y
        pairs = PairScores(x, y, a, p_idx, scales or None, tiles.diagonal, s)
        pairs.add_grad_(gx, 0, gt)
        pairs.add_grad_(gy, 1, gt)
        gm = None
        if ctx.margin is not None and ctx.needs_input_grad[2]:
            gm = (-gt).sum_to_size(ctx.margin[1]).to(ctx.margin[0])
        return (gx.to(x.dtype), gy.to(y.dtype), gm, *[None] * 10)


def hinge_norm_pairs_chunked(
    x,
    y,
    margin,
    a,
    p_idx,
    labels,
    ref_labels,
    self_ref: bool,
    p: float,
    do_i2t: bool = True,
    do_t2i: bool = True,
    paired: bool = False,
    cosine: bool = False,
):
    """See :func:`vse_losses.ops.hinge_norm_pairs` (``(a, p_idx)`` rows ascending)."""
    return HingeNormPairsChunked.apply(
        x,
        y,
        margin,
        a,
        p_idx,
        labels,
        ref_labels,
        bool(self_ref),
        float(p),
        bool(do_i2t),
        bool(do_t2i),
        bool(paired),
        bool(cosine),
    )
