"""Both directions' ℓp hinge norms of the diagonal pairs, with one backward for both (Triton + cuBLAS).

For the common case where positive pair j is ``(j, j)`` (x and y both B×D, P = B), threshold
``t_j``, and (i, n) a negative iff ``labels[i] != ref_labels[n]`` (and ``i != n`` with ``self_ref``):

    T¹_j = (Σ_n [x_j·y_n − t_j]_+^p)^{1/p}     (i2t, row j of S = x yᵀ)
    T²_j = (Σ_n [x_n·y_j − t_j]_+^p)^{1/p}     (t2i, column j of S)

Forward: the fused row kernel of :mod:`.triton_hinge_norm` once per direction. Backward: with
``W = ∂(g¹·T¹ + g²·T²)/∂S`` (both directions' weights in one matrix),

    ∂x = W y,   ∂y = Wᵀ x,   ∂t_j = −Σ_n W¹_jn − Σ_n W²_nj,

computed in row chunks of W: a Triton kernel recomputes the score tiles and writes the chunk of
weights with its i2t row sums and t2i column sums, cuBLAS multiplies it twice (the chunk's rows
of ∂x; its contribution to ∂y, accumulated in float32). One recomputed product and two cuBLAS
products serve both directions. Nothing B×B is alive; the chunk holds ``W_CHUNK_ELEMENTS``
weights, and the ∂y accumulator is B×D float32.
"""

from __future__ import annotations

import torch

from .tiling import Matmul
from .triton_hinge_norm import (
    _check_precision,
    _chunk_rows,
    _forward,
    _grad_scale,
    _prep,
    _weight_config,
    _weights,
    is_interpreting,
)


class HingeNormPairsTriton(torch.autograd.Function):
    """forward(x, y, t, labels, ref_labels, self_ref, p, do_i2t, do_t2i) → (T¹, T²), each (B,) fp32."""

    @staticmethod
    def forward(ctx, x, y, t, labels, ref_labels, self_ref, p, do_i2t, do_t2i):
        B = x.shape[0]
        own = torch.arange(B, device=x.device) if self_ref else torch.full((B,), -1, device=x.device)
        xc, yc, tc, lx, ly, own, dtype = _prep(x, y, t, labels, ref_labels, own)
        precision = _check_precision("ieee") if dtype == torch.float32 else "ieee"
        zeros = torch.zeros(B, device=x.device, dtype=torch.float32)
        T1 = _forward(xc, yc, tc, lx, ly, own, p, precision) if do_i2t else zeros
        T2 = _forward(yc, xc, tc, ly, lx, own, p, precision) if do_t2i else zeros
        ctx.save_for_backward(xc, yc, tc, lx, ly, own, T1, T2)
        ctx.self_ref, ctx.p, ctx.precision = self_ref, p, precision
        ctx.do = (do_i2t, do_t2i)
        ctx.dtypes = (x.dtype, y.dtype, t.dtype)
        return T1, T2

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g1, g2):
        xc, yc, tc, lx, ly, own, T1, T2 = ctx.saved_tensors
        B, D = xc.shape
        p = ctx.p
        g1 = g1 if ctx.do[0] and g1 is not None else None
        g2 = g2 if ctx.do[1] and g2 is not None else None
        gx = torch.zeros((B, D), device=xc.device, dtype=torch.float32)
        gy = torch.zeros((B, D), device=xc.device, dtype=torch.float32)
        gt = torch.zeros((B,), device=xc.device, dtype=torch.float32)
        scale = _grad_scale(g1, g2)
        if B and D and scale is not None:
            i2t = None if g1 is None else (tc, T1, (g1.to(torch.float32) / scale).contiguous())
            t2i = None if g2 is None else (tc, T2, (g2.to(torch.float32) / scale).contiguous())
            own_idx = own if ctx.self_ref else None
            mm = Matmul(xc.dtype, xc.device)
            x_op, y_op = mm.operand(xc), mm.operand(yc)
            step = _chunk_rows(B, B, _weight_config(xc.dtype, is_interpreting())["BLOCK_M"])
            # one pass over chunks of W's rows: ∂x rows complete, ∂y accumulated (float32), ∂t from
            # the i2t row sums and the t2i column sums; the scale is applied once at the end
            for r0 in range(0, B, step):
                R = min(step, B - r0)
                W, rsum, csum = _weights(xc, yc, r0, R, i2t, t2i, lx, ly, own_idx, None, p=p,
                                         precision=ctx.precision, w_dtype=mm.operand_dtype, col_sums=True)
                gx[r0:r0 + R] = mm(W, y_op)
                gy += mm(W.t(), x_op[r0:r0 + R])
                if rsum is not None:
                    gt[r0:r0 + R] -= rsum
                if csum is not None:
                    gt -= csum
            gx.mul_(scale)
            gy.mul_(scale)
            gt.mul_(scale)
        x_dtype, y_dtype, t_dtype = ctx.dtypes
        return gx.to(x_dtype), gy.to(y_dtype), gt.to(t_dtype), None, None, None, None, None, None


def hinge_norm_pairs_triton(x, y, t, labels, ref_labels, self_ref: bool, p: float,
                            do_i2t: bool = True, do_t2i: bool = True):
    """``(T¹, T²)`` of the diagonal pairs; see the module docstring. x, y (B, D); t, labels, ref_labels (B,)."""
    p = float(p)
    if not (p >= 1.0) or p == float("inf"):
        raise ValueError(f"p must be a finite number >= 1, got {p}")
    return HingeNormPairsTriton.apply(x, y, t, labels, ref_labels, bool(self_ref), p, bool(do_i2t), bool(do_t2i))
