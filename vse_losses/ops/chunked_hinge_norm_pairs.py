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
from .tiling import Matmul, SameLabel, diagonal_pairs, mask_non_negatives_, tile_rows

NEG_INF = float("-inf")


def _weights(h: torch.Tensor, T: torch.Tensor, g: torch.Tensor, p: float) -> torch.Tensor:
    """∂T/∂h · g for h ≥ 0, T and g broadcast against h."""
    return lp_weights(h, T, p).mul_(g)


class _Tiles:
    """The masked score tiles, recomputed identically in forward and backward."""

    def __init__(self, x, y, a, p_idx, labels, ref_labels, self_ref, paired=False):
        self.x, self.a, self.labels, self.self_ref = x, a, labels, self_ref
        self.mm = Matmul(x.dtype, x.device)
        self.wide, self.y = self.mm.wide, self.mm.operand(y)
        self.same = SameLabel(ref_labels, paired)
        B, M, P = x.shape[0], y.shape[0], a.shape[0]
        self.tile = tile_rows(B, M + P, x.device)
        # the unlabelled case: pair j is (j, j), so the pairs' rows (and columns) are the tile itself
        self.diagonal = diagonal_pairs(a, p_idx, B, M, paired)

    def __iter__(self):
        B = self.x.shape[0]
        for r0 in range(0, B, self.tile):
            r1 = min(B, r0 + self.tile)
            S = self.mm(self.x[r0:r1], self.y.t())
            own = torch.arange(r0, r1, device=S.device) if self.self_ref else None
            mask_non_negatives_(S, self.same, self.labels[r0:r1], own, NEG_INF)
            if self.diagonal:  # pair j is (j, j): the tile's pairs are its rows (no device sync)
                j0, j1 = r0, r1
            else:
                j0, j1 = (int(v) for v in torch.searchsorted(self.a, torch.tensor([r0, r1], device=self.a.device)))
            yield r0, r1, j0, j1, S

    def rows_of_pairs(self, S, r0, j0, j1):
        """(j1 − j0, M): the tile's rows of the pairs j0..j1 (whose a lies in the tile)."""
        return S if self.diagonal else S[self.a[j0:j1] - r0]


class HingeNormPairsChunked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, t, a, p_idx, labels, ref_labels, self_ref, p, do_i2t, do_t2i, paired):
        tiles = _Tiles(x, y, a, p_idx, labels, ref_labels, self_ref, paired)
        tw = t.to(tiles.wide)
        P = a.shape[0]
        T1 = torch.zeros(P, dtype=tiles.wide, device=x.device)
        m2 = torch.zeros(P, dtype=tiles.wide, device=x.device)  # the t2i norms' running statistics
        s2 = torch.zeros(P, dtype=tiles.wide, device=x.device)  # (ops/lp_norm.py)
        for r0, r1, j0, j1, S in tiles:
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
        tiles = _Tiles(x, y, a, p_idx, labels, ref_labels, ctx.self_ref, ctx.paired)
        wide, tw = tiles.wide, t.to(tiles.wide)
        gx = torch.empty(x.shape, dtype=wide, device=x.device)
        gy = torch.zeros(y.shape, dtype=wide, device=x.device)
        gt = torch.zeros(t.shape, dtype=wide, device=x.device)
        do_i2t = ctx.do_i2t and g1 is not None
        do_t2i = ctx.do_t2i and g2 is not None
        for r0, r1, j0, j1, S in tiles:
            dS = torch.zeros_like(S)
            if do_i2t and j1 > j0:
                H = (tiles.rows_of_pairs(S, r0, j0, j1) - tw[j0:j1, None]).clamp_(min=0.0)
                W = _weights(H, T1[j0:j1, None], g1[j0:j1, None].to(wide), p)
                if tiles.diagonal:
                    dS += W
                else:
                    dS.index_add_(0, a[j0:j1] - r0, W)
                gt[j0:j1] -= W.sum(1)
            if do_t2i:
                H = ((S if tiles.diagonal else S[:, p_idx]) - tw[None, :]).clamp_(min=0.0)
                W = _weights(H, T2[None, :], g2[None, :].to(wide), p)
                if tiles.diagonal:
                    dS += W
                else:
                    dS.index_add_(1, p_idx, W)
                gt -= W.sum(0)
            gx[r0:r1] = tiles.mm(dS, tiles.y)
            tiles.mm.add_product(gy, dS.t(), x[r0:r1])
        return gx.to(x.dtype), gy.to(y.dtype), gt.to(t.dtype), None, None, None, None, None, None, None, None, None


def hinge_norm_pairs_chunked(x, y, t, a, p_idx, labels, ref_labels, self_ref: bool, p: float,
                             do_i2t: bool = True, do_t2i: bool = True, paired: bool = False):
    """See :func:`vse_losses.ops.hinge_norm_pairs`."""
    return HingeNormPairsChunked.apply(
        x, y, t, a, p_idx, labels, ref_labels, bool(self_ref), float(p), bool(do_i2t), bool(do_t2i), bool(paired)
    )
