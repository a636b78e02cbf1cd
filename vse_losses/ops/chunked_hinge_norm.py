"""ℓp norms of the hinge rows, ``T_i = (Σ_j [q_i·k_j − t_i]_+^p)^{1/p}``, in tiles of rows (torch).

The forward keeps only T; the backward recomputes each score tile (flash-attention style) and
turns it into the weights ``W_ij = g_i (h_ij / T_i)^{p−1} 1[h_ij > 0]``, so that
``∂/∂q = W keys``, ``∂/∂keys = Wᵀ q`` and ``∂/∂t = −Σ_j W_ij``. Nothing (N × M) outlives a tile.
"""

from __future__ import annotations

import torch

from .lp_norm import lp_norm, lp_weights
from .tiling import Matmul, SameLabel, mask_non_negatives_, tile_rows


def _hinge_tile(mm, q, kt, t, q_labels, same, q_self):
    S = mm(q, kt)
    mask_non_negatives_(S, same, q_labels, q_self, float("-inf"))
    return S.sub_(t.to(S.dtype)[:, None]).clamp_(min=0.0)


class HingeNormRowsChunked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, keys, t, q_labels, k_labels, q_self, p):
        mm = Matmul(q.dtype, q.device)
        wide, kt = mm.wide, mm.operand(keys).t()
        N = q.shape[0]
        tile = tile_rows(N, keys.shape[0], keys.device)
        T = torch.empty(N, dtype=wide, device=q.device)
        same = SameLabel(k_labels)
        for r0 in range(0, N, tile):
            r1 = min(N, r0 + tile)
            h = _hinge_tile(mm, q[r0:r1], kt, t[r0:r1], q_labels[r0:r1], same, q_self[r0:r1])
            T[r0:r1] = lp_norm(h, p, dim=1)
        ctx.save_for_backward(q, keys, t, q_labels, k_labels, q_self, T)
        ctx.p = p
        return T

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        q, keys, t, q_labels, k_labels, q_self, T = ctx.saved_tensors
        mm = Matmul(q.dtype, q.device)
        wide, kw = mm.wide, mm.operand(keys)
        kt = kw.t()
        N = q.shape[0]
        tile = tile_rows(N, keys.shape[0], keys.device)
        gq = torch.empty(q.shape, dtype=wide, device=q.device)
        gk = torch.zeros(keys.shape, dtype=wide, device=q.device)
        gt = torch.empty(N, dtype=wide, device=q.device)
        same = SameLabel(k_labels)
        for r0 in range(0, N, tile):
            r1 = min(N, r0 + tile)
            h = _hinge_tile(mm, q[r0:r1], kt, t[r0:r1], q_labels[r0:r1], same, q_self[r0:r1])
            W = lp_weights(h, T[r0:r1, None], ctx.p).mul_(g[r0:r1, None].to(wide))
            gq[r0:r1] = mm(W, kw)
            mm.add_product(gk, W.t(), q[r0:r1])
            gt[r0:r1] = -W.sum(1)
        return gq.to(q.dtype), gk.to(keys.dtype), gt.to(t.dtype), None, None, None, None


def hinge_norm_rows_chunked(q, keys, t, q_labels, k_labels, q_self, p: float) -> torch.Tensor:
    """See :func:`vse_losses.ops.hinge_norm_rows`."""
    return HingeNormRowsChunked.apply(q, keys, t, q_labels, k_labels, q_self, float(p))
