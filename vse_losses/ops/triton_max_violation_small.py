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

from .triton_common import (  # triton, tl: None without triton
    SHARED_MEMORY_KIB,
    device_arch,
    is_interpreting,
    jitted,
    tl,
    triton,
)

MAX_B = 128  # the largest batch on any architecture (max_batch_for)


def max_batch_for(arch: int) -> int:
    """The largest paired batch the one-launch kernel takes on ``arch``: its B×B tiles at B = 128
    take up to 104 KiB of shared memory, more than the 99 KiB of sm_86, sm_89 and sm_120."""
    return MAX_B if SHARED_MEMORY_KIB.get(arch, 0) >= 163 else 64


def max_batch(device: torch.device) -> int:
    """:func:`max_batch_for` of the device's architecture."""
    return max_batch_for(device_arch(device))


def _small_mh_kernel(
    x_ptr,
    y_ptr,
    g_ptr,
    out_ptr,
    anc_ptr,
    gx_ptr,
    gy_ptr,
    B,
    D,
    stride_x,
    stride_y,
    stride_g,
    margin,
    COSINE: tl.constexpr,
    BACKWARD: tl.constexpr,
    GUARD: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
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
    zero = tl.zeros([BLOCK_B], dtype=tl.float32)  # Σ 0·x + Σ 0·y: NaN iff an input holds NaN/Inf
    for k0 in range(0, D, BLOCK_K):
        kk = k0 + offs_k
        m = ok[:, None] & (kk[None, :] < D)
        a = tl.load(x_rows + kk[None, :], mask=m, other=0.0)
        b = tl.load(y_rows + kk[None, :], mask=m, other=0.0)
        acc = tl.dot(a, tl.trans(b), acc, input_precision="ieee")
        if COSINE:
            af = a.to(tl.float32)
            bf = b.to(tl.float32)
            nx += tl.sum(af * af, axis=1)
            ny += tl.sum(bf * bf, axis=1)
        if GUARD and not BACKWARD:
            zero += tl.sum(a.to(tl.float32) * 0.0, axis=1) + tl.sum(b.to(tl.float32) * 0.0, axis=1)
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
    sm = tl.where(both & (offs[:, None] != offs[None, :]), s, float("-inf"))  # not ~eye: triton 3.3's interpreter
    rv, h = tl.max(sm, axis=1, return_indices=True, return_indices_tie_break_left=True)
    cv, v = tl.max(sm, axis=0, return_indices=True, return_indices_tie_break_left=True)
    i2t = tl.maximum(margin - s_row + rv, 0.0)
    t2i = tl.maximum(margin - s_col + cv, 0.0)
    if not BACKWARD:
        if GUARD:
            guard = tl.sum(zero, axis=0)
            i2t += guard
            t2i += guard
        tl.store(out_ptr + offs, i2t, mask=ok)
        tl.store(out_ptr + B + offs, t2i, mask=ok)
        tl.store(anc_ptr + offs, offs.to(tl.int64), mask=ok)  # the anchors of the terms: a, then a
        tl.store(anc_ptr + B + offs, offs.to(tl.int64), mask=ok)
    else:
        # g: the (2B,) output gradient, often a broadcast scalar (stride 0) from the mean
        g1 = tl.load(g_ptr + offs * stride_g, mask=ok, other=0.0)
        g2 = tl.load(g_ptr + (B + offs) * stride_g, mask=ok, other=0.0)
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
        # stored in the inputs' dtype (the store rounds): no cast afterwards
        tl.store(gx_ptr + offs.to(tl.int64)[:, None] * D + dd[None, :], gx, mask=md)
        tl.store(gy_ptr + offs.to(tl.int64)[:, None] * D + dd[None, :], gy, mask=md)


def _config(B: int, dtype: torch.dtype, interpret: bool) -> dict:
    bb = max(16, triton.next_power_of_2(B))
    if interpret:
        return dict(BLOCK_B=bb, BLOCK_K=16, BLOCK_D=16, num_warps=4)
    return dict(
        BLOCK_B=bb,
        BLOCK_K=32 if dtype == torch.float32 else 64,
        BLOCK_D=32,
        num_warps=4 if bb <= 32 else 8 if bb <= 64 else 16,
    )


def _launch(x, y, margin, cosine, g=None, guard=False):
    """Forward (g None): the 2B terms (float32) and their anchors (int64). Backward: ∂x, ∂y in
    the inputs' dtype. Nothing else is launched: at small B every torch operation counts."""
    B, D = x.shape
    cfg = _config(B, x.dtype, is_interpreting())
    if g is None:
        out = torch.empty(2 * B, device=x.device, dtype=torch.float32)
        anchors = torch.empty(2 * B, device=x.device, dtype=torch.int64)
        args, grid = (out, out, anchors, out, out), (1,)  # g, gx, gy: never read or written
    else:
        gx, gy = torch.empty_like(x), torch.empty_like(y)
        args, grid = (g, gx, gx, gx, gy), (triton.cdiv(D, cfg["BLOCK_D"]),)
    jitted(_small_mh_kernel)[grid](
        x,
        y,
        *args,
        B,
        D,
        x.stride(0),
        y.stride(0),
        0 if g is None else g.stride(0),
        float(margin),
        COSINE=bool(cosine),
        BACKWARD=g is not None,
        GUARD=bool(guard),
        BLOCK_B=cfg["BLOCK_B"],
        BLOCK_K=cfg["BLOCK_K"],
        BLOCK_D=cfg["BLOCK_D"],
        num_warps=cfg["num_warps"],
    )
    return (out, anchors) if g is None else (gx, gy)


class MaxViolationSmall(torch.autograd.Function):
    """forward(x, y, margin, cosine, guard) → the 2B terms (i2t then t2i), float32, and their anchors."""

    @staticmethod
    def forward(ctx, x, y, margin, cosine, guard):
        x, y = x.contiguous(), y.contiguous()
        ctx.save_for_backward(x, y)
        ctx.margin, ctx.cosine = margin, cosine
        terms, anchors = _launch(x, y, margin, cosine, guard=guard)
        ctx.mark_non_differentiable(anchors)
        ctx.set_materialize_grads(False)  # no zeros for the anchors' gradient
        return terms, anchors

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g, _):
        if g is None:
            return None, None, None, None, None
        x, y = ctx.saved_tensors
        gx, gy = _launch(x, y, ctx.margin, ctx.cosine, g.to(torch.float32))
        return gx, gy, None, None, None


def max_violation_small(
    x: torch.Tensor, y: torch.Tensor, margin: float, cosine: bool = True, guard: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2B max-violation terms of the paired batch x, y (B ≤ 128, D), float32, and their
    anchors ``[0 … B−1, 0 … B−1]``; see the module docstring. ``guard``: add ``0·Σx + 0·Σy`` to
    every term (NaN/Inf in an input → NaN terms, as :func:`vse_losses.functional.nan_guard`)."""
    return MaxViolationSmall.apply(x, y, float(margin), bool(cosine), bool(guard))
