"""Both directions' ℓp hinge norms of every positive pair, with one backward for both (Triton + cuBLAS).

For a positive pair ``(a_j, p_j)`` with threshold ``t_j = s(a_j, p_j) − α_j`` (α: the margin) and
(i, n) a negative iff ``labels[i] != ref_labels[n]`` (and ``i != n`` with ``self_ref``):

    T¹_j = (Σ_n [s(a_j, n) − t_j]_+^p)^{1/p}     (i2t, row a_j of S = x yᵀ)
    T²_j = (Σ_n [s(n, p_j) − t_j]_+^p)^{1/p}     (t2i, column p_j of S)

The common case is the diagonal pairs, j = (j, j) (x and y both B×D, P = B). Forward: one pass
over the score tiles for both directions (``_pairs_fwd_kernel``: rows complete their running ℓp
statistics within a program, columns merge theirs into per-program partials, as the
hardest-negative kernel does; the partials are combined in torch). Backward: with
``W = ∂(g¹·T¹ + g²·T²)/∂S`` (both directions' weights in one matrix),

    ∂x = W y,   ∂y = Wᵀ x,   ∂t_j = −Σ_n W¹_jn − Σ_n W²_nj,

computed in row chunks of W: a Triton kernel recomputes the score tiles and writes the chunk of
weights with its i2t row sums and t2i column sums, cuBLAS multiplies it twice (the chunk's rows
of ∂x; its contribution to ∂y, accumulated in float32). One recomputed product and two cuBLAS
products serve both directions. Nothing B×B is alive; the chunk holds ``W_CHUNK_ELEMENTS``
weights, and the ∂x, ∂y accumulators are float32. Any other pairs run the per-row kernels of
:mod:`~vse_losses.ops.triton_hinge_norm` once per direction, on the pairs' gathered rows (i2t:
``x[a]`` against y; t2i: ``y[p]`` against x), their gradients scattered back.

The thresholds are computed inside the operation (the pairs' scores by the Triton ``row_dots``
forward) and ``∂t`` reaches x and y through them in the backward
(:class:`~vse_losses.ops.tiling.PairScores`); ``∂α = −∂t``.

Cosine (``cosine=True``): the scores are ``s(i, n) = c_i c_n x_i·y_n`` with ``c = 1/max(‖·‖, ε)``
as F.normalize, the scales multiplied into each score tile in float32 (SCALED, as
:mod:`~vse_losses.ops.triton_lse_pairs`); no normalised copy of x or y is made. The weight kernel
writes ``W̃ = c_x W c_y`` (the chunks normalised by max |g| · max c_x · max c_y, so that half
precision cannot overflow) and the complete products lose the normalisation's share:

    ∂x_i = (W̃ y)_i − c_i² A_i x_i,   A_i = x_i·(W̃ y)_i,   ∂y likewise from W̃ᵀ x

(:func:`~vse_losses.ops.tiling.remove_radial_`); the pairs' scores are cosines too, their
gradient with its own radial part.
"""

from __future__ import annotations

import torch

from .lp_norm import lp_finish, lp_merge
from .tiling import PairScores, cosine_scale_pair, diagonal_pairs, radial_coefficients, remove_radial_
from .triton_common import (  # triton, tl: None without triton
    choose_groups,
    device_arch,
    even_shape,
    for_arch,
    jitted,
    lp_merge_tile,
    num_sms,
    pair_operands,
    score_tile,
    tile_args,
    tl,
    triton,
)
from .triton_hinge_norm import _forward, _grad_scale, _p_mode, _weighted_products, is_interpreting
from .triton_row_dots import row_dots_forward_triton


def _pairs_fwd_kernel(
    x_ptr,
    y_ptr,
    t_ptr,
    xl_ptr,
    yl_ptr,
    rx_ptr,
    ry_ptr,  # rx, ry: row / column scales (SCALED)
    rm_ptr,
    rs_ptr,  # (Q, B) row partials: running max of h, Σ (h / max)^p
    cm_ptr,
    cs_ptr,  # (P, B) column partials, pre-filled with 0
    B,
    D,
    stride_x,
    stride_y,
    RB_PER,
    CT_PER,
    p,
    SELF_REF: tl.constexpr,
    P_MODE: tl.constexpr,
    SCALED: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVEN_M: tl.constexpr,
    EVEN_N: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    """Both directions' hinge ℓp statistics of the paired batch from one pass over the score tiles.

    Program (pid_p, pid_q) owns RB_PER row blocks × CT_PER column tiles (as the hardest-negative
    kernel). h_ij = [s_ij − t_i]_+ (rows, i2t) and [s_ij − t_j]_+ (columns, t2i) over the
    negatives (labels differ; i ≠ j with SELF_REF). Rows: a running (max, Σ (h/max)^p) over the
    program's column tiles, stored in row partial pid_q. Columns: merged into column partial pid_p,
    which only this program reads and writes. P_MODE 1 (p = 1) keeps Σ h only (max unused).
    SCALED: the scores are ``rx_i ry_j x_i·y_j`` (the cosine: rx, ry = 1/‖row‖).
    """
    pid_p = tl.program_id(0)
    pid_q = tl.program_id(1)
    nrb = tl.cdiv(B, BLOCK_M)
    nct = tl.cdiv(B, BLOCK_N)
    rb_end = tl.minimum(pid_p * RB_PER + RB_PER, nrb)
    ct_end = tl.minimum(pid_q * CT_PER + CT_PER, nct)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    for rb in range(pid_p * RB_PER, rb_end):
        rows = rb * BLOCK_M + offs_m
        row_ok = rows < B
        xl = tl.load(xl_ptr + rows, mask=row_ok, other=0)
        t_r = tl.load(t_ptr + rows, mask=row_ok, other=0.0)
        if SCALED:
            rx = tl.load(rx_ptr + rows, mask=row_ok, other=1.0)
        x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_x
        run_m = tl.zeros([BLOCK_M], dtype=tl.float32)
        run_s = tl.zeros([BLOCK_M], dtype=tl.float32)
        for ct in range(pid_q * CT_PER, ct_end):
            cols = ct * BLOCK_N + offs_n
            col_ok = cols < B
            y_cols = y_ptr + cols.to(tl.int64)[None, :] * stride_y
            acc = score_tile(x_rows, y_cols, row_ok, col_ok, D, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_M, EVEN_N, EVEN_K)
            if SCALED:
                ry = tl.load(ry_ptr + cols, mask=col_ok, other=1.0)
                acc = (acc * rx[:, None]) * ry[None, :]
            yl = tl.load(yl_ptr + cols, mask=col_ok, other=0)
            t_c = tl.load(t_ptr + cols, mask=col_ok, other=0.0)
            valid = (xl[:, None] != yl[None, :]) & row_ok[:, None] & col_ok[None, :]
            if SELF_REF:
                valid = valid & (rows[:, None] != cols[None, :])
            h = tl.where(valid, tl.maximum(acc - t_r[:, None], 0.0), 0.0)
            hc = tl.where(valid, tl.maximum(acc - t_c[None, :], 0.0), 0.0)
            c_ptr = pid_p * B + cols
            tl.debug_barrier()  # the previous row block's stores to the column partial are visible
            old_s = tl.load(cs_ptr + c_ptr, mask=col_ok, other=0.0)
            # rows: the running statistics in registers; columns: merged into the stored partial
            if P_MODE == 1:  # sums alone, no maxima
                run_m, run_s = lp_merge_tile(run_m, run_s, h, p, P_MODE, 1)
                tl.store(cs_ptr + c_ptr, old_s + tl.sum(hc, axis=0), mask=col_ok)
            else:
                old_m = tl.load(cm_ptr + c_ptr, mask=col_ok, other=0.0)
                run_m, run_s = lp_merge_tile(run_m, run_s, h, p, P_MODE, 1)
                c_m, c_s = lp_merge_tile(old_m, old_s, hc, p, P_MODE, 0)
                tl.store(cm_ptr + c_ptr, c_m, mask=col_ok)
                tl.store(cs_ptr + c_ptr, c_s, mask=col_ok)
        r_ptr = pid_q * B + rows
        tl.store(rm_ptr + r_ptr, run_m, mask=row_ok)
        tl.store(rs_ptr + r_ptr, run_s, mask=row_ok)


def _pairs_config(
    dtype: torch.dtype, interpret: bool, p_mode: int, even: bool = True, arch: int = 90, *, scaled: bool = False
) -> dict:
    """:func:`_pairs_tiles` for the GPU architecture ``arch`` (:func:`for_arch`)."""
    return for_arch(_pairs_tiles(dtype, interpret, p_mode, even, scaled), arch, dtype, narrow=True)


def _pairs_tiles(dtype: torch.dtype, interpret: bool, p_mode: int, even: bool = True, scaled: bool = False) -> dict:
    """Tiles of the one-pass forward (no spills on sm_90 in any variant, as triton specializes
    it at run time: test_triton_compile.py, triton 3.6 and 3.8); ``scaled``: the SCALED one."""
    if interpret:
        return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, num_warps=4, num_stages=1)
    if dtype == torch.float32:
        # scaled, a general p, even: 8 bytes spill at BLOCK_K = 32 (triton 3.6); p = 1 or 2 spill at 16
        k = 16 if scaled and p_mode == 0 and even else 32
        return dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=k, num_warps=8 if even else 4, num_stages=3)
    if even and p_mode == 1 and not scaled:
        return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3)
    if even and p_mode in (1, 2):  # p = 1 with the scales: 128x128 spills
        return dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=8, num_stages=3)
    # two running statistics (rows and columns) per tile, the exp2/log2 of a general p or
    # unaligned masked loads: 64x64 keeps them in registers
    return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, num_warps=8, num_stages=3)


def _merge(m: torch.Tensor, s: torch.Tensor, p: float) -> torch.Tensor:
    """(G, B) partial (max, Σ (h/max)^p) → the ℓp norm over all partials; p = 1: Σ of the sums."""
    return lp_finish(*lp_merge(m, s, p), p)


def _pairs_forward(x, y, t, lx, ly, self_ref, p, *, scales=None):
    """(T¹, T²) of the paired batch from one pass over the score tiles (x, y contiguous, one dtype).
    ``scales``: ``(c_x, c_y)`` float32, the scores ``c_i c_j x_i·y_j`` (the cosine), or None."""
    B, D = x.shape
    even, arch = even_shape(B, B, D), device_arch(x.device)
    cfg = _pairs_config(x.dtype, is_interpreting(), _p_mode(p), even, arch, scaled=scales is not None)
    BM, BN = cfg["BLOCK_M"], cfg["BLOCK_N"]
    nrb, nct = triton.cdiv(B, BM), triton.cdiv(B, BN)
    P, Q = choose_groups(nrb, nct, B, B, num_sms(x.device), max_partial_bytes=128 * 2**20)
    rb_per, ct_per = triton.cdiv(nrb, P), triton.cdiv(nct, Q)
    P, Q = triton.cdiv(nrb, rb_per), triton.cdiv(nct, ct_per)  # no empty programs
    f32 = dict(device=x.device, dtype=torch.float32)
    rm, rs = torch.empty((Q, B), **f32), torch.empty((Q, B), **f32)
    cm, cs = torch.zeros((P, B), **f32), torch.zeros((P, B), **f32)
    rx, ry = scales or (rm, rm)  # rm: never read (SCALED is False)
    jitted(_pairs_fwd_kernel)[(P, Q)](
        x,
        y,
        t,
        lx,
        ly,
        rx,
        ry,
        rm,
        rs,
        cm,
        cs,
        B,
        D,
        x.stride(0),
        y.stride(0),
        rb_per,
        ct_per,
        float(p),
        SELF_REF=bool(self_ref),
        P_MODE=_p_mode(p),
        SCALED=scales is not None,
        **tile_args(cfg, B, B, D),
    )
    return _merge(rm, rs, p), _merge(cm, cs, p)


class HingeNormPairsTriton(torch.autograd.Function):
    """forward(x, y, margin, a, p_idx, labels, ref_labels, self_ref, p, do_i2t, do_t2i, paired, cosine)
    → (T¹, T²), each (P,) float32; see the module docstring."""

    @staticmethod
    def forward(ctx, x, y, margin, a, p_idx, labels, ref_labels, self_ref, p, do_i2t, do_t2i, paired, cosine):
        xc, yc, lx, ly = pair_operands(x, y, labels, ref_labels, "hinge_norm_pairs_triton")
        B, D = xc.shape
        P = a.shape[0]
        diagonal = diagonal_pairs(a, p_idx, B, yc.shape[0], paired)
        scales = cosine_scale_pair(xc, yc, cosine, torch.float32, y is x)  # folded into the kernels
        pairs = PairScores.computed(xc, yc, a, p_idx, scales, diagonal, row_dots_forward_triton, torch.float32)
        tw = (pairs.s - margin).to(torch.float32).contiguous()  # the thresholds
        f32 = dict(device=x.device, dtype=torch.float32)
        T1, T2 = torch.zeros(P, **f32), torch.zeros(P, **f32)  # a direction not asked for: zeros
        if diagonal:
            own = torch.arange(B, device=x.device) if self_ref else torch.full((B,), -1, device=x.device)
            if B and D:
                T1, T2 = _pairs_forward(xc, yc, tw, lx, ly, self_ref, p, scales=scales)
            else:  # no pair, or D = 0 (no score to take), which the per-direction forward handles
                T1, T2 = _forward(xc, yc, tw, lx, ly, own, p), _forward(yc, xc, tw, ly, lx, own, p)
            T1, T2 = (T1 if do_i2t else torch.zeros_like(T1)), (T2 if do_t2i else torch.zeros_like(T2))
        else:  # the pairs' rows gathered, once per direction
            if do_i2t:
                q, ql, qs, sc = _side(xc, lx, a, self_ref, scales)
                T1 = _forward(q, yc, tw, ql, ly, qs, p, scales=sc)
            if do_t2i:
                q, ql, qs, sc = _side(yc, ly, p_idx, self_ref, None if scales is None else scales[::-1])
                T2 = _forward(q, xc, tw, ql, lx, qs, p, scales=sc)
        ctx.save_for_backward(xc, yc, tw, a, p_idx, lx, ly, T1, T2, pairs.s, *(scales or ()))
        ctx.self_ref, ctx.p, ctx.diagonal = self_ref, p, diagonal
        ctx.do = (do_i2t, do_t2i)
        ctx.margin = (margin.dtype, margin.shape) if torch.is_tensor(margin) else None
        ctx.dtypes = (x.dtype, y.dtype)
        return T1, T2

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g1, g2):
        xc, yc, tw, a, p_idx, lx, ly, T1, T2, s, *scales = ctx.saved_tensors
        scales = scales or None
        B, D = xc.shape
        M = yc.shape[0]
        p = ctx.p
        g1 = g1 if ctx.do[0] and g1 is not None else None
        g2 = g2 if ctx.do[1] and g2 is not None else None
        f32 = dict(device=xc.device, dtype=torch.float32)
        gx, gy, gt = torch.zeros((B, D), **f32), torch.zeros((M, D), **f32), torch.zeros(tw.shape, **f32)
        scale = _grad_scale(g1, g2)
        if scale is not None and scales is not None:  # |W̃_in| ≤ |W_in| c_i c_n
            scale = scale * scales[0].max() * scales[1].max()
        if D and tw.shape[0] and scale is not None:
            # ∂x = W y, ∂y = Wᵀ x, ∂t = −(i2t row sums + t2i column sums), W scaled by 1/scale
            i2t = None if g1 is None else (tw, T1, (g1.to(torch.float32) / scale).contiguous())
            t2i = None if g2 is None else (tw, T2, (g2.to(torch.float32) / scale).contiguous())
            if ctx.diagonal:
                own = torch.arange(B, device=xc.device) if ctx.self_ref else None
                gx, gy, rows, cols = _weighted_products(xc, yc, i2t, t2i, lx, ly, own, p, scales=scales)
                for part in (rows, cols):
                    if part is not None:
                        gt -= part
            else:  # each direction on its gathered rows: their gradient scattered back
                flipped = None if scales is None else scales[::-1]
                sides = ((i2t, xc, lx, gx, a, yc, ly, gy, scales), (t2i, yc, ly, gy, p_idx, xc, lx, gx, flipped))
                for term, q_all, lq, gq_all, idx, keys, lk, gk_all, sc in sides:
                    if term is None:
                        continue
                    q, ql, qs, sq = _side(q_all, lq, idx, ctx.self_ref, sc)
                    qs = qs if ctx.self_ref else None
                    gq, gk, rows, _ = _weighted_products(q, keys, term, None, ql, lk, qs, p, scales=sq)
                    gq_all.index_add_(0, idx, gq)
                    gk_all += gk
                    gt -= rows
            gx.mul_(scale)
            gy.mul_(scale)
            gt.mul_(scale)
            if scales is not None:  # the normalisation's share of the complete products
                remove_radial_(gx, xc, radial_coefficients(scales[0]))
                remove_radial_(gy, yc, radial_coefficients(scales[1]))
            # t = s(a, p) − α: the pairs' scores pass ∂t on to x and y
            pairs = PairScores(xc, yc, a, p_idx, scales, ctx.diagonal, s)
            pairs.add_grad_(gx, 0, gt)
            pairs.add_grad_(gy, 1, gt)
        gm = None
        if ctx.margin is not None and ctx.needs_input_grad[2]:
            gm = (-gt).sum_to_size(ctx.margin[1]).to(ctx.margin[0])
        x_dtype, y_dtype = ctx.dtypes
        return (gx.to(x_dtype), gy.to(y_dtype), gm, *[None] * 10)


def _side(q_all, lq, idx, self_ref, scales):
    """One direction of general pairs, whose queries are the rows ``idx`` of q_all (i2t: x[a] against
    y; t2i: y[p] against x) → ``(q, q_labels, q_self, scales)`` for the per-row kernels: the
    gathered rows and labels, each pair's own row excluded with self_ref (else −1), and
    ``(c_q[idx], c_k)`` (or None)."""
    q_self = idx.contiguous() if self_ref else torch.full_like(idx, -1)
    sc = None if scales is None else (scales[0][idx].contiguous(), scales[1])
    return q_all[idx].contiguous(), lq[idx].contiguous(), q_self, sc


def hinge_norm_pairs_triton(
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
    """See :func:`vse_losses.ops.hinge_norm_pairs`: the diagonal pairs (j, j) in one pass for both
    directions, any other pairs (any order) by the per-row kernels once per direction. x, y
    float32/float16/bfloat16."""
    p = float(p)
    if not (p >= 1.0) or p == float("inf"):
        raise ValueError(f"p must be a finite number >= 1, got {p}")
    return HingeNormPairsTriton.apply(
        x,
        y,
        margin,
        a,
        p_idx,
        labels,
        ref_labels,
        bool(self_ref),
        p,
        bool(do_i2t),
        bool(do_t2i),
        bool(paired),
        bool(cosine),
    )
