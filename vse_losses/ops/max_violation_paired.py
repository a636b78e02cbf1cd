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
is i: one pass per input, the backend's ``mh_side`` (chunked:
:mod:`~vse_losses.ops.chunked_max_violation_backward`; Triton:
:mod:`~vse_losses.ops.triton_max_violation_backward`).
"""

from __future__ import annotations

import torch

from .tiling import cosine_scales


def _scale(t: torch.Tensor, cosine: bool, wide: torch.dtype) -> torch.Tensor:
    """c = 1/max(‖t_i‖, ε) in ``wide``, or ones."""
    if not cosine:
        return torch.ones(t.shape[0], dtype=wide, device=t.device)
    return cosine_scales(t, wide)


class MaxViolationPaired(torch.autograd.Function):
    """forward(x, y, margin, cosine, backend) → (i2t (B,), t2i (B,)) terms, float32 (float64 for
    float64 inputs); ``backend`` (:class:`~vse_losses.ops.Backend`) gives the search, the dots
    and the backward's per-side pass."""

    @staticmethod
    def forward(ctx, x, y, margin, cosine, backend):
        B = x.shape[0]
        wide = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
        cx, cy = _scale(x, cosine, wide), _scale(y, cosine, wide)
        ids = torch.arange(B, device=x.device)
        with torch.no_grad():
            s_ii = backend.row_dots(x, y) * cx * cy
            rv, ri, cv, ci = backend.negative_topk(
                x, y, ids, ids, False, 1, paired=True, scales=(cx, cy) if cosine else None
            )
        rv, ri, cv, ci = rv[:, 0].to(wide), ri[:, 0], cv[:, 0].to(wide), ci[:, 0]
        i2t = torch.relu(margin - s_ii + rv)  # −inf (B = 1, no negative): 0
        t2i = torch.relu(margin - s_ii + cv)
        ctx.save_for_backward(x, y, cx, cy, s_ii, rv, ri, cv, ci, i2t, t2i)
        ctx.cosine, ctx.side = cosine, backend.mh_side
        return i2t, t2i

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g1, g2):
        x, y, cx, cy, s_ii, rv, ri, cv, ci, i2t, t2i = ctx.saved_tensors
        zero = torch.zeros((), device=x.device, dtype=i2t.dtype)
        w1 = torch.where(i2t > 0, g1.to(i2t.dtype), zero) if g1 is not None else torch.zeros_like(i2t)
        w2 = torch.where(t2i > 0, g2.to(t2i.dtype), zero) if g2 is not None else torch.zeros_like(t2i)
        d = -(w1 + w2)
        side = ctx.side
        gx = gy = None
        if ctx.needs_input_grad[0]:
            gx = side(x, y, cx, cy, d, s_ii, w1, ri, rv, w2, ci, cv, ctx.cosine)
        if ctx.needs_input_grad[1]:
            gy = side(y, x, cy, cx, d, s_ii, w2, ci, cv, w1, ri, rv, ctx.cosine)
        return gx, gy, None, None, None


def max_violation_paired(x: torch.Tensor, y: torch.Tensor, margin: float, cosine: bool, backend):
    """``(i2t, t2i)`` max-violation terms of the paired batch x, y (B, D); see the module docstring."""
    return MaxViolationPaired.apply(x, y, float(margin), bool(cosine), backend)
