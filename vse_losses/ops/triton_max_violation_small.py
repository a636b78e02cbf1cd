"""Small paired batches (B ≤ 128): the whole max-violation loss in one Triton launch each way.

At small B the loss is bound by kernel launches, not by arithmetic: the general path takes
dozens of torch operations per call. Here one kernel computes, for the paired batch x, y (B, D)
with scores ``s_ij = c_i c_j x_i·y_j`` (cosine: c = 1/max(‖·‖, ε); dot product: c = 1),
the 2B terms of eq. 6 (i2t then t2i, as :func:`vse_losses.functional.violation_terms`); the
backward kernel recomputes the B×B score tile in registers and writes both gradients:

    dS = −diag(w¹ + w²) + w¹_i·1[j = h_i] + w²_j·1[i = v_j]      (w: output gradients of active terms)
    ∂x = c ⊙ (dS ŷ − A ⊙ x̂),  ∂y = c ⊙ (dSᵀ x̂ − A' ⊙ ŷ),  A = rowsum(dS ⊙ S), A' = colsum(dS ⊙ S)

(the projections A vanish for the dot product), one program per BLOCK_D columns of the gradients.
Ties go to the lowest index, as everywhere else.
"""

from __future__ import annotations

import torch

from .triton_negative_max import TRITON_AVAILABLE, is_interpreting, jitted

if TRITON_AVAILABLE:
    import triton
    import triton.language as tl
else:  # pragma: no cover
    triton = None
    tl = None

MAX_B = 128


def _small_mh_kernel(
    x_ptr, y_ptr, g_ptr, out_ptr, gx_ptr, gy_ptr,
    B, D, stride_x, stride_y, margin,
    COSINE: tl.constexpr, BACKWARD: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = tl.arange(0, BLOCK_B)
    ok = offs < B
    offs_k = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + offs.to(tl.int64)[:, None] * stride_x
    y_rows = y_ptr + offs.to(tl.int64)[:, None] * stride_y
    acc = tl.zeros([BLOCK_B, BLOCK_B], dtype=tl.float32)
    nx = tl.zeros([BLOCK_B], dtype=tl.float32)
    ny = tl.zeros([BLOCK_B], dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        kk = k0 + offs_k
        m = ok[:, None] & (kk[None, :] < D)
        a = tl.load(x_rows + kk[None, :], mask=m, other=0.0)
        b = tl.load(y_rows + kk[None, :], mask=m, other=0.0)
        acc = tl.dot(a, tl.trans(b), acc, input_precision=INPUT_PRECISION)
        if COSINE:
            af = a.to(tl.float32)
            bf = b.to(tl.float32)
            nx += tl.sum(af * af, axis=1)
            ny += tl.sum(bf * bf, axis=1)
    if COSINE:
        cx = 1.0 / tl.maximum(tl.sqrt(nx), 1e-12)  # ε as F.normalize
        cy = 1.0 / tl.maximum(tl.sqrt(ny), 1e-12)
        s = acc * cx[:, None] * cy[None, :]
    else:
        s = acc
    eye = offs[:, None] == offs[None, :]
    both = ok[:, None] & ok[None, :]
    s_row = tl.sum(tl.where(eye & both, s, 0.0), axis=1)  # s_ii by row
    s_col = tl.sum(tl.where(eye & both, s, 0.0), axis=0)  # s_jj by column
    sm = tl.where(both & (~eye), s, float("-inf"))
    rv, h = tl.max(sm, axis=1, return_indices=True, return_indices_tie_break_left=True)
    cv, v = tl.max(sm, axis=0, return_indices=True, return_indices_tie_break_left=True)
    i2t = tl.maximum(margin - s_row + rv, 0.0)
    t2i = tl.maximum(margin - s_col + cv, 0.0)
    if not BACKWARD:
        tl.store(out_ptr + offs, i2t, mask=ok)
        tl.store(out_ptr + B + offs, t2i, mask=ok)
    else:
        g1 = tl.load(g_ptr + offs, mask=ok, other=0.0)
        g2 = tl.load(g_ptr + B + offs, mask=ok, other=0.0)
        w1 = tl.where(i2t > 0.0, g1, 0.0)
        w2 = tl.where(t2i > 0.0, g2, 0.0)
        dS = tl.where(eye, -(w1[:, None] + w2[None, :]), 0.0)
        dS += tl.where(offs[None, :] == h[:, None], w1[:, None], 0.0)
        dS += tl.where(offs[:, None] == v[None, :], w2[None, :], 0.0)
        dS = tl.where(both, dS, 0.0)
        dd = pid * BLOCK_D + tl.arange(0, BLOCK_D)
        md = ok[:, None] & (dd[None, :] < D)
        xd = tl.load(x_rows + dd[None, :], mask=md, other=0.0).to(tl.float32)
        yd = tl.load(y_rows + dd[None, :], mask=md, other=0.0).to(tl.float32)
        if COSINE:
            xh = xd * cx[:, None]
            yh = yd * cy[:, None]
            ds_s = dS * s
            # ‖row‖ ≤ ε: normalisation divides by the constant ε, which has no projection term
            A = tl.where(cx * 1e-12 < 1.0, tl.sum(ds_s, axis=1), 0.0)
            A2 = tl.where(cy * 1e-12 < 1.0, tl.sum(ds_s, axis=0), 0.0)
            gx = cx[:, None] * (tl.dot(dS, yh, input_precision="ieee") - A[:, None] * xh)
            gy = cy[:, None] * (tl.dot(tl.trans(dS), xh, input_precision="ieee") - A2[:, None] * yh)
        else:
            gx = tl.dot(dS, yd, input_precision="ieee")
            gy = tl.dot(tl.trans(dS), xd, input_precision="ieee")
        tl.store(gx_ptr + offs.to(tl.int64)[:, None] * D + dd[None, :], gx, mask=md)
        tl.store(gy_ptr + offs.to(tl.int64)[:, None] * D + dd[None, :], gy, mask=md)


def _config(B: int, dtype: torch.dtype, interpret: bool) -> dict:
    bb = max(16, triton.next_power_of_2(B))
    if interpret:
        return dict(BLOCK_B=bb, BLOCK_K=16, BLOCK_D=16, num_warps=4)
    return dict(BLOCK_B=bb, BLOCK_K=32 if dtype == torch.float32 else 64, BLOCK_D=32, num_warps=4 if bb <= 32 else 8 if bb <= 64 else 16)


def _launch(x, y, margin, cosine, g=None):
    B, D = x.shape
    cfg = _config(B, x.dtype, is_interpreting())
    f32 = dict(device=x.device, dtype=torch.float32)
    out = torch.empty(2 * B, **f32) if g is None else None
    gx = torch.empty((B, D), **f32) if g is not None else None
    gy = torch.empty((B, D), **f32) if g is not None else None
    dummy = out if out is not None else gx
    grid = (1,) if g is None else (triton.cdiv(D, cfg["BLOCK_D"]),)
    jitted(_small_mh_kernel)[grid](
        x, y, dummy if g is None else g, dummy if out is None else out,
        dummy if gx is None else gx, dummy if gy is None else gy,
        B, D, x.stride(0), y.stride(0), float(margin),
        COSINE=bool(cosine), BACKWARD=g is not None,
        BLOCK_B=cfg["BLOCK_B"], BLOCK_K=cfg["BLOCK_K"], BLOCK_D=cfg["BLOCK_D"],
        INPUT_PRECISION="ieee", num_warps=cfg["num_warps"],
    )
    return out if g is None else (gx, gy)


class MaxViolationSmall(torch.autograd.Function):
    """forward(x, y, margin, cosine) → the 2B terms (i2t then t2i), float32."""

    @staticmethod
    def forward(ctx, x, y, margin, cosine):
        x, y = x.contiguous(), y.contiguous()
        ctx.save_for_backward(x, y)
        ctx.margin, ctx.cosine = margin, cosine
        return _launch(x, y, margin, cosine)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        gx, gy = _launch(x, y, ctx.margin, ctx.cosine, g.to(torch.float32).contiguous())
        return gx.to(x.dtype), gy.to(y.dtype), None, None


def usable(x: torch.Tensor, y: torch.Tensor) -> bool:
    """A paired batch this kernel takes: same dtype (fp32/fp16/bf16), 1 ≤ B ≤ MAX_B, D ≥ 1."""
    return (TRITON_AVAILABLE and x.dtype == y.dtype and x.dtype in (torch.float32, torch.float16, torch.bfloat16)
            and 1 <= x.shape[0] <= MAX_B and x.shape[1] >= 1)


def max_violation_small(x: torch.Tensor, y: torch.Tensor, margin: float, cosine: bool = True) -> torch.Tensor:
    """The 2B max-violation terms of the paired batch x, y (B ≤ 128, D); see the module docstring."""
    return MaxViolationSmall.apply(x, y, float(margin), bool(cosine))
