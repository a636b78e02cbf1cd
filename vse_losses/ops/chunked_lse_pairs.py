"""Both directions' smoothed maxima of every positive pair, in one pass over row tiles of ``S = x yᵀ``
(torch): an online log-sum-exp, as flash-attention's softmax.

For a positive pair ``(a_j, p_j)`` with threshold ``t_j = S[a_j, p_j] − α_j`` (α: the margin)
and temperature τ:

    i2t:  L¹_j = log(1 + Σ_n exp((S[a_j, n] − t_j)/τ))   over the negatives n of row a_j,
    t2i:  L²_j = log(1 + Σ_n exp((S[n, p_j] − t_j)/τ))   over the negatives n of column p_j.

The 1 is the positive itself (exp(0)); with α = 0, L is −log of the positive's softmax among
itself and its negatives (InfoNCE, CLIP). A row tile holds whole rows, so L¹ of its pairs is
complete; L² is accumulated over the tiles as a running maximum ``m`` and a rescaled sum
``s = Σ exp(z − m)`` (started at the positive's ``m = 0, s = 1``), ``L = m + log s``.

Backward: the tiles are recomputed against the saved L. With ``z = (S − t)/τ`` and the softmax
weights ``w = exp(z − L)``,

    ∂L/∂S_n = w_n/τ,   ∂L/∂t = −Σ_n w_n/τ,   ∂L/∂τ = −Σ_n w_n z_n/τ,

scattered into rows (i2t) and columns (t2i) of one ``dS`` per tile, then ``∂x = dS y`` and
``∂y = dSᵀ x``; the thresholds' ``∂t`` reaches x and y through the pairs' scores
(:class:`~vse_losses.ops.tiling.PairScores`, in place: no gradient-sized buffer of its own) and
``∂α = −∂t``. One product forward, three backward, nothing B×M alive beyond a tile.

Cosine (``cosine=True``): the scores are ``S_in = c_i c_n x_i·y_n`` with ``c = 1/max(‖·‖, ε)``
(as F.normalize), the scales applied to each score tile and to the pairs' scores; no normalised
copy of x or y is made. The backward scales each tile's dS as ``W̃ = c_x dS c_y`` and removes the
normalisation's share:

    ∂x_i = (W̃ y)_i − c_i² A_i x_i,   A_i = x_i·(W̃ y)_i = Σ_n dS_in S_in,

and ∂y likewise from ``W̃ᵀ x`` once it is complete (:meth:`~vse_losses.ops.tiling.PairTiles.finish`).
"""

from __future__ import annotations

import torch

from .chunked_row_dots import row_dots_forward_chunked
from .tiling import PairScores, PairTiles, cosine_scale_pair


def _z(H: torch.Tensor, t: torch.Tensor, tau: float) -> torch.Tensor:
    """A new tile (S − t)/τ (−∞ stays −∞)."""
    return torch.sub(H, t).div_(tau)


def _weights(H, t, L, tau, g, dim, need_tau):
    """The tile's ``g/τ · w``, ``w = exp(z − L)`` (0 where z = −∞), and, when the temperature needs
    its gradient, ``Σ g/τ · w z`` (as ``Σ w log w + L Σ w``: no −∞·0). ``dim``: the tile's axis
    of one pair (1: rows, i2t; 0: columns, t2i)."""
    W = _z(H, t, tau).sub_(L).exp_()
    scale = g / tau
    wz = None
    if need_tau:
        wz = ((torch.special.xlogy(W, W).sum(dim) + L.squeeze(dim) * W.sum(dim)) * scale.squeeze(dim)).sum()
    return W.mul_(scale), wz


class LsePairsChunked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, margin, tau, a, p_idx, labels, ref_labels, self_ref, do_i2t, do_t2i, paired, cosine):
        scales = cosine_scale_pair(x, y, cosine)
        tiles = PairTiles(x, y, a, p_idx, labels, ref_labels, self_ref, paired, scales)
        pairs = PairScores.computed(x, y, a, p_idx, scales, tiles.diagonal, row_dots_forward_chunked, tiles.wide)
        tw, tv = (pairs.s - margin).to(tiles.wide), float(tau)  # the thresholds
        P = a.shape[0]
        L1 = torch.zeros(P, dtype=tiles.wide, device=x.device)
        m2 = torch.zeros(P, dtype=tiles.wide, device=x.device)  # the positive: exp(0 − 0) = 1
        s2 = torch.ones(P, dtype=tiles.wide, device=x.device)
        for r0, _r1, j0, j1, S in tiles:
            if do_i2t and j1 > j0:
                z = _z(tiles.rows_of_pairs(S, r0, j0, j1), tw[j0:j1, None], tv)
                m = z.amax(1).clamp_(min=0.0)  # the positive's 0 is in the maximum
                total = z.sub_(m[:, None]).exp_().sum(1).add_(torch.exp(-m))
                L1[j0:j1] = m + total.log_()
            if do_t2i:
                z = _z(S if tiles.diagonal else S[:, p_idx], tw[None, :], tv)
                m_new = torch.maximum(m2, z.amax(0))
                s2 = s2 * torch.exp(m2 - m_new) + z.sub_(m_new).exp_().sum(0)
                m2 = m_new
        L2 = m2 + torch.log(s2)
        ctx.save_for_backward(x, y, tw, a, p_idx, labels, ref_labels, L1, L2, pairs.s, *(scales or ()))
        ctx.tau, ctx.self_ref, ctx.do_i2t, ctx.do_t2i, ctx.paired = tv, self_ref, do_i2t, do_t2i, paired
        ctx.tau_dtype = tau.dtype if torch.is_tensor(tau) else None
        ctx.margin = (margin.dtype, margin.shape) if torch.is_tensor(margin) else None
        return L1, L2

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g1, g2):
        x, y, tw, a, p_idx, labels, ref_labels, L1, L2, s, *scales = ctx.saved_tensors
        tau = ctx.tau
        need_tau = ctx.tau_dtype is not None and ctx.needs_input_grad[3]
        tiles = PairTiles(x, y, a, p_idx, labels, ref_labels, ctx.self_ref, ctx.paired, scales or None)
        wide = tiles.wide
        gx = torch.empty(x.shape, dtype=wide, device=x.device)
        gy = torch.zeros(y.shape, dtype=wide, device=x.device)
        gt = torch.zeros(tw.shape, dtype=wide, device=x.device)
        gtau = torch.zeros((), dtype=wide, device=x.device)
        do_i2t = ctx.do_i2t and g1 is not None
        do_t2i = ctx.do_t2i and g2 is not None
        for r0, r1, j0, j1, S in tiles:
            dS = None
            if do_i2t and j1 > j0:
                H = tiles.rows_of_pairs(S, r0, j0, j1)
                W, wz = _weights(H, tw[j0:j1, None], L1[j0:j1, None], tau, g1[j0:j1, None].to(wide), 1, need_tau)
                gt[j0:j1] -= W.sum(1)
                gtau = gtau - wz if need_tau else gtau
                dS = tiles.scatter_rows(dS, W, r0, r1, j0, j1)
            if do_t2i:
                H = S if tiles.diagonal else S[:, p_idx]
                W, wz = _weights(H, tw[None, :], L2[None, :], tau, g2[None, :].to(wide), 0, need_tau)
                gt -= W.sum(0)
                gtau = gtau - wz if need_tau else gtau
                dS = tiles.scatter_cols(dS, W, p_idx)
            tiles.backprop(dS, r0, r1, gx, gy)
        tiles.finish(gy)
        # t = s(a, p) − α: the pairs' scores pass ∂t on to x and y
        pairs = PairScores(x, y, a, p_idx, scales or None, tiles.diagonal, s)
        pairs.add_grad_(gx, 0, gt)
        pairs.add_grad_(gy, 1, gt)
        gtau = gtau.to(ctx.tau_dtype) if need_tau else None
        gm = None
        if ctx.margin is not None and ctx.needs_input_grad[2]:
            gm = (-gt).sum_to_size(ctx.margin[1]).to(ctx.margin[0])
        return (gx.to(x.dtype), gy.to(y.dtype), gm, gtau, *[None] * 9)


def lse_pairs_chunked(
    x,
    y,
    margin,
    tau,
    a,
    p_idx,
    labels,
    ref_labels,
    self_ref: bool,
    do_i2t: bool = True,
    do_t2i: bool = True,
    paired: bool = False,
    cosine: bool = False,
):
    """``(L¹, L²)``, each (P,) float32 (float64 for float64 inputs; zeros for a direction not
    asked for); see the module docstring. x: (B, D), y: (M, D), ``margin`` α: a float or a tensor
    broadcastable to (P,) (differentiable: each pair's own margin), the thresholds being
    ``s(a_j, p_j) − α_j``; τ a float or a 0-dim tensor (differentiable), ``(a, p_idx)`` the
    positive pairs (rows ascending); negatives as in :func:`~vse_losses.ops.negative_topk`.
    ``paired``: pair j is (j, j), labels ``arange``. ``cosine``: the scores are the cosines of the
    rows of x and y (the gradients those of x and y)."""
    return LsePairsChunked.apply(
        x,
        y,
        margin,
        tau,
        a,
        p_idx,
        labels,
        ref_labels,
        bool(self_ref),
        bool(do_i2t),
        bool(do_t2i),
        bool(paired),
        bool(cosine),
    )
