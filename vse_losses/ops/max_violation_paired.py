"""Max-violation terms of a paired batch in O(B) memory beyond the inputs, the cosine folded in.

Pair j is (x_j, y_j) and every other pair is a negative. With c = 1/max(‖·‖, ε) (cosine) or
c = 1 (dot product), the scores are ``s_ij = c_i c_j x_i·y_j`` and the terms (eq. 6)

    i2t_i = [α − s_ii + s_{i,h_i}]_+,   h_i = argmax_{j≠i} s_ij
    t2i_j = [α − s_jj + s_{v_j,j}]_+,   v_j = argmax_{i≠j} s_ij

Forward: the hardest negatives and their scores by :func:`~vse_losses.ops.negative_topk` (k = 1)
with the scales applied to the score tiles, the diagonal by :func:`row_dots`. No normalised copy
of x or y is made; what is saved is x and y themselves and O(B) vectors.

Backward: with w¹, w² the output gradients where a hinge is active, the score gradient dS holds
−(w¹_i + w²_i) at (i, i), w¹_i at (i, h_i) and w²_j at (v_j, j). With x̂ = c x, ŷ = c y,

    ∂x_i = c_i (Σ_j dS_ij ŷ_j − A_i x̂_i),   A_i = Σ_j dS_ij s_ij   (A = 0 for the dot product)
    ∂y_j = c_j (Σ_i dS_ij x̂_i − A'_j ŷ_j),  A'_j = Σ_i dS_ij s_ij

Row i of ∂x gathers ŷ_i and ŷ_{h_i} and receives w²_j ŷ_j from every column j whose hardest row
is i. With ``impl="triton"`` one kernel per input does it in a single pass
(:mod:`~vse_losses.ops.triton_max_violation_backward`). Otherwise the gradients are written
chunk by chunk in the inputs' dtype; the received rows are
found by sorting the pairs by their hardest row, and added with ``index_put_(accumulate=True)``
into a chunk-sized float32 buffer (deterministic). Peak extra memory: a few chunks of
``TILE_ELEMENTS`` float32 values and O(B) vectors, plus what the hardest-negative search takes.
"""

from __future__ import annotations

import torch

from . import negative_topk
from .row_dots import row_dots
from .tiling import TILE_ELEMENTS

EPS = 1e-12  # as F.normalize and PML's CosineSimilarity


def _scale(t: torch.Tensor, cosine: bool, wide: torch.dtype) -> torch.Tensor:
    """c = 1/max(‖t_i‖, ε) in ``wide``, or ones."""
    if not cosine:
        return torch.ones(t.shape[0], dtype=wide, device=t.device)
    n = torch.linalg.vector_norm(t, dim=1, dtype=wide)
    return 1.0 / n.clamp_min(EPS)


class MaxViolationPaired(torch.autograd.Function):
    """forward(x, y, margin, cosine, impl) → (i2t (B,), t2i (B,)) terms, float32 (float64 for float64 inputs)."""

    @staticmethod
    def forward(ctx, x, y, margin, cosine, impl):
        B = x.shape[0]
        wide = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
        cx, cy = _scale(x, cosine, wide), _scale(y, cosine, wide)
        ids = torch.arange(B, device=x.device)
        with torch.no_grad():
            s_ii = row_dots(x, y, impl=impl) * cx * cy
            rv, ri, cv, ci = negative_topk(x, y, ids, ids, False, 1, impl=impl, paired=True,
                                           scales=(cx, cy) if cosine else None)
        rv, ri, cv, ci = rv[:, 0].to(wide), ri[:, 0], cv[:, 0].to(wide), ci[:, 0]
        i2t = torch.relu(margin - s_ii + rv)  # −inf (B = 1, no negative): 0
        t2i = torch.relu(margin - s_ii + cv)
        ctx.save_for_backward(x, y, cx, cy, s_ii, rv, ri, cv, ci, i2t, t2i)
        ctx.cosine, ctx.impl = cosine, impl
        return i2t, t2i

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g1, g2):
        x, y, cx, cy, s_ii, rv, ri, cv, ci, i2t, t2i = ctx.saved_tensors
        zero = torch.zeros((), device=x.device, dtype=i2t.dtype)
        w1 = torch.where(i2t > 0, g1.to(i2t.dtype), zero) if g1 is not None else torch.zeros_like(i2t)
        w2 = torch.where(t2i > 0, g2.to(t2i.dtype), zero) if g2 is not None else torch.zeros_like(t2i)
        d = -(w1 + w2)
        side = _side
        if ctx.impl == "triton":
            from .triton_max_violation_backward import mh_side_triton as side
        gx = gy = None
        if ctx.needs_input_grad[0]:
            gx = side(x, y, cx, cy, d, s_ii, w1, ri, rv, w2, ci, cv, ctx.cosine)
        if ctx.needs_input_grad[1]:
            gy = side(y, x, cy, cx, d, s_ii, w2, ci, cv, w1, ri, rv, ctx.cosine)
        return gx, gy, None, None, None


def _side(own, other, c_own, c_other, d, s_ii, w_own, hard_own, val_own, w_in, hard_in, val_in, cosine):
    """The gradient of one side (x: own = x, the terms "own" are i2t, the received ones t2i).

    Row i: c_i (d_i ô_i + w_own_i ô_{hard_own_i} + Σ_{j: hard_in_j = i} w_in_j ô_j − A_i ŝ_i),
    with ô the other side scaled, ŝ this side scaled, A_i = d_i s_ii + w_own_i val_own_i +
    Σ_{j: hard_in_j = i} w_in_j val_in_j.
    """
    B, D = own.shape
    wide = d.dtype
    step = max(1, min(B, TILE_ELEMENTS // max(D, 1)))

    def o_hat(idx):  # rows of the other side, scaled, in the wide dtype
        rows = other[idx].to(wide)
        return rows * c_other[idx, None] if cosine else rows

    if cosine:
        A = d * s_ii + w_own * val_own.nan_to_num(neginf=0.0)
        A = A.index_put((hard_in,), w_in * val_in.nan_to_num(neginf=0.0), accumulate=True)
        # ‖row‖ ≤ ε: normalisation divides by the constant ε, which has no projection term
        A = torch.where(c_own * EPS < 1.0, A, torch.zeros((), dtype=wide, device=A.device))
    if step >= B:  # one chunk: the scaled other side once, every index as it is
        oh = o_hat(slice(None))
        acc = d[:, None] * oh + w_own[:, None] * oh[hard_own]
        acc.index_put_((hard_in,), w_in[:, None] * oh, accumulate=True)
        if cosine:
            acc -= (A * c_own)[:, None] * own.to(wide)
            acc *= c_own[:, None]
        return acc.to(own.dtype)
    # several chunks: the senders with a gradient, sorted by the row they send to
    out = torch.empty_like(own)
    order = torch.nonzero(w_in).squeeze(1)  # (one synchronisation)
    order = order[torch.argsort(hard_in[order], stable=True)]
    bounds = torch.searchsorted(hard_in[order], torch.arange(0, B + step, step, device=own.device).clamp_max(B)).tolist()
    for c, r0 in enumerate(range(0, B, step)):
        r1 = min(B, r0 + step)
        acc = d[r0:r1, None] * o_hat(slice(r0, r1)) + w_own[r0:r1, None] * o_hat(hard_own[r0:r1])
        js = order[bounds[c]:bounds[c + 1]]
        for j0 in range(0, js.shape[0], step):  # a row can receive from every pair (a collapse)
            jj = js[j0:j0 + step]
            acc.index_put_((hard_in[jj] - r0,), w_in[jj, None] * o_hat(jj), accumulate=True)
        if cosine:
            acc -= (A[r0:r1] * c_own[r0:r1])[:, None] * own[r0:r1].to(wide)
            acc *= c_own[r0:r1, None]
        out[r0:r1] = acc
    return out


def max_violation_paired(x: torch.Tensor, y: torch.Tensor, margin: float, cosine: bool = True,
                         impl: str = "chunked"):
    """``(i2t, t2i)`` max-violation terms of the paired batch x, y (B, D); see the module docstring."""
    return MaxViolationPaired.apply(x, y, float(margin), bool(cosine), impl)
